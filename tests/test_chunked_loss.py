"""Chunked cross-entropy (config.train.loss_chunk_size > 0) against the full-logits loss, float32.

Same per-token ops, the head's gradient summed chunk by chunk: loss and metrics agree to 1e-6 relative, gradients to
1e-5 relative (of each leaf's largest entry). The chunk (5) does not divide the sequence (16): the padded tail is
exercised. The batch is packed (segment ids, padding) with a partial loss mask and a z-loss.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _tiny import tiny_lm_config

from teal_jax.train import chunked_loss
from teal_jax.train.lm_objective import LMObjective


def _batch(vocab, b=2, t=17):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, (b, t)).astype(np.int32)
    seg = np.ones((b, t), np.int32)
    seg[0, 7:] = 2
    seg[1, 12:] = 0  # padding
    pos = np.zeros((b, t), np.int32)
    for r in range(b):
        for s in np.unique(seg[r]):
            where = np.flatnonzero(seg[r] == s)
            pos[r, where] = np.arange(len(where))
    mask = (rng.random((b, t)) > 0.2).astype(np.float32)
    return {"tokens": tokens, "segment_ids": seg, "positions": pos, "loss_mask": mask}


@functools.cache
def _objective(chunk):
    c = tiny_lm_config()
    c.train.loss_chunk_size = chunk
    c.model.z_loss = 1e-3
    c.model.num_layers = 1  # the loss is what is tested: one block keeps the compile short
    return LMObjective(c)


def _loss_and_grads(chunk, params, batch):
    obj = _objective(chunk)
    fn = jax.jit(jax.value_and_grad(lambda p: obj._loss(p, batch, None, obj.z_loss), has_aux=True))
    return fn(params)


def test_chunked_lm_loss_and_grads_equal_full_logits():
    obj = _objective(0)
    batch = {k: jnp.asarray(v) for k, v in _batch(obj.model_config.vocab_size).items()}
    params, _ = obj.init(jax.random.key(0), batch)
    params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "value"))
    (l0, m0), g0 = _loss_and_grads(0, params, batch)
    (l1, m1), g1 = _loss_and_grads(5, params, batch)
    assert float(m0["z_loss"]) > 0 and 0 <= float(m0["accuracy"]) <= 1
    assert float(l1) == pytest.approx(float(l0), rel=1e-6)
    for k in m0:
        assert float(m1[k]) == pytest.approx(float(m0[k]), rel=1e-6, abs=1e-9), k
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
        scale = float(np.abs(b).max()) or 1.0
        np.testing.assert_allclose(np.asarray(a) / scale, np.asarray(b) / scale, atol=1e-5)


def test_chunked_token_stats_match_full_and_reject_bad_chunk():
    rng = np.random.default_rng(1)
    h = jnp.asarray(rng.normal(size=(2, 7, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(4, 11)), jnp.float32)
    tg = jnp.asarray(rng.integers(0, 11, (2, 7)), jnp.int32)
    full = chunked_loss.token_stats(h @ w, tg)
    part = chunked_loss.chunked_token_stats(h, tg, lambda x: x @ w, chunked_loss.token_stats, 3)
    for k in full:
        np.testing.assert_allclose(part[k], full[k], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="loss_chunk_size"):
        chunked_loss.chunked_token_stats(h, tg, lambda x: x @ w, chunked_loss.token_stats, 0)


@pytest.mark.slow  # ~20 s of compile on 2 cores; the LM test above covers the mechanism in CI
def test_chunked_teal_loss_and_grads_equal_full_logits():
    from teal_jax.train import teal_objective as TO

    objs = {}
    for chunk in (0, 7):
        c = TO.synthetic_config("full")
        c.train.loss_chunk_size = chunk
        c.model.z_loss = 1e-3
        c.model.lm.num_layers = 1
        objs[chunk] = TO.TealObjective(c)
    vocab = objs[0].vocab
    batch = _batch(vocab.used_size, t=19)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    params, _ = objs[0].init(jax.random.key(0), batch)
    params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "value"))
    out = {k: jax.jit(jax.value_and_grad(lambda p, o=o: o._loss(p, batch, None, o.z_loss), has_aux=True))(params)
           for k, o in objs.items()}
    (l0, m0), g0 = out[0]
    (l1, m1), g1 = out[7]
    assert float(m0["text_nll"]) > 0 and float(m0["z_loss"]) > 0
    for k in m0:
        assert float(m1[k]) == pytest.approx(float(m0[k]), rel=1e-6, abs=1e-9), k
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
        scale = float(np.abs(b).max()) or 1.0
        np.testing.assert_allclose(np.asarray(a) / scale, np.asarray(b) / scale, atol=1e-5)
