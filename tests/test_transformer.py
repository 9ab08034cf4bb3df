"""TransformerLM on its own: KV cache, packing, remat policies, dtypes, switches and config errors.

Reference for each check is the model's own full-forward float32 pass (parity with transformers is in
test_convert_llama.py); tolerances are stated per test.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from teal_jax.models.transformer import TransformerConfig, TransformerLM, init_cache

CFG = TransformerConfig(vocab_size=97, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                        mlp_dim=64, dtype="float32", max_decode_len=32)


@functools.cache
def _fwd(cfg, decode=False):
    """Jitted apply (compiled once per config and shape; eager apply re-traces the scanned layers every call)."""
    m = TransformerLM(cfg, decode=decode)
    if decode:
        return jax.jit(lambda v, *a: m.apply(v, *a, mutable=["cache"]))
    return jax.jit(lambda v, *a: m.apply(v, *a))


def _init(cfg, t=12):
    tokens = jax.random.randint(jax.random.key(1), (2, t), 0, cfg.vocab_size)
    return tokens, nn.unbox(jax.jit(TransformerLM(cfg).init)(jax.random.key(0), tokens)["params"])


@pytest.mark.parametrize("qk_norm,use_bias,tie", [(False, False, False), (True, True, True)])
def test_kv_cache_prefill_and_steps_equal_full_forward(qk_norm, use_bias, tie):
    cfg = dataclasses.replace(CFG, qk_norm=qk_norm, use_bias=use_bias, tie_embeddings=tie)
    tokens, params = _init(cfg)
    full = _fwd(cfg)({"params": params}, tokens)
    dec = TransformerLM(cfg, decode=True)
    cache = init_cache(dec, 2)
    pos = jnp.broadcast_to(jnp.arange(12), (2, 12))
    outs = []
    for lo, hi in ((0, 5), (5, 6), (6, 7), (7, 12)):  # a prefill chunk, single steps, another chunk
        logits, mut = _fwd(cfg, True)({"params": params, "cache": cache}, tokens[:, lo:hi], pos[:, lo:hi])
        cache = mut["cache"]
        outs.append(logits)
    # float32; identical math in a different order of cache writes: 1e-5 absolute.
    np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=1e-5)


def _greedy(cfg, params, prompt, segments, steps):
    """Prefill prompt [B, P] (segment 0 = left padding), then greedy single steps -> logits [B, steps + 1, V]."""
    dec = TransformerLM(cfg, decode=True)
    cache = init_cache(dec, prompt.shape[0])
    # Positions count real tokens only, so a left-padded prompt sees the same positions as the unpadded one.
    pos = jnp.maximum(jnp.cumsum(segments, 1) - 1, 0)
    logits, mut = _fwd(cfg, True)({"params": params, "cache": cache}, prompt, pos, segments)
    outs, last = [logits[:, -1]], pos[:, -1]
    for _ in range(steps):
        tok = jnp.argmax(outs[-1], -1)[:, None]
        last = last + 1
        logits, mut = _fwd(cfg, True)({"params": params, **mut}, tok, last[:, None], jnp.ones_like(tok))
        outs.append(logits[:, -1])
    return jnp.stack(outs, 1)


def test_left_padded_batch_decodes_like_each_example_alone():
    tokens, params = _init(CFG)
    lengths = (7, 4)
    prompts = [tokens[i:i + 1, :n] for i, n in enumerate(lengths)]
    p = max(lengths)
    batch = jnp.concatenate([jnp.pad(x, ((0, 0), (p - x.shape[1], 0))) for x in prompts])
    seg = jnp.asarray([[0] * (p - n) + [1] * n for n in lengths])
    batched = _greedy(CFG, params, batch, seg, steps=4)
    for i, x in enumerate(prompts):
        alone = _greedy(CFG, params, x, jnp.ones_like(x), steps=4)
        # float32: same math, padded keys masked out; 1e-5 absolute.
        np.testing.assert_allclose(batched[i:i + 1], alone, atol=1e-5)


def test_qk_norm_and_bias_switches_change_the_tree_and_the_output():
    tokens, params = _init(CFG)
    cfg = dataclasses.replace(CFG, qk_norm=True, use_bias=True)
    _, p2 = _init(cfg)
    attn = p2["layers"]["attn"]
    assert attn["q_norm"]["scale"].shape == (2, 8) and attn["k_norm"]["scale"].shape == (2, 8)
    assert attn["q_proj"]["bias"].shape == (2, 4, 8) and p2["layers"]["mlp"]["up_proj"]["bias"].shape == (2, 64)
    assert "q_norm" not in params["layers"]["attn"] and "bias" not in params["layers"]["attn"]["q_proj"]
    # Same kernels, unit norm scales and zero biases: QK-norm alone changes the logits, zero biases do not.
    same = jax.tree.map(lambda a: a, p2)
    for k in ("embed", "lm_head", "final_norm"):
        same[k] = params[k]
    for k in ("attn_norm", "mlp_norm"):
        same["layers"][k] = params["layers"][k]
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        same["layers"]["attn"][name]["kernel"] = params["layers"]["attn"][name]["kernel"]
    for name in ("gate_proj", "up_proj", "down_proj"):
        same["layers"]["mlp"][name]["kernel"] = params["layers"]["mlp"][name]["kernel"]
    base = _fwd(CFG)({"params": params}, tokens)
    bias_only = _fwd(dataclasses.replace(CFG, use_bias=True))(
        {"params": jax.tree.map(lambda a: a, {**same, "layers": {**same["layers"], "attn": {
            k: v for k, v in same["layers"]["attn"].items() if not k.endswith("_norm")}}})}, tokens)
    np.testing.assert_allclose(bias_only, base, atol=1e-6)
    assert np.abs(_fwd(cfg)({"params": same}, tokens) - base).max() > 1e-3


def test_packed_row_equals_documents_alone():
    tokens, params = _init(CFG)
    m = _fwd(CFG)
    a, b = tokens[:1, :5], tokens[1:, :7]
    row = jnp.concatenate([a, b], 1)
    seg = jnp.asarray([[1] * 5 + [2] * 7])
    pos = jnp.asarray([list(range(5)) + list(range(7))])
    packed = m({"params": params}, row, pos, seg)
    np.testing.assert_allclose(packed[:, :5], m({"params": params}, a), atol=1e-5)
    np.testing.assert_allclose(packed[:, 5:], m({"params": params}, b), atol=1e-5)


@functools.cache
def _loss_and_grads(cfg):
    tokens, params = _init(CFG)

    def loss(p):
        logits = TransformerLM(cfg).apply({"params": p}, tokens)
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("policy", [pytest.param("full", marks=pytest.mark.slow), "dots", "dots_no_batch"])
def test_remat_policies_give_the_same_loss_and_grads(policy):
    l0, g0 = _loss_and_grads(CFG)  # 'none', computed once for the three policies
    l1, g1 = _loss_and_grads(dataclasses.replace(CFG, remat_policy=policy))
    # float32, same math recomputed in the backward pass: loss to 1e-6 relative, grads to 1e-5 relative.
    assert float(l0) == pytest.approx(float(l1), rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g0, g1)


def test_bf16_compute_stays_close_to_f32():
    tokens, params = _init(CFG)
    f32 = _fwd(CFG)({"params": params}, tokens)
    bf16 = _fwd(dataclasses.replace(CFG, dtype="bfloat16"))({"params": params}, tokens)
    assert bf16.dtype == jnp.float32  # logits are returned in float32 whatever the compute dtype
    # bf16 has 8 mantissa bits: logits of magnitude ~0.1-1 agree to a few 1e-2.
    np.testing.assert_allclose(bf16, f32, atol=5e-2)


@pytest.mark.parametrize("kw", [dict(), dict(qk_norm=True, use_bias=True), dict(tie_embeddings=True)])
def test_num_params_counts_the_real_tree(kw):
    cfg = dataclasses.replace(CFG, **kw)
    _, params = _init(cfg)
    assert sum(x.size for x in jax.tree.leaves(params)) == cfg.num_params
    assert ("lm_head" in params) == (not cfg.tie_embeddings)


def test_parameters_carry_logical_axis_names():
    tokens = jnp.zeros((1, 4), jnp.int32)
    boxed = TransformerLM(CFG).init(jax.random.key(0), tokens)["params"]
    specs = nn.get_partition_spec(boxed)
    assert tuple(specs["layers"]["attn"]["q_proj"]["kernel"]) == ("layers", "embed", "heads", "head_dim")
    assert tuple(specs["layers"]["mlp"]["down_proj"]["kernel"]) == ("layers", "mlp", "embed")
    assert tuple(specs["embed"]["embedding"]) == ("vocab", "embed")


def test_invalid_configs_raise():
    with pytest.raises(ValueError, match="num_heads=6 must be a multiple of model.num_kv_heads=4"):
        dataclasses.replace(CFG, num_heads=6, num_kv_heads=4)
    with pytest.raises(ValueError, match="remat_policy='sometimes'"):
        dataclasses.replace(CFG, remat_policy="sometimes")
    with pytest.raises(ValueError, match="head_dim=7 must be even"):
        dataclasses.replace(CFG, head_dim=7)
