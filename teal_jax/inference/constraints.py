"""Per-step decoding rules for :func:`teal_jax.inference.sampler.decode`, as pluggable constraint objects.

A constraint is a hashable object (a static argument of the jitted loop: equal constraints share one compilation)
with a small state per row:

  host side   ``init(prompts) -> state``      a pytree of arrays with leading axis B (the prompt rows)
              ``model_rows(rows) -> rows``    rows the model runs (default: unchanged; guidance appends B more)
  traced      ``logits(state, logits)``       rewrite/mask the next-token logits [R, V] -> [B, V] (-inf = banned)
              ``advance(state, token)``       the state after emitting ``token`` int32 [B]
              ``step_inputs(state)``          extra model inputs for the token just emitted: {name: [B]}
              ``widen(x)``, ``row_factor``    how a [B, ...] array reaches the R = B * row_factor model rows

:class:`ModalityConstraint` is TEAL's modality state machine; per row it holds (mode, count):

    text mode   : allowed = text ids, plus <boi> (if image spans are enabled) and <boa> (if audio spans are)
    <boi> seen  : image mode; the next ``image_tokens`` (= h*w) tokens may only be image ids, then <eoi> is forced
    <boa> seen  : audio mode; step t of the span may only be an id of audio level t % n (n = kept levels: the order
                  the vocabulary's frame-major flattening implies), ``audio_frames * n`` of them, then <eoa> forced
    <eoi>/<eoa> : back to text mode

The state at the start comes from the prompt (a prompt ending in ``... <boi>`` starts inside an image span), so
text-to-image is "prompt = condition + <boi>", captioning is "prompt = <boi> image <eoi> + task marker". Each code's
index in its span goes to the model as ``span_index`` (the learned span positions).

:class:`Guidance` is classifier-free guidance: the conditional and the unconditional prompts run as one batch of 2B
rows; where its gate says "inside a span" (image and audio spans, with the modality constraint as gate) the logits are
``uncond + scale * (cond - uncond)`` and both rows receive the sampled token. The scale is part of the traced state,
so a new scale does not recompile. The default unconditional prompt is :func:`null_prompt`: ``[<null>] + (the
prompt's open span, if any)``; training must drop the condition the same way for the guidance to mean anything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from teal_jax.vocab import AUDIO, IMAGE, TEXT, UnifiedVocab

MODE_TEXT, MODE_IMAGE, MODE_AUDIO = 0, 1, 2


class Constraint:
    """Base class: no rule (the identity on every step). Subclasses override what they need; see the module
    docstring for the contract."""

    row_factor: int = 1

    def init(self, prompts: Sequence[Sequence[int]]) -> Any:
        return ()

    def model_rows(self, rows: list[list[int]]) -> list[list[int]]:
        return rows

    def logits(self, state, logits: jax.Array) -> jax.Array:
        return logits

    def advance(self, state, token: jax.Array):
        return state

    def step_inputs(self, state) -> dict[str, jax.Array]:
        return {}

    def widen(self, x: jax.Array) -> jax.Array:
        return x


@dataclasses.dataclass(frozen=True)
class SpanConfig:
    """image_tokens: codes per image span (h*w; 0 disables image spans); audio_frames: frames per audio span (0
    disables audio spans); constrain: apply the modality masks (False: any valid id, for debugging);
    guidance_scale: CFG scale inside image/audio spans (1 = off)."""

    image_tokens: int = 0
    audio_frames: int = 0
    constrain: bool = True
    guidance_scale: float = 1.0

    def __post_init__(self):
        if self.image_tokens < 0 or self.audio_frames < 0:
            raise ValueError(f"SpanConfig.image_tokens={self.image_tokens} and audio_frames={self.audio_frames} "
                             "must be >= 0")


@flax.struct.dataclass
class SpanState:
    mode: jax.Array  # int32 [B]: MODE_TEXT / MODE_IMAGE / MODE_AUDIO
    count: jax.Array  # int32 [B]: codes emitted in the open span
    span_index: jax.Array  # int32 [B]: the span index of the token just emitted (0 outside spans)


def prompt_state(vocab: UnifiedVocab, prompt: Sequence[int], spans: SpanConfig) -> tuple[int, int]:
    """(mode, count) after reading ``prompt`` (host side; raises ValueError on a span longer than configured)."""
    mode, count = MODE_TEXT, 0
    for tok in prompt:
        tok = int(tok)
        if mode == MODE_TEXT:
            if tok == vocab.boi:
                mode, count = MODE_IMAGE, 0
            elif tok == vocab.boa:
                mode, count = MODE_AUDIO, 0
        elif (mode == MODE_IMAGE and tok == vocab.eoi) or (mode == MODE_AUDIO and tok == vocab.eoa):
            mode, count = MODE_TEXT, 0
        else:
            count += 1
    limit = {MODE_TEXT: None, MODE_IMAGE: spans.image_tokens,
             MODE_AUDIO: spans.audio_frames * vocab.audio_levels_used}[mode]
    if limit is not None and count > limit:
        raise ValueError(f"prompt {list(prompt)[:8]}... ends inside a span that already holds {count} tokens, "
                         f"more than the {limit} configured (SpanConfig)")
    return mode, count


def null_prompt(vocab: UnifiedVocab, prompt: Sequence[int]) -> list[int]:
    """The default unconditional prompt: <null> followed by the prompt's still-open span (opener + codes)."""
    opener = None
    for i, tok in enumerate(prompt):
        if tok in (vocab.boi, vocab.boa):
            opener = i
        elif tok in (vocab.eoi, vocab.eoa):
            opener = None
    return [vocab.null] + ([int(t) for t in prompt[opener:]] if opener is not None else [])


def _constraint_tables(vocab: UnifiedVocab, spans: SpanConfig) -> dict[str, np.ndarray]:
    """Allowed-id masks (bool [V] each; audio: [n, V])."""
    onehot = lambda i: np.arange(vocab.size) == i  # noqa: E731
    text = vocab.modality_mask(TEXT).copy()
    if spans.image_tokens:
        text |= onehot(vocab.boi)
    if spans.audio_frames:
        text |= onehot(vocab.boa)
    n = vocab.audio_levels_used
    levels = (np.stack([vocab.audio_level_mask(l) for l in range(n)]) if vocab.audio_ids
              else np.zeros((n, vocab.size), bool))
    return {"text": text, "image": vocab.modality_mask(IMAGE), "eoi": onehot(vocab.eoi), "audio_levels": levels,
            "eoa": onehot(vocab.eoa), "valid": vocab.valid_mask()}


def allowed_mask(vocab: UnifiedVocab, spans: SpanConfig, mode: jax.Array, count: jax.Array) -> jax.Array:
    """bool [B, V]: the ids allowed next for each row in state (mode [B], count [B])."""
    t = {k: jnp.asarray(v) for k, v in _constraint_tables(vocab, spans).items()}
    n = vocab.audio_levels_used
    image = jnp.where((count < spans.image_tokens)[:, None], t["image"], t["eoi"])
    audio = jnp.where((count < spans.audio_frames * n)[:, None], t["audio_levels"][count % n], t["eoa"])
    return jnp.where((mode == MODE_IMAGE)[:, None], image,
                     jnp.where((mode == MODE_AUDIO)[:, None], audio, t["text"][None]))


def advance(vocab: UnifiedVocab, mode: jax.Array, count: jax.Array, tok: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The state machine's transition after emitting ``tok`` (all [B])."""
    in_text = mode == MODE_TEXT
    opens_image = in_text & (tok == vocab.boi)
    opens_audio = in_text & (tok == vocab.boa)
    closes = ((mode == MODE_IMAGE) & (tok == vocab.eoi)) | ((mode == MODE_AUDIO) & (tok == vocab.eoa))
    new_mode = jnp.where(opens_image, MODE_IMAGE, jnp.where(opens_audio, MODE_AUDIO,
                                                            jnp.where(closes, MODE_TEXT, mode)))
    new_count = jnp.where(in_text | closes, 0, count + 1)
    return new_mode.astype(jnp.int32), new_count.astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class ModalityConstraint(Constraint):
    """TEAL's modality state machine (module docstring). ``spans.guidance_scale`` is not used here (see
    :class:`Guidance`); build with :meth:`of` so that it does not split compilations."""

    vocab: UnifiedVocab
    spans: SpanConfig = SpanConfig()

    @classmethod
    def of(cls, vocab: UnifiedVocab, spans: SpanConfig) -> ModalityConstraint:
        return cls(vocab, dataclasses.replace(spans, guidance_scale=1.0))

    def init(self, prompts: Sequence[Sequence[int]]) -> SpanState:
        states = np.asarray([prompt_state(self.vocab, p, self.spans) for p in prompts], np.int32).reshape(-1, 2)
        return SpanState(jnp.asarray(states[:, 0]), jnp.asarray(states[:, 1]), jnp.zeros(len(states), jnp.int32))

    def in_span(self, state: SpanState) -> jax.Array:
        """bool [B]: the next token is inside an image/audio span."""
        return state.mode != MODE_TEXT

    def logits(self, state: SpanState, logits: jax.Array) -> jax.Array:
        if self.spans.constrain:
            allowed = allowed_mask(self.vocab, self.spans, state.mode, state.count)
        else:
            allowed = jnp.asarray(self.vocab.valid_mask())[None]
        return jnp.where(allowed, logits, -jnp.inf)

    def advance(self, state: SpanState, token: jax.Array) -> SpanState:
        span_index = jnp.where(state.mode != MODE_TEXT, state.count, 0)  # a span's k-th code is picked at count k
        mode, count = advance(self.vocab, state.mode, state.count, token)
        return SpanState(mode, count, span_index)

    def step_inputs(self, state: SpanState) -> dict[str, jax.Array]:
        return {"span_index": state.span_index}


def guide(cond: jax.Array, uncond: jax.Array, scale, in_span: jax.Array) -> jax.Array:
    """CFG mix ``uncond + scale * (cond - uncond)`` where in_span [B]; cond elsewhere (logits [B, V]). -inf (masked)
    stays -inf (a plain mix would give NaN from inf - inf)."""
    mixed = uncond + scale * (cond - uncond)
    mixed = jnp.where(jnp.isneginf(cond) | jnp.isneginf(uncond), -jnp.inf, mixed)
    return jnp.where(in_span[:, None], mixed, cond)


@flax.struct.dataclass
class GuidanceState:
    scale: jax.Array  # float32 []: traced, so every scale shares one compilation
    gate: Any  # the gate constraint's own state (None without a gate)


@dataclasses.dataclass(frozen=True)
class Guidance(Constraint):
    """Classifier-free guidance over 2B model rows ``[conditional prompts; uncond_prompts]`` (module docstring).

    gate: a constraint with ``in_span(state)`` (a :class:`ModalityConstraint`) whose state machine it tracks on its
    own copy; None mixes at every step. ``scale`` and ``uncond_prompts`` are data, not part of the identity (equal
    gates compile once). Place it before the gate in the constraint tuple: it narrows the rows first.
    """

    gate: Constraint | None = None
    scale: float = dataclasses.field(default=1.0, compare=False)
    uncond_prompts: tuple[tuple[int, ...], ...] = dataclasses.field(default=(), compare=False)
    row_factor = 2

    def model_rows(self, rows: list[list[int]]) -> list[list[int]]:
        if len(self.uncond_prompts) != len(rows):
            raise ValueError(f"{len(self.uncond_prompts)} uncond_prompts for {len(rows)} prompts")
        return rows + [list(p) for p in self.uncond_prompts]

    def init(self, prompts: Sequence[Sequence[int]]) -> GuidanceState:
        gate = self.gate.init(prompts) if self.gate is not None else None
        return GuidanceState(jnp.asarray(self.scale, jnp.float32), gate)

    def logits(self, state: GuidanceState, logits: jax.Array) -> jax.Array:
        b = logits.shape[0] // 2
        in_span = (self.gate.in_span(state.gate) if self.gate is not None else jnp.ones((b,), bool))
        return guide(logits[:b], logits[b:], state.scale, in_span)

    def advance(self, state: GuidanceState, token: jax.Array) -> GuidanceState:
        gate = self.gate.advance(state.gate, token) if self.gate is not None else None
        return GuidanceState(state.scale, gate)

    def widen(self, x: jax.Array) -> jax.Array:
        return jnp.concatenate([x, x])


def extract_spans(vocab: UnifiedVocab, ids: Sequence[int], modality: int) -> list[np.ndarray]:
    """The complete spans of ``modality`` (IMAGE or AUDIO) in one id sequence, as id arrays without the markers.

    Feed them to ``vocab.unified_to_image(span, h, w)`` / ``vocab.unified_to_audio(span)``.
    """
    opener, closer = {IMAGE: (vocab.boi, vocab.eoi), AUDIO: (vocab.boa, vocab.eoa)}[modality]
    out, start = [], None
    for i, tok in enumerate(ids):
        if tok == opener:
            start = i + 1
        elif tok == closer and start is not None:
            out.append(np.asarray(ids[start:i], np.int32))
            start = None
    return out
