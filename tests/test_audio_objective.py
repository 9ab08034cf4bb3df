"""AudioCodecObjective: init / grads / eval_metrics under jit (with the GAN on), a few optax steps lower the
spectral loss, the configs load, and bad options are named."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.audio import encodec_24khz, speech_tiny
from teal_jax.train.audio_objective import AudioCodecObjective


def _tiny_config(gan: bool, seanet: bool = False):
    c = speech_tiny.get_config("smoke" + (",gan" if gan else "") + (",seanet" if seanet else ""))
    m = c.model
    m.num_filters, m.hidden_size, m.ratios, m.num_levels, m.codebook_size = 4, 16, (4, 4), 2, 16
    m.n_fft, m.frame_dim, m.encoder_frame_layers, m.decoder_frame_layers = 64, 16, 1, 1
    m.disc.start_step, m.disc.channels, m.disc.periods = 2, 4, (2, 3)
    m.loss.mel_scales, m.loss.mel_bands = (128, 256), (16, 32)
    return c


def _batch(n=4, t=1024):
    rng = np.random.default_rng(0)
    tt = np.arange(t) / 16000
    audio = np.stack([0.3 * np.sin(2 * np.pi * (200 + 100 * i) * tt) for i in range(n)])
    audio = audio + 0.01 * rng.standard_normal(audio.shape)
    audio[:, -200:] = 0.0  # trailing silence: gradients must stay finite
    return {"audio": np.round(audio * 32767).astype(np.int16), "length": np.full((n,), t - 200, np.int32),
            "label": np.zeros((n,), np.int32)}


# The GAN + SEANet case (~40 s on 2 cores) runs with -m slow; CI keeps the plain one (CI time budget).
@pytest.mark.parametrize("gan,seanet", [(False, False), pytest.param(True, True, marks=pytest.mark.slow)])
def test_grads_finite_and_training_lowers_loss(gan, seanet):
    """Frame-rate codec (speech_tiny's) without, SEANet with the discriminator; k-means init on the first step.

    The frame-rate codec runs 8 steps at lr 1e-3: on these steady tones its eval loss later swings (+-0.5) while the
    decoder's per-frame phases learn to agree across overlapping frames (seen with seeds 0-2); the first steps
    lower it by > 0.5 from ~2.7."""
    obj = AudioCodecObjective(_tiny_config(gan, seanet))
    assert obj.codec_config.encoder == ("seanet" if seanet else "stft")
    batch = _batch()
    params, state = obj.init(jax.random.PRNGKey(0), batch)
    params = nn_unbox(params)
    assert set(params) == ({"model", "disc"} if gan else {"model"})
    tx = optax.adam(3e-3 if seanet else 1e-3)
    opt = tx.init(params)

    @jax.jit
    def step(p, s, o, i):
        g, s, m = obj.grads(p, s, batch, jax.random.PRNGKey(i), i)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), s, o, m, g

    evaluate = jax.jit(obj.eval_metrics)
    # compared in eval mode (all levels, no dropout, no restarts): the training metric swings with the dropout draws
    before = float(evaluate(params, state, batch)["mel_loss"])
    for i in range(12 if seanet else 8):
        params, state, opt, m, g = step(params, state, opt, jnp.int32(i))
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g)), f"non-finite grad at step {i}"
        if i == 0:  # the first training step ran the k-means initialisation of every level
            assert all(int(s["initialized"]) == 1 for s in state["quantizer_state"]["quantizer"].values())
        if gan and i >= 2:
            assert float(m["d_loss"]) > 0 and "fm_loss" in m
    ev = evaluate(params, state, batch)
    assert set(ev) >= {"loss", "si_snr", "mel_loss", "stft_loss", "codebook/usage"}
    assert float(ev["mel_loss"]) < before, (before, float(ev["mel_loss"]))


def nn_unbox(tree):
    from flax import linen as nn

    return nn.meta.unbox(tree)


def test_configs_load_and_bad_options():
    c = encodec_24khz.get_config()
    obj = AudioCodecObjective(c)
    assert obj.codec_config.hop_length == 320 and obj.codec_config.num_levels == 32
    for variant in ("", "seanet", "smoke"):  # the TEAL demo needs 4 levels x 64 codes at 100 frames/s
        cc = AudioCodecObjective(speech_tiny.get_config(variant)).codec_config
        assert (cc.frame_rate, cc.num_levels, cc.codebook_size) == (100, 4, 64), variant
    assert speech_tiny.get_config().train.steps == 1200  # the TEAL demo's audio_codec stage uses the default
    with pytest.raises(ValueError, match=r"unknown variant 'demo'"):
        speech_tiny.get_config("demo")
    c = _tiny_config(False)
    c.model.disc.loss = "wasserstein"
    with pytest.raises(ValueError, match="disc.loss"):
        AudioCodecObjective(c)
    with pytest.raises(ValueError, match="unknown variant"):
        speech_tiny.get_config("huge")
