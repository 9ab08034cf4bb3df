"""TransformerLM on its own: KV cache, packing, remat policies, dtypes, switches and config errors.

Reference for each check is the model's own full-forward float32 pass (parity with transformers is in
test_convert_llama.py); tolerances are stated per test.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from teal_jax.models.transformer import TransformerConfig, TransformerLM, init_cache

CFG = TransformerConfig(vocab_size=97, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                        mlp_dim=64, dtype="float32", max_decode_len=32)


def _init(cfg, t=12):
    tokens = jax.random.randint(jax.random.key(1), (2, t), 0, cfg.vocab_size)
    return tokens, nn.unbox(TransformerLM(cfg).init(jax.random.key(0), tokens)["params"])


@pytest.mark.parametrize("qk_norm,use_bias,tie", [(False, False, False), (True, True, True)])
def test_kv_cache_prefill_and_steps_equal_full_forward(qk_norm, use_bias, tie):
    cfg = dataclasses.replace(CFG, qk_norm=qk_norm, use_bias=use_bias, tie_embeddings=tie)
    tokens, params = _init(cfg)
    full = TransformerLM(cfg).apply({"params": params}, tokens)
    dec = TransformerLM(cfg, decode=True)
    cache = init_cache(dec, 2)
    pos = jnp.broadcast_to(jnp.arange(12), (2, 12))
    outs = []
    for lo, hi in ((0, 5), (5, 6), (6, 7), (7, 12)):  # a prefill chunk, single steps, another chunk
        logits, mut = dec.apply({"params": params, "cache": cache}, tokens[:, lo:hi], pos[:, lo:hi], mutable=["cache"])
        cache = mut["cache"]
        outs.append(logits)
    # float32; identical math in a different order of cache writes: 1e-5 absolute.
    np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=1e-5)


def test_packed_row_equals_documents_alone():
    tokens, params = _init(CFG)
    m = TransformerLM(CFG)
    a, b = tokens[:1, :5], tokens[1:, :7]
    row = jnp.concatenate([a, b], 1)
    seg = jnp.asarray([[1] * 5 + [2] * 7])
    pos = jnp.asarray([list(range(5)) + list(range(7))])
    packed = m.apply({"params": params}, row, pos, seg)
    np.testing.assert_allclose(packed[:, :5], m.apply({"params": params}, a), atol=1e-5)
    np.testing.assert_allclose(packed[:, 5:], m.apply({"params": params}, b), atol=1e-5)


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_policies_give_the_same_loss_and_grads(policy):
    tokens, params = _init(CFG)

    def loss(cfg, p):
        logits = TransformerLM(cfg).apply({"params": p}, tokens)
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    l0, g0 = jax.value_and_grad(lambda p: loss(CFG, p))(params)
    l1, g1 = jax.value_and_grad(lambda p: loss(dataclasses.replace(CFG, remat_policy=policy), p))(params)
    assert float(l0) == pytest.approx(float(l1), rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g0, g1)


def test_bf16_compute_stays_close_to_f32():
    tokens, params = _init(CFG)
    f32 = TransformerLM(CFG).apply({"params": params}, tokens)
    bf16 = TransformerLM(dataclasses.replace(CFG, dtype="bfloat16")).apply({"params": params}, tokens)
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
