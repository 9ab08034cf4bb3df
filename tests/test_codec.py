"""Codec model: shapes, causality, quantizer dropout / bitrates, and a few optimisation steps lowering the loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from teal_jax.models.codec import Codec, CodecConfig

TINY = dict(sample_rate=8000, num_filters=4, hidden_size=16, ratios=(2, 4), num_lstm_layers=1, num_levels=3,
            codebook_size=16)


def _init(cfg, x):
    return Codec(cfg).init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, x, train=False)


@pytest.mark.parametrize("causal,activation", [(True, "elu"), (False, "snake")])
def test_shapes(causal, activation):
    cfg = CodecConfig(**TINY, causal=causal, activation=activation)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 203, 1)) * 0.1
    v = _init(cfg, x)
    y, q = Codec(cfg).apply(v, x)
    assert y.shape == x.shape
    assert q.codes.shape == (2, 26, 3) and q.codes.dtype == jnp.int32  # ceil(203 / 8) frames
    codes = Codec(cfg).apply(v, x, 2, method=Codec.encode)
    assert codes.shape == (2, 26, 2)
    wav = Codec(cfg).apply(v, codes, method=Codec.decode_codes)
    assert wav.shape == (2, 26 * 8, 1)


def test_causal_latents_ignore_the_future():
    cfg = CodecConfig(**TINY, causal=True, pad_mode="constant")
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 256, 1))
    v = _init(cfg, x)
    z1 = Codec(cfg).apply(v, x, method=Codec.encode_latents)
    z2 = Codec(cfg).apply(v, x.at[:, 128:].set(5.0), method=Codec.encode_latents)
    # frame f sees samples < (f + 1) * 8 only: frames fully before sample 128 are unchanged
    np.testing.assert_allclose(np.asarray(z1[:, :16]), np.asarray(z2[:, :16]), atol=1e-6)
    assert not np.allclose(np.asarray(z1[:, 17:]), np.asarray(z2[:, 17:]))


def test_quantizer_dropout_and_decode_prefix_levels():
    cfg = CodecConfig(**TINY, quantizer_dropout=1.0)
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 64, 1)) * 0.1
    v = _init(cfg, x)
    _, q = Codec(cfg).apply(v, x, train=True, rngs={"dropout": jax.random.PRNGKey(3)},
                            mutable=["quantizer_state"])[0]
    assert 1.0 <= float(q.metrics["levels_used"]) < 3.0  # dropout kept fewer levels than 3 on average
    codes = Codec(cfg).apply(v, x, method=Codec.encode)
    # decoding the first n levels equals decoding the quantizer's sum over those levels
    y1 = Codec(cfg).apply(v, codes[..., :1], method=Codec.decode_codes)
    y3 = Codec(cfg).apply(v, codes, method=Codec.decode_codes)
    assert y1.shape == y3.shape and not np.allclose(np.asarray(y1), np.asarray(y3))


def test_bad_config_and_input():
    with pytest.raises(ValueError, match="activation"):
        CodecConfig.from_config(dict(TINY, activation="relu"))
    cfg = CodecConfig(**TINY)
    x = jnp.zeros((2, 64, 1))
    v = _init(cfg, x)
    with pytest.raises(ValueError, match="audio must be"):
        Codec(cfg).apply(v, jnp.zeros((2, 64)))


def test_kmeans_init_config_reaches_every_level():
    """model.kmeans_init: the first training call sets every level's codebook from the batch (kmeans_iters=0:
    level 0's codes are latent vectors of that batch); bad kmeans_iters is named."""
    cfg = CodecConfig(**dict(TINY, num_lstm_layers=0), kmeans_init=True, kmeans_iters=0, restart_after=0)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 64, 1)) * 0.1
    v = _init(cfg, x)
    assert all(int(v["quantizer_state"]["quantizer"][f"levels_{l}"]["initialized"]) == 0 for l in range(3))
    _, st = Codec(cfg).apply(v, x, train=True, rngs={"dropout": jax.random.PRNGKey(3)}, mutable=["quantizer_state"])
    v1 = nn.unbox({**v, **st})
    assert all(int(v1["quantizer_state"]["quantizer"][f"levels_{l}"]["initialized"]) == 1 for l in range(3))
    z = np.asarray(Codec(cfg).apply(v, x, method=Codec.encode_latents)).reshape(-1, cfg.hidden_size)
    cb0 = np.asarray(v1["params"]["quantizer"]["levels_0"]["codebook"]
                     + v1["quantizer_state"]["quantizer"]["levels_0"]["restart_offset"])
    dist = ((cb0[:, None] - z[None]) ** 2).sum(-1).min(1)
    np.testing.assert_allclose(dist, 0.0, atol=1e-8)  # every code is one of the batch's latents (float32 copies)
    with pytest.raises(ValueError, match="kmeans_iters"):
        CodecConfig.from_config(dict(TINY, kmeans_iters=-1))


# ---- frame-rate (STFT encoder / iSTFT decoder) variant ------------------------------------------------------------


def _frames_numpy(x, n_fft, hop, mode):
    """float64 reference framing: frame f covers [f hop - (n_fft - hop) // 2, ... + n_fft) of the padded signal."""
    t = x.shape[1]
    f = -(-t // hop)
    left = (n_fft - hop) // 2
    right = (f - 1) * hop + n_fft - left - t
    xp = np.pad(x, ((0, 0), (left, right)), mode="reflect" if mode == "reflect" else "constant")
    return np.stack([xp[:, i * hop : i * hop + n_fft] for i in range(f)], 1)


@pytest.mark.parametrize("n_fft,hop,mode", [(32, 8, "reflect"), (20, 8, "constant")])
def test_stft_istft_against_numpy(n_fft, hop, mode):
    from teal_jax.models.audio_layers import istft, stft

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 203))
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    ref = np.fft.rfft(_frames_numpy(x, n_fft, hop, mode) * w, axis=-1)
    got = np.asarray(stft(jnp.asarray(x, jnp.float32), n_fft, hop, mode))
    assert got.shape == (2, 26, n_fft // 2 + 1)  # ceil(203 / 8) frames
    np.testing.assert_allclose(got, ref, atol=1e-4)  # float32 sums of ~n_fft O(1) terms
    # istft of an arbitrary spectrum = float64 least-squares overlap-add OLA(irfft(S) w) / OLA(w^2), trimmed
    spec = rng.standard_normal(ref.shape) + 1j * rng.standard_normal(ref.shape)
    frames = np.fft.irfft(spec, n=n_fft, axis=-1) * w
    f = spec.shape[1]
    total = (f - 1) * hop + n_fft
    num, env = np.zeros((2, total)), np.zeros(total)
    for i in range(f):
        num[:, i * hop : i * hop + n_fft] += frames[:, i]
        env[i * hop : i * hop + n_fft] += w**2
    left = (n_fft - hop) // 2
    ref_y = num[:, left : left + f * hop] / env[left : left + f * hop]
    y = np.asarray(istft(jnp.asarray(spec, jnp.complex64), n_fft, hop))
    np.testing.assert_allclose(y, ref_y, atol=1e-5)
    # analysis then synthesis gives the signal back
    back = np.asarray(istft(jnp.asarray(ref, jnp.complex64), n_fft, hop))[:, :203]
    np.testing.assert_allclose(back, x, atol=1e-5)
    with pytest.raises(ValueError, match="uncovered"):
        istft(jnp.asarray(spec[..., : 8 // 2 + 1], jnp.complex64), 8, 8)


def test_convnext_block_against_numpy():
    from teal_jax.models.audio_layers import ConvNeXtBlock

    block = ConvNeXtBlock(mlp_dim=12, kernel_size=5, layer_scale=0.5)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 4))
    p = nn.unbox(block.init(jax.random.PRNGKey(1), x))["params"]
    p = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.PRNGKey(2), a.shape), p)  # non-trivial LN/bias
    got = np.asarray(block.apply({"params": p}, x))
    q = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    xn = np.asarray(x, np.float64)
    xp = np.pad(xn, ((0, 0), (2, 2), (0, 0)))
    h = sum(xp[:, j : j + 9] * q["dw_kernel"][j] for j in range(5)) + q["dw_bias"]
    mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
    h = (h - mu) / np.sqrt(var + 1e-6) * q["norm"]["scale"] + q["norm"]["bias"]
    h = h @ q["pw1"]["kernel"] + q["pw1"]["bias"]
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))  # jax.nn.gelu (tanh form)
    h = h @ q["pw2"]["kernel"] + q["pw2"]["bias"]
    np.testing.assert_allclose(got, xn + q["gamma"] * h, atol=1e-5)


FRAME = dict(TINY, num_lstm_layers=0, encoder="stft", decoder="istft", frame_dim=16, encoder_frame_layers=1,
             decoder_frame_layers=2, causal=False)


@pytest.mark.parametrize("encoder", ["stft", "seanet"])
def test_frame_rate_codec_shapes_and_finite_gradients_on_silence(encoder):
    cfg = CodecConfig(**dict(FRAME, encoder=encoder))
    assert cfg.fft_size == 32  # 4 * hop
    x = (jax.random.normal(jax.random.PRNGKey(0), (2, 203, 1)) * 0.1).at[1].set(0.0)  # example 1 silent
    v = jax.jit(lambda x: _init(cfg, x))(x)  # compiled: op-by-op dispatch of the whole model is slow on CPU
    y, q = jax.jit(Codec(cfg).apply)(v, x)
    assert y.shape == x.shape and q.codes.shape == (2, 26, 3)
    wav = jax.jit(lambda v, c: Codec(cfg).apply(v, c, method=Codec.decode_codes))(v, q.codes[..., :2])
    assert wav.shape == (2, 26 * 8, 1)

    def loss(p):
        y, q = Codec(cfg).apply({**v, "params": p}, x)
        return jnp.mean(jnp.abs(y - x)) + q.loss

    g = jax.jit(jax.grad(loss))(v["params"])
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(g))


def test_frame_rate_bad_config():
    with pytest.raises(ValueError, match="model.decoder"):
        CodecConfig.from_config(dict(FRAME, decoder="hifigan"))
    with pytest.raises(ValueError, match="model.encoder"):
        CodecConfig.from_config(dict(FRAME, encoder="mel"))
    with pytest.raises(ValueError, match="model.n_fft"):
        CodecConfig.from_config(dict(FRAME, n_fft=12))  # < 2 * hop (16)
    with pytest.raises(ValueError, match="frame_dim"):
        CodecConfig.from_config(dict(FRAME, frame_dim=0))
