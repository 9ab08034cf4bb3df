"""Packed rows (several documents per row, segment ids) against each document run alone, unpacked.

The packed path passes ``is_causal=True`` plus the same-document mask to ``jax.nn.dot_product_attention`` (the
causal part stays in the kernel); the reference is the plain causal forward of each document by itself. float32
compute, so logits agree to 1e-5 and gradients to 1e-5 relative (only summation order differs).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from teal_jax.models.transformer import TransformerConfig, TransformerLM

CFG = TransformerConfig(vocab_size=97, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                        mlp_dim=64, dtype="float32", qk_norm=True)
# Two rows of 16: row 0 = documents of 5, 7 and 3 tokens + 1 padding; row 1 = 9 + 4 tokens + 3 padding.
LENGTHS = ((5, 7, 3), (9, 4))
T = 16


def _packed_batch(rng):
    docs = [[np.asarray(rng.integers(0, CFG.vocab_size, n), np.int32) for n in row] for row in LENGTHS]
    tokens = np.zeros((len(LENGTHS), T), np.int32)
    seg = np.zeros((len(LENGTHS), T), np.int32)
    pos = np.zeros((len(LENGTHS), T), np.int32)
    for r, row in enumerate(docs):
        at = 0
        for i, d in enumerate(row):
            tokens[r, at:at + len(d)] = d
            seg[r, at:at + len(d)] = i + 1
            pos[r, at:at + len(d)] = np.arange(len(d))
            at += len(d)
    return docs, tokens, seg, pos


@functools.cache
def _setup():
    rng = np.random.default_rng(0)
    docs, tokens, seg, pos = _packed_batch(rng)
    params = nn.unbox(jax.jit(TransformerLM(CFG).init)(jax.random.key(0), jnp.asarray(tokens))["params"])
    # Per-token output weights for a scalar loss whose gradient covers every real position's logits.
    weights = rng.normal(size=(len(LENGTHS), T, CFG.vocab_size)).astype(np.float32)
    return docs, tokens, seg, pos, params, weights


def _apply(params, tokens, pos=None, seg=None):
    return TransformerLM(CFG).apply({"params": params}, tokens, pos, seg)


def _packed_loss(params, tokens, pos, seg, weights):
    real = (seg > 0)[..., None]
    return jnp.sum(_apply(params, tokens, pos, seg) * weights * real)


def _alone_batch(docs):
    """Every document in its own row, at position 0, right-padded to T, no segment ids: causal attention keeps each
    document's logits independent of the padding after it (one compiled shape for all documents)."""
    flat = [d for row in docs for d in row]
    rows = np.zeros((len(flat), T), np.int32)
    for i, d in enumerate(flat):
        rows[i, :len(d)] = d
    return rows, [len(d) for d in flat]


def _alone_loss(params, rows, lengths, weights):
    logits = _apply(params, rows)
    total, i = 0.0, 0
    for r, row_lengths in enumerate(LENGTHS):
        at = 0
        for n in row_lengths:
            total = total + jnp.sum(logits[i, :n] * weights[r, at:at + n])
            at, i = at + n, i + 1
    return total


def test_packed_logits_equal_each_document_alone():
    docs, tokens, seg, pos, params, _ = _setup()
    packed = jax.jit(_apply)(params, tokens, pos, seg)
    rows, lengths = _alone_batch(docs)
    alone = jax.jit(_apply)(params, rows)
    i = 0
    for r, row_lengths in enumerate(LENGTHS):
        at = 0
        for n in row_lengths:
            np.testing.assert_allclose(packed[r, at:at + n], alone[i, :n], atol=1e-5, rtol=1e-5)
            at, i = at + n, i + 1


def test_packed_gradients_equal_each_document_alone():
    docs, tokens, seg, pos, params, weights = _setup()
    rows, lengths = _alone_batch(docs)
    l_packed, g_packed = jax.jit(jax.value_and_grad(_packed_loss))(params, tokens, pos, seg, weights)
    l_alone, g_alone = jax.jit(jax.value_and_grad(lambda p: _alone_loss(p, rows, lengths, weights)))(params)
    np.testing.assert_allclose(l_packed, l_alone, rtol=1e-5)
    flat_p, flat_a = jax.tree.leaves(g_packed), jax.tree.leaves(g_alone)
    for a, b in zip(flat_p, flat_a, strict=True):
        scale = float(np.abs(b).max()) or 1.0
        np.testing.assert_allclose(a / scale, b / scale, atol=1e-5)


def test_causal_flag_plus_document_mask_equals_the_full_boolean_mask():
    """The kernel-level form (is_causal + same-document mask) against the former one (one [B,1,T,T] boolean mask
    holding both), on random q/k/v with grouped heads."""
    _, _, seg, _, _, _ = _setup()
    kq, kk, kv = jax.random.split(jax.random.key(3), 3)
    q = jax.random.normal(kq, (2, T, 4, 8))
    k = jax.random.normal(kk, (2, T, 2, 8))
    v = jax.random.normal(kv, (2, T, 2, 8))
    same = (seg[:, :, None] == seg[:, None, :])[:, None]
    full = same & np.tril(np.ones((T, T), bool))[None, None]
    attend = jax.jit(jax.nn.dot_product_attention, static_argnames="is_causal")
    new = attend(q, k, v, mask=same, is_causal=True)
    old = attend(q, k, v, mask=full)
    np.testing.assert_allclose(new, old, atol=1e-6)
