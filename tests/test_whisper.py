"""Whisper front end and encoder vs transformers (WhisperFeatureExtractor, tiny random WhisperModel /
WhisperForConditionalGeneration built offline), float32 with 'highest' matmul precision."""

import json
import os

import jax
import numpy as np
import pytest
from _hf_encoders import max_abs, save_tiny_whisper

from teal_jax.convert.whisper import import_whisper_encoder
from teal_jax.models.whisper import LogMelConfig, WhisperEncoder, log_mel, mel_filters

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

FEATURE_TOL = 1e-4  # log-mel features (values ~[-1, 2]); measured ~1e-6
HIDDEN_TOL = 1e-4  # encoder hidden states; measured ~1e-6


def _clips(rng):
    t = np.arange(52_000) / 16000
    return [
        rng.uniform(-0.5, 0.5, 52_000).astype(np.float32),  # noise
        (0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32),  # tone
        (1e-4 * rng.standard_normal(52_000)).astype(np.float32),  # near silence: the max - 8 floor matters
        rng.uniform(-1, 1, 500_000).astype(np.float32),  # longer than 30 s: cut
    ]


def test_mel_filters_match_transformers():
    from transformers.audio_utils import mel_filter_bank

    for n_mels in (80, 128):
        ref = mel_filter_bank(num_frequency_bins=201, num_mel_filters=n_mels, min_frequency=0.0, max_frequency=8000.0,
                              sampling_rate=16000, norm="slaney", mel_scale="slaney")
        assert max_abs(mel_filters(16000, 400, n_mels), ref) < 1e-6


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_feature_extractor(n_mels):
    clips = _clips(np.random.default_rng(n_mels))
    fx = transformers.WhisperFeatureExtractor(feature_size=n_mels)
    ref = fx(clips, sampling_rate=16000, return_tensors="np").input_features  # [b, mels, 3000]
    n = max(len(c) for c in clips)
    batch = np.stack([np.pad(c, (0, n - len(c))) for c in clips])
    ours = np.asarray(jax.jit(log_mel, static_argnums=1)(batch, LogMelConfig(n_mels=n_mels)))
    assert ours.shape == (len(clips), 3000, n_mels)
    assert max_abs(ours, ref.transpose(0, 2, 1)) < FEATURE_TOL


@pytest.mark.parametrize("kind", ["WhisperModel", "WhisperForConditionalGeneration"])
def test_encoder_hidden_states_match(tmp_path, kind):
    model = save_tiny_whisper(str(tmp_path), kind)
    cfg, fe, params = import_whisper_encoder(str(tmp_path))
    assert cfg.num_layers == 3 and fe.window_samples == 100 * 160 and fe.n_mels == 80
    mel = np.random.default_rng(0).standard_normal((2, 80, 100)).astype(np.float32)
    encoder = model.encoder if kind == "WhisperModel" else model.model.encoder
    with torch.no_grad():
        ref = [h.numpy() for h in encoder(torch.from_numpy(mel), output_hidden_states=True).hidden_states]
    enc = WhisperEncoder(cfg)
    ours = jax.jit(enc.apply)({"params": params}, mel.transpose(0, 2, 1))
    assert len(ours) == len(ref) == cfg.num_layers + 1
    errs = [max_abs(a, b) for a, b in zip(ours, ref, strict=True)]
    assert max(errs) < HIDDEN_TOL, errs
    # one layer only: the same numbers
    apply_layer = jax.jit(lambda p, x, i: enc.apply({"params": p}, x, layer=i), static_argnums=2)
    assert max_abs(apply_layer(params, mel.transpose(0, 2, 1), 1), ours[1]) < 1e-6
    # the parameter tree is exactly what the module creates
    init = jax.eval_shape(enc.init, jax.random.key(0), mel.transpose(0, 2, 1))["params"]
    assert jax.tree.structure(init) == jax.tree.structure(params)
    assert jax.tree.map(np.shape, init) == jax.tree.map(np.shape, params)


def test_front_end_and_encoder_end_to_end(tmp_path):
    """Waveform -> our log-mel -> our encoder == feature extractor -> transformers encoder."""
    model = save_tiny_whisper(str(tmp_path), "WhisperModel")
    cfg, fe, params = import_whisper_encoder(str(tmp_path))
    fx = transformers.WhisperFeatureExtractor.from_pretrained(str(tmp_path))
    assert fx.n_samples == fe.window_samples
    wav = np.random.default_rng(1).uniform(-0.3, 0.3, (2, 4000)).astype(np.float32)
    feats = fx(list(wav), sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ref = model.encoder(feats, output_hidden_states=True).hidden_states[2].numpy()
    ours = jax.jit(lambda p, w: WhisperEncoder(cfg).apply({"params": p}, log_mel(w, fe), layer=2))(params, wav)
    assert max_abs(ours, ref) < HIDDEN_TOL


def test_bad_checkpoints_are_named(tmp_path):
    save_tiny_whisper(str(tmp_path), "WhisperModel", feature_extractor=False)
    cfg, fe, _ = import_whisper_encoder(str(tmp_path))
    assert fe == LogMelConfig(n_mels=80)  # defaults without preprocessor_config.json
    with open(tmp_path / "config.json") as f:
        hf = json.load(f)
    bad = tmp_path / "bad"
    bad.mkdir()
    os.symlink(tmp_path / "model.safetensors", bad / "model.safetensors")
    (bad / "config.json").write_text(json.dumps({**hf, "model_type": "llama"}))
    with pytest.raises(ValueError, match=r"config.json: model_type='llama'"):
        import_whisper_encoder(str(bad))
    (bad / "config.json").write_text(json.dumps({**hf, "encoder_layers": 5}))
    with pytest.raises(KeyError, match=r"layers.3.*missing"):
        import_whisper_encoder(str(bad))
    (bad / "config.json").write_text(json.dumps({**hf, "d_model": 48}))
    with pytest.raises(ValueError, match=r"conv1.weight.*shape"):
        import_whisper_encoder(str(bad))
    with pytest.raises(ValueError, match=r"mel must be \[batch, frames, 80\]"):
        jax.eval_shape(WhisperEncoder(cfg).init, jax.random.key(0), np.zeros((1, 100, 40), np.float32))
    with pytest.raises(ValueError, match=r"at most 100"):
        jax.eval_shape(WhisperEncoder(cfg).init, jax.random.key(0), np.zeros((1, 102, 80), np.float32))
