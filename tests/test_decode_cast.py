"""Decoding with weights cast once to the compute dtype (bf16) against the float32-params path.

The cast is exact by construction (every cast leaf is cast to the compute dtype before its first use anyway), so the
checks are equalities: logits bit for bit, greedy tokens id for id. Also: the counted loop (no eos id) against the
early-stopping while loop with an eos id that never occurs.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from teal_jax import vocab as V
from teal_jax.inference import lm, sampler, teal
from teal_jax.inference.sampler import SamplingConfig
from teal_jax.models.teal import TealConfig, TealLM, compute_span_index
from teal_jax.models.transformer import TransformerConfig, TransformerLM

LM = TransformerConfig(vocab_size=61, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                       mlp_dim=64, dtype="bfloat16", qk_norm=True, use_bias=True)
PROMPTS = [[5, 7, 9], [1, 2, 3, 4, 5, 6], [42]]
GREEDY = SamplingConfig(max_new_tokens=10, temperature=0.0)


def _uncast(decoder):
    """The same step functions without the cast: float32 params reach every decode step."""
    return lambda length: dataclasses.replace(decoder(length), cast_params=None)


def _lm_params():
    tokens = jnp.zeros((1, 4), jnp.int32)
    return nn.unbox(jax.jit(TransformerLM(LM).init)(jax.random.key(0), tokens)["params"])


def test_cast_tree_dtypes_and_bitwise_equal_logits():
    params = _lm_params()
    step = lm.decoder(LM)(64)
    cast = sampler.prepare_params(step, params)
    layers = cast["layers"]
    assert layers["attn"]["q_proj"]["kernel"].dtype == jnp.bfloat16
    assert layers["attn"]["q_proj"]["bias"].dtype == jnp.bfloat16
    assert layers["mlp"]["gate_proj"]["kernel"].dtype == jnp.bfloat16
    assert cast["embed"]["embedding"].dtype == jnp.bfloat16 and cast["lm_head"]["kernel"].dtype == jnp.bfloat16
    # norms multiply in float32: their scales must not lose bits
    assert layers["attn_norm"]["scale"].dtype == jnp.float32 and layers["attn"]["q_norm"]["scale"].dtype == jnp.float32
    tokens, segments, positions = sampler.left_pad(PROMPTS)
    run = jax.jit(step)
    a, _ = run(params, tokens, positions, segments, step.init_cache(3), {})
    b, _ = run(cast, tokens, positions, segments, step.init_cache(3), {})
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_lm_greedy_tokens_cast_once_equal_float32_params():
    params = _lm_params()
    cast_once = lm.sample_ids(LM, params, PROMPTS, GREEDY)
    float32 = sampler.generate(_uncast(lm.decoder(LM)), params, PROMPTS, GREEDY)
    np.testing.assert_array_equal(cast_once, float32)
    # the counted loop (eos None) and the early-stop while loop (an eos that never comes) agree
    never = dataclasses.replace(GREEDY, eos_id=-1)
    np.testing.assert_array_equal(sampler.generate(lm.decoder(LM), params, PROMPTS, never), cast_once)


def test_teal_cast_once_gives_bitwise_equal_step_logits():
    """TEAL's cast (the LM plus the output heads; embeddings, codebooks and projections stay float32): the prompt
    step's logits with cast params equal those with float32 params bit for bit (greedy tokens then cannot differ)."""
    vocab = V.UnifiedVocab(text_size=61, image_codebook_size=20, audio_codebook_size=8, audio_num_levels=3)
    config = TealConfig(LM, vocab, image_span_len=8)
    params = nn.unbox(jax.jit(TealLM(config).init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    step = teal.decoder(config)(64)
    cast = sampler.prepare_params(step, params)
    assert cast["image_head"].dtype == jnp.bfloat16 and cast["special_head"].dtype == jnp.bfloat16
    assert cast["image_embed"].dtype == jnp.float32 and cast["lm"]["final_norm"]["scale"].dtype == jnp.float32
    prompts = [[5, 9, vocab.boi, vocab.image_offset + 3, vocab.image_offset + 7], [7, vocab.boa], [3, 4, 11, 2]]
    tokens, segments, positions = sampler.left_pad(prompts)
    span = np.asarray(compute_span_index(vocab, jnp.asarray(tokens)))
    run = jax.jit(step)
    a, _ = run(params, tokens, positions, segments, step.init_cache(3), {"span_index": span})
    b, _ = run(cast, tokens, positions, segments, step.init_cache(3), {"span_index": span})
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
