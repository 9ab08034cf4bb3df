"""EnCodec import parity: a tiny random transformers ``EncodecModel`` (built offline) vs our converted Codec.

Tolerances (float32, matmul precision 'highest' from conftest): codes equal exactly; latents and decoded waveforms
within atol 1e-4 (their scale is O(1)); measured errors are ~1e-6.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from teal_jax.convert.encodec import convert_state_dict, load_encodec  # noqa: E402
from teal_jax.models.codec import Codec  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ATOL = 1e-4


def _tiny(tmp_path, *, causal=True, lstm=1, pad_mode="reflect", old_weight_norm=False, shortcut=True):
    cfg = transformers.EncodecConfig(
        hidden_size=16, num_filters=4, upsampling_ratios=[2, 2], codebook_size=8, target_bandwidths=[0.6, 1.2],
        num_lstm_layers=lstm, sampling_rate=800, use_causal_conv=causal, pad_mode=pad_mode,
        use_conv_shortcut=shortcut)
    torch.manual_seed(0)
    model = transformers.EncodecModel(cfg).eval()
    with torch.no_grad():
        for layer in model.quantizer.layers:  # the codebook buffers start at zero: every code would tie at 0
            layer.codebook.embed.copy_(torch.randn_like(layer.codebook.embed))
        for name, p in model.named_parameters():  # also randomise biases / gains (zero or trivial at init)
            if "bias" in name or "original0" in name:
                p.add_(0.1 * torch.randn_like(p))
    out = tmp_path / "encodec"
    model.save_pretrained(out)
    if old_weight_norm:  # rewrite the checkpoint with the pre-parametrization spelling weight_g / weight_v
        from safetensors.torch import load_file, save_file

        sd = load_file(out / "model.safetensors")
        sd = {k.replace("parametrizations.weight.original0", "weight_g")
               .replace("parametrizations.weight.original1", "weight_v"): v for k, v in sd.items()}
        assert any(k.endswith("weight_g") for k in sd)
        save_file(sd, out / "model.safetensors")
    return model, str(out)


def _compare(model, path, samples=203, batch=2):
    config, params = load_encodec(path)
    assert config.num_levels == model.config.num_quantizers == 2
    rng = np.random.default_rng(0)
    audio = (0.3 * rng.standard_normal((batch, samples))).astype(np.float32)
    with torch.no_grad():
        x = torch.from_numpy(audio)[:, None]
        ref_latent = model.encoder(x).numpy()  # [B, C, frames]
        ref_codes = model.encode(x, bandwidth=1.2).audio_codes[0].numpy()  # [B, levels, frames]
        ref_audio = model.decode(model.encode(x, bandwidth=1.2).audio_codes, [None])[0].numpy()  # [B, 1, T']
    codec = Codec(config)
    variables = {"params": jax.tree.map(jnp.asarray, params)}
    a = jnp.asarray(audio)[..., None]
    latent = codec.apply(variables, a, method=Codec.encode_latents)
    codes = codec.apply(variables, a, method=Codec.encode)
    wav = codec.apply(variables, codes, method=Codec.decode_codes)
    err_latent = float(np.max(np.abs(np.asarray(latent) - ref_latent.transpose(0, 2, 1))))
    assert err_latent < ATOL, err_latent
    np.testing.assert_array_equal(np.asarray(codes), ref_codes.transpose(0, 2, 1))
    ref_wav = ref_audio[:, 0]
    ours = np.asarray(wav)[:, : ref_wav.shape[1], 0]
    assert ours.shape == ref_wav.shape
    err_wav = float(np.max(np.abs(ours - ref_wav)))
    assert err_wav < ATOL, err_wav
    return err_latent, err_wav


@pytest.mark.parametrize("causal,pad_mode", [(True, "reflect"), (False, "reflect"), (True, "constant")])
def test_parity_parametrized_weight_norm(tmp_path, causal, pad_mode):
    model, path = _tiny(tmp_path, causal=causal, pad_mode=pad_mode)
    _compare(model, path)


def test_parity_old_weight_norm_spelling_two_lstm_layers(tmp_path):
    model, path = _tiny(tmp_path, lstm=2, old_weight_norm=True, shortcut=False)
    _compare(model, path, samples=160)


def test_short_input_reflect_quirk(tmp_path):
    # fewer samples than the first conv's padding: EnCodec zero-extends before reflecting
    model, path = _tiny(tmp_path)
    _compare(model, path, samples=5, batch=1)


def test_unexpected_key_is_named(tmp_path):
    _, path = _tiny(tmp_path)
    config, _ = load_encodec(path)
    with pytest.raises(ValueError, match="encoder.layers.99.foo"):
        convert_state_dict({"encoder.layers.99.foo": np.zeros(1)}, config)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        load_encodec(str(tmp_path))
