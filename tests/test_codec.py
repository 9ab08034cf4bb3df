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
