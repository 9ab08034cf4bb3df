"""The one autoregressive decode loop: a KV cache inside ``jax.jit`` (``lax.while_loop``) over any step function.

A model enters the loop as a *step function* ``(params, tokens, positions, segments, cache, extra) -> (logits,
cache)`` (tokens/positions/segments int32 [R, T]; logits [R, T, V]; ``extra``: a dict of per-row [R, T] inputs that
constraints feed the model, empty for the prompt) that also has ``init_cache(rows)``; :class:`LinenDecoder` makes one
from a linen LM in decode mode. Per-step rules (modality masks, classifier-free guidance) are constraint objects
(:mod:`teal_jax.inference.constraints`); the text LM runs the loop with none.

Prompts of different lengths are left-padded (:func:`left_pad`): padding gets segment id 0 and real tokens segment id
1, so the cache's segment mask keeps every row from attending to its padding, and each row's positions start at 0.
The cache holds ``cache_length(prompt, new)`` positions (rounded up to a multiple of 64: prompts of nearby lengths
share one compilation).

One step (``DecodeState`` -> ``DecodeState``): split the key; each constraint rewrites the logits in turn (guidance
first narrows the 2B model rows to B); pick a token (greedy at temperature 0, else temperature -> top-k -> top-p ->
categorical; ids a constraint set to -inf stay impossible); rows already done emit ``pad_id``; constraints advance;
the token (widened back to the model rows) goes through the model at the next position.

Speed: the step function's ``prepare_params`` (e.g. weights cast to the compute dtype) runs once before the loop,
not per token; without an eos id the loop is a counted ``fori_loop`` (no per-token stop predicate).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

CACHE_MULTIPLE = 64  # the KV cache length is rounded up to this: fewer recompilations


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How tokens are picked. max_new_tokens: tokens generated per row; temperature 0 = greedy; top_k 0 = off;
    top_p 1 = off; eos_id: a row stops after emitting it (None: never); pad_id: emitted after eos."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    eos_id: int | None = None
    pad_id: int = 0


@flax.struct.dataclass
class DecodeState:
    """The loop's carry. B = output rows, R = model rows (2B under classifier-free guidance)."""

    step: jax.Array  # int32 []: tokens generated so far
    tokens: jax.Array  # int32 [B, max_new_tokens]: the output (pad_id where nothing was generated)
    logits: jax.Array  # float [R, V]: the model's logits for the next token
    cache: Any  # the step function's KV cache
    position: jax.Array  # int32 [R]: position of the next token fed
    done: jax.Array  # bool [B]: the row has emitted eos
    rng: jax.Array  # PRNG key
    constraints: tuple  # one state per constraint, in order


def filter_logits(logits: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """Temperature, then top-k, then top-p; filtered entries become the dtype's minimum. logits: [B, V] float32."""
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


def pick(logits: jax.Array, key: jax.Array, sampling: SamplingConfig) -> jax.Array:
    """int32 [B]: argmax at temperature 0, else a draw from the filtered logits [B, V]. An id whose logit is -inf
    (masked by a constraint) is never drawn: filtering's floor value must not revive it."""
    if sampling.temperature == 0:
        return jnp.argmax(logits, -1).astype(jnp.int32)
    filtered = filter_logits(logits, sampling.temperature, sampling.top_k, sampling.top_p)
    filtered = jnp.where(jnp.isneginf(logits), -jnp.inf, filtered)
    return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0,
             multiple: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (tokens, segment_ids, positions), each int32 [B, P], prompts right-aligned; P is the longest prompt
    rounded up to ``multiple`` (prompts of nearby lengths then share one compiled sampler; padding has segment 0,
    which no token attends to). Raises ValueError on an empty prompt."""
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


def check_context(prompts: Sequence[Sequence[int]], max_new_tokens: int, context: int) -> None:
    """ValueError naming the limit when the longest prompt plus ``max_new_tokens`` needs more positions than the
    model was trained with (``context``: its ``max_decode_len``; RoPE positions beyond it were never seen)."""
    longest = max((len(p) for p in prompts), default=0)
    if longest + int(max_new_tokens) > int(context):
        raise ValueError(f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} needs "
                         f"{longest + int(max_new_tokens)} positions; the model's context is {context} "
                         "(config.model max_decode_len): shorten the prompt or ask for fewer tokens")


def cache_length(prompt_length: int, max_new_tokens: int) -> int:
    """KV-cache positions for a padded prompt plus the new tokens, rounded up to :data:`CACHE_MULTIPLE`."""
    return -(-(prompt_length + max_new_tokens) // CACHE_MULTIPLE) * CACHE_MULTIPLE


@dataclasses.dataclass(frozen=True)
class LinenDecoder:
    """A linen LM in decode mode as a step function: ``module(config, decode=True)`` applied to ``(tokens, positions,
    segment_ids, *[extra[name] for name in extra_inputs])`` with a mutable ``'cache'`` collection.

    Hashable (a static argument of the jitted loop): equal decoders share one compilation. ``config`` must already
    hold the cache length (``max_decode_len``): build one per call with :func:`cache_length`.
    """

    module: type
    config: Any
    extra_inputs: tuple[str, ...] = ()
    # (config, params) -> params in the form the step reads (e.g. weights cast to the compute dtype), applied once
    # before the loop. A module-level function (hashed by identity: a new lambda per call would recompile).
    cast_params: Callable[[Any, Any], Any] | None = None

    def prepare_params(self, params) -> Any:
        """``params`` as the step function reads them (``cast_params``; unchanged when it is None)."""
        return params if self.cast_params is None else self.cast_params(self.config, params)

    def init_cache(self, rows: int) -> Any:
        """A zeroed cache for ``rows`` rows, without materialising parameters."""
        model = self.module(self.config, decode=True)
        tokens = jnp.zeros((rows, 1), jnp.int32)
        shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, tokens, tokens))["cache"]
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def __call__(self, params, tokens, positions, segments, cache, extra) -> tuple[jax.Array, Any]:
        model = self.module(self.config, decode=True)
        args = [extra.get(name) for name in self.extra_inputs]
        logits, mut = model.apply({"params": params, "cache": cache}, tokens, positions, segments, *args,
                                  mutable=["cache"])
        return logits, mut["cache"]


@functools.partial(jax.jit, static_argnames=("step_fn", "sampling", "constraints"))
def decode(params, tokens: jax.Array, positions: jax.Array, segments: jax.Array, rng: jax.Array,
           constraint_states: tuple, prefill: dict | None = None, *, step_fn, sampling: SamplingConfig,
           constraints: tuple = ()) -> jax.Array:
    """The decode loop. tokens/positions/segments: int32 [R, P] left-padded model rows (:func:`left_pad`);
    ``constraint_states``: ``c.init(prompts)`` for each constraint -> int32 [B, sampling.max_new_tokens].
    ``prefill``: extra step-function inputs of the prompt only (``{name: [R, P, ...]}``, e.g. continuous features).

    ``step_fn``'s cache must hold at least P + max_new_tokens positions. Stops early once every row has emitted
    ``sampling.eos_id``; without an eos id the loop has a fixed trip count (no per-token stop test). ``params`` go
    to ``step_fn`` as given: :func:`generate` casts them once beforehand (``step_fn.prepare_params``).
    """
    rows = tokens.shape[0]
    b = rows // int(np.prod([c.row_factor for c in constraints], dtype=int))
    logits, cache = step_fn(params, tokens, positions, segments, step_fn.init_cache(rows), dict(prefill or {}))

    def widen(x):  # [B, ...] -> [R, ...]: what every model row receives
        for c in reversed(constraints):
            x = c.widen(x)
        return x

    def cond(s: DecodeState):
        return (s.step < sampling.max_new_tokens) & ~jnp.all(s.done)

    def body(s: DecodeState) -> DecodeState:
        rng, key = jax.random.split(s.rng)
        logits = s.logits
        for c, state in zip(constraints, s.constraints, strict=True):
            logits = c.logits(state, logits)
        tok = pick(logits, key, sampling)
        tok = jnp.where(s.done, sampling.pad_id, tok)
        out = s.tokens.at[:, s.step].set(tok)
        states = tuple(c.advance(state, tok) for c, state in zip(constraints, s.constraints, strict=True))
        done = s.done | (tok == sampling.eos_id) if sampling.eos_id is not None else s.done
        extra = {}
        for c, state in zip(constraints, states, strict=True):
            extra.update({k: widen(v)[:, None] for k, v in c.step_inputs(state).items()})
        logits, cache = step_fn(params, widen(tok)[:, None], s.position[:, None], jnp.ones((rows, 1), jnp.int32),
                                s.cache, extra)
        return DecodeState(s.step + 1, out, logits[:, -1], cache, s.position + 1, done, rng, states)

    state = DecodeState(step=jnp.array(0), tokens=jnp.full((b, sampling.max_new_tokens), sampling.pad_id, jnp.int32),
                        logits=logits[:, -1], cache=cache, position=positions[:, -1] + 1,
                        done=jnp.zeros((b,), bool), rng=rng, constraints=tuple(constraint_states))
    if sampling.eos_id is None:  # nothing can stop a row early: a counted loop, no predicate to evaluate per token
        return jax.lax.fori_loop(0, sampling.max_new_tokens, lambda _, s: body(s), state).tokens
    return jax.lax.while_loop(cond, body, state).tokens


@functools.partial(jax.jit, static_argnums=0)
def prepare_params(step_fn, params):
    """``step_fn.prepare_params(params)`` compiled (one program per step function), or ``params`` unchanged when the
    step function has no such method."""
    prepare = getattr(step_fn, "prepare_params", None)
    return params if prepare is None else prepare(params)


def generate(decoder: Callable[[int], Any], params, prompts: Sequence[Sequence[int]], sampling: SamplingConfig, *,
             constraints: Sequence = (), rng: jax.Array | None = None, pad_multiple: int = 1,
             prefill: dict[str, Sequence[np.ndarray]] | None = None) -> np.ndarray:
    """Generates ``sampling.max_new_tokens`` ids after each prompt -> int32 [B, max_new_tokens] (pad after eos).

    ``decoder(cache_length) -> step function`` (e.g. a :class:`LinenDecoder` for that length); ``constraints`` run in
    order (each may add model rows: ``c.model_rows(rows)``); ``pad_multiple`` rounds the padded prompt length.
    ``rng`` defaults to ``jax.random.key(0)``. ``prefill``: per-token inputs of the prompts only, ``{name: one
    [len(prompt), ...] array per prompt}`` (left-padded with zeros like the prompts; the decode steps do not get them),
    e.g. the continuous features of a condition; not with constraints that add model rows (guidance).
    """
    constraints = tuple(constraints)
    if prefill and any(getattr(c, "row_factor", 1) != 1 for c in constraints):
        raise ValueError("prefill inputs cannot be combined with a constraint that adds model rows (guidance)")
    rows = [list(p) for p in prompts]
    for c in constraints:
        rows = c.model_rows(rows)
    states = tuple(c.init(prompts) for c in constraints)
    tokens, segments, positions = left_pad(rows, sampling.pad_id, multiple=pad_multiple)
    padded = {}
    for name, arrays in (prefill or {}).items():
        if len(arrays) != len(rows) or any(len(a) != len(p) for a, p in zip(arrays, rows, strict=False)):
            raise ValueError(f"prefill[{name!r}]: one array per prompt, as long as its prompt")
        first = np.asarray(arrays[0])
        out = np.zeros((len(rows), tokens.shape[1], *first.shape[1:]), first.dtype)
        for i, a in enumerate(arrays):
            out[i, tokens.shape[1] - len(a):] = a
        padded[name] = out
    step_fn = decoder(cache_length(tokens.shape[1], sampling.max_new_tokens))
    rng = jax.random.key(0) if rng is None else rng
    # Cast once here, outside the loop: inside it XLA would re-read (and re-cast) float32 weights every token.
    params = prepare_params(step_fn, params)
    return np.asarray(decode(params, tokens, positions, segments, rng, states, padded or None, step_fn=step_fn,
                             sampling=sampling, constraints=constraints))
