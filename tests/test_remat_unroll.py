"""The 'dots_no_batch_names' remat policy (weight matmuls + named norm / attention outputs saved) and the layer-scan
unroll option against the default path (no remat, rolled scan): same loss and gradients in float32 (the same math,
recomputed or laid out differently: loss to 1e-6 relative, gradients to 1e-5 relative)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from teal_jax.models.transformer import TransformerConfig, TransformerLM

CFG = TransformerConfig(vocab_size=97, embed_dim=32, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8,
                        mlp_dim=64, dtype="float32")
TOKENS = jax.random.randint(jax.random.key(1), (2, 12), 0, CFG.vocab_size)
SEG = jnp.asarray([[1] * 5 + [2] * 7, [1] * 10 + [0] * 2])  # packed rows: the named attention output under a mask
POS = jnp.asarray([list(range(5)) + list(range(7)), list(range(10)) + [0, 0]])


@functools.cache
def _loss_and_grads(cfg):
    params = nn.unbox(jax.jit(TransformerLM(CFG).init)(jax.random.key(0), TOKENS)["params"])

    def loss(p):
        logits = TransformerLM(cfg).apply({"params": p}, TOKENS, POS, SEG)
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 3])

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("change", [dict(remat_policy="dots_no_batch_names"), dict(scan_unroll=3),
                                    dict(scan_unroll=2, remat_policy="dots_no_batch_names")])
@pytest.mark.slow  # non-default options (~10 s each on 2 cores); run with -m slow (CI time budget)
def test_policy_and_unroll_equal_the_default_path(change):
    l0, g0 = _loss_and_grads(CFG)
    l1, g1 = _loss_and_grads(dataclasses.replace(CFG, **change))
    assert float(l1) == pytest.approx(float(l0), rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g1, g0)


def test_bad_unroll_is_rejected():
    with pytest.raises(ValueError, match="scan_unroll"):
        dataclasses.replace(CFG, scan_unroll=0)
