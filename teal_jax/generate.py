"""Batched autoregressive sampling with a KV cache, entirely inside ``jax.jit`` (``lax.while_loop``).

Prompts of different lengths are left-padded; padding gets segment id 0 and real tokens segment id 1, so the cache's
segment mask keeps every example from attending to its padding, and each example's positions start at 0.

Samplers: greedy (temperature 0), temperature, top-k, top-p (nucleus). ``logits_fn(step, last_token, logits)`` may
rewrite the logits of every step (modality constraints, classifier-free guidance mixing); it runs inside the loop.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from teal_jax.models.transformer import TransformerConfig, TransformerLM, init_cache

LogitsFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]  # (step, last_token [B], logits [B,V]) -> logits


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    eos_id: int | None = None  # stop (per example) after emitting this id
    pad_id: int = 0  # emitted after eos


def filter_logits(logits: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """Temperature, then top-k, then top-p; filtered entries become -inf. logits: [B, V] float32."""
    logits = logits / jnp.maximum(temperature, 1e-6)
    neg = jnp.finfo(logits.dtype).min
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # keep the smallest prefix whose mass reaches top_p: an entry stays if the mass *before* it is < top_p
        before = jnp.cumsum(probs, axis=-1) - probs
        cutoff = jnp.min(jnp.where(before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, neg, logits)
    return logits


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0,
             multiple: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (tokens, segment_ids, positions), each [B, P], prompts right-aligned; P is the longest prompt rounded
    up to ``multiple`` (prompts of nearby lengths then share one compiled sampler; padding has segment 0, which no
    token attends to)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (start with BOS for an unconditional sample)")
    length = -(-max(len(p) for p in prompts) // multiple) * multiple
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    segments = np.zeros((len(prompts), length), np.int32)
    positions = np.zeros((len(prompts), length), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, length - len(p):] = p
        segments[i, length - len(p):] = 1
        positions[i, length - len(p):] = np.arange(len(p))
    return tokens, segments, positions


@functools.partial(jax.jit, static_argnames=("model_config", "sampling", "logits_fn"))
def _sample_jit(params, tokens, segments, positions, rng, *, model_config: TransformerConfig,
                sampling: SamplingConfig, logits_fn: LogitsFn | None):
    b, p = tokens.shape
    model = TransformerLM(model_config, decode=True)
    cache = init_cache(model, b)
    logits, mut = model.apply({"params": params, "cache": cache}, tokens, positions, segments, mutable=["cache"])
    last_logits = logits[:, -1]
    next_pos = positions[:, -1] + 1
    out = jnp.full((b, sampling.max_new_tokens), sampling.pad_id, jnp.int32)

    def pick(step, last_token, logits, key):
        if logits_fn is not None:
            logits = logits_fn(step, last_token, logits)
        if sampling.temperature == 0:
            return jnp.argmax(logits, -1).astype(jnp.int32)
        filtered = filter_logits(logits, sampling.temperature, sampling.top_k, sampling.top_p)
        return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)

    def cond(carry):
        step, *_, done = carry
        return (step < sampling.max_new_tokens) & ~jnp.all(done)

    def body(carry):
        step, cache, logits, last, pos, out, key, done = carry
        key, sub = jax.random.split(key)
        tok = pick(step, last, logits, sub)
        tok = jnp.where(done, sampling.pad_id, tok)
        out = out.at[:, step].set(tok)
        if sampling.eos_id is not None:
            done = done | (tok == sampling.eos_id)
        logits, mut = model.apply({"params": params, "cache": cache}, tok[:, None], pos[:, None],
                                  jnp.ones((b, 1), jnp.int32), mutable=["cache"])
        return step + 1, mut["cache"], logits[:, -1], tok, pos + 1, out, key, done

    carry = (jnp.array(0), mut["cache"], last_logits, tokens[:, -1], next_pos, out, rng,
             jnp.zeros((b,), bool))
    return jax.lax.while_loop(cond, body, carry)[5]


def sample(model_config: TransformerConfig, params, prompts: Sequence[Sequence[int]], sampling: SamplingConfig,
           rng: jax.Array | None = None, logits_fn: LogitsFn | None = None) -> np.ndarray:
    """Generates ``sampling.max_new_tokens`` ids after each prompt -> int32 [B, max_new_tokens] (pad after EOS).

    ``params`` are the LM's parameters (``{'embed': ..., 'layers': ...}``, unboxed).
    """
    tokens, segments, positions = left_pad(prompts, sampling.pad_id)
    need = -(-(tokens.shape[1] + sampling.max_new_tokens) // 64) * 64  # round up: fewer recompilations
    cfg = dataclasses.replace(model_config, max_decode_len=need)
    rng = jax.random.key(0) if rng is None else rng
    return np.asarray(_sample_jit(params, tokens, segments, positions, rng, model_config=cfg, sampling=sampling,
                                  logits_fn=logits_fn))
