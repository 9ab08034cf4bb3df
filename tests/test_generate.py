"""The KV-cache sampling loop against plain full-forward re-runs, and the logit filters against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from teal_jax.inference.lm import sample_ids as sample
from teal_jax.inference.sampler import SamplingConfig, filter_logits, left_pad
from teal_jax.models.transformer import TransformerConfig, TransformerLM

CFG = TransformerConfig(vocab_size=61, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                        mlp_dim=64, dtype="float32")


@pytest.fixture(scope="module")
def params():
    tokens = jnp.zeros((1, 4), jnp.int32)
    return nn.unbox(TransformerLM(CFG).init(jax.random.key(0), tokens)["params"])


def _greedy_reference(params, prompt, n):
    """Greedy decoding by re-running the full forward pass on the growing sequence (no cache). The sequence is
    right-padded to one fixed length so a single compiled forward serves every step: causal attention keeps the
    padding out of the logits at position len(seq) - 1."""
    seq = list(prompt)
    forward = jax.jit(TransformerLM(CFG).apply)
    for _ in range(n):
        padded = jnp.asarray([seq + [0] * (len(prompt) + n - len(seq))], jnp.int32)
        logits = forward({"params": params}, padded)
        seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
    return seq[len(prompt):]


def test_greedy_cached_sampling_equals_full_forward(params):
    prompts = [[5, 7, 9], [1, 2, 3, 4, 5, 6], [42]]  # ragged: left padding must not leak into attention
    out = sample(CFG, params, prompts, SamplingConfig(max_new_tokens=8, temperature=0.0))
    for prompt, row in zip(prompts, out, strict=True):
        assert list(row) == _greedy_reference(params, prompt, 8)


def test_eos_stops_each_example_and_pads(params):
    prompts = [[5, 7, 9], [1, 2, 3]]
    free = sample(CFG, params, prompts, SamplingConfig(max_new_tokens=6, temperature=0.0))
    eos = int(free[0, 2])  # make example 0 stop at its third token
    out = sample(CFG, params, prompts, SamplingConfig(max_new_tokens=6, temperature=0.0, eos_id=eos, pad_id=0))
    np.testing.assert_array_equal(out[0, :3], free[0, :3])
    assert np.all(out[0, 3:] == 0)
    row1 = list(free[1])
    stop = row1.index(eos) + 1 if eos in row1 else 6
    np.testing.assert_array_equal(out[1, :stop], free[1, :stop])


def test_sampling_is_seeded_and_respects_top_k(params):
    cfg = SamplingConfig(max_new_tokens=10, temperature=1.0, top_k=1)
    a = sample(CFG, params, [[3, 4]], cfg, jax.random.key(1))
    greedy = sample(CFG, params, [[3, 4]], SamplingConfig(max_new_tokens=10, temperature=0.0))
    np.testing.assert_array_equal(a, greedy)  # top-1 sampling is greedy
    cfg = SamplingConfig(max_new_tokens=10, temperature=1.0)
    np.testing.assert_array_equal(sample(CFG, params, [[3, 4]], cfg, jax.random.key(7)),
                                  sample(CFG, params, [[3, 4]], cfg, jax.random.key(7)))


def _numpy_filter(logits, temperature, top_k, top_p):
    x = logits / temperature
    keep = np.ones_like(x, bool)
    if top_k:
        kth = np.sort(x)[-top_k]
        keep &= x >= kth
    if top_p < 1:  # nucleus over the top-k-renormalised distribution (as transformers chains the two)
        x = np.where(keep, x, -np.inf)
        order = np.argsort(-x)
        p = np.exp(x[order] - x.max())
        p /= p.sum()
        before = np.cumsum(p) - p
        allowed = order[before < top_p]
        mask = np.zeros_like(keep)
        mask[allowed] = True
        keep &= mask
    return keep


@pytest.mark.parametrize("top_k,top_p", [(0, 0.5), (5, 1.0), (5, 0.8), (0, 0.95)])
def test_filter_logits_matches_numpy(top_k, top_p):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 50)).astype(np.float32) * 3
    got = np.asarray(filter_logits(jnp.asarray(logits), 0.7, top_k, top_p)) > np.finfo(np.float32).min
    for row, keep in zip(logits, got, strict=True):
        np.testing.assert_array_equal(keep, _numpy_filter(row.astype(np.float64), 0.7, top_k, top_p))


def test_left_pad_layout_and_errors():
    tokens, segs, pos = left_pad([[1, 2, 3], [4]], pad_id=0)
    np.testing.assert_array_equal(tokens, [[1, 2, 3], [0, 0, 4]])
    np.testing.assert_array_equal(segs, [[1, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(pos, [[0, 1, 2], [0, 0, 0]])
    tokens, segs, pos = left_pad([[1, 2, 3], [4]], pad_id=9, multiple=4)  # rounded up: one more pad column
    np.testing.assert_array_equal(tokens, [[9, 1, 2, 3], [9, 9, 9, 4]])
    np.testing.assert_array_equal(segs, [[0, 1, 1, 1], [0, 0, 0, 1]])
    np.testing.assert_array_equal(pos, [[0, 0, 1, 2], [0, 0, 0, 0]])
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1], []])
