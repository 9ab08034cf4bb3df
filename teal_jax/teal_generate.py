"""Sampling from a TealLM: KV cache inside ``jax.jit`` (``lax.while_loop``), modality constraints, guidance.

Modality-constrained decoding is a per-example state machine (mode, count) advanced after every token:

    text mode   : allowed = text ids, plus <boi> (if image spans are enabled) and <boa> (if audio spans are)
    <boi> seen  : image mode; the next ``image_tokens`` (= h*w) tokens may only be image ids, then <eoi> is forced
    <boa> seen  : audio mode; step t of the span may only be an id of audio level t % n (n = kept levels: the order
                  the vocabulary's frame-major flattening implies), ``audio_frames * n`` of them, then <eoa> forced
    <eoi>/<eoa> : back to text mode

The state at the start comes from the prompt (a prompt ending in ``... <boi>`` starts inside an image span), so
text-to-image is "prompt = condition + <boi>", captioning is "prompt = <boi> image <eoi> + task marker".

Classifier-free guidance (image and audio spans only): the conditional and the unconditional prompts run as one
batch of 2B rows; inside a span the sampled logits are ``uncond + scale * (cond - uncond)`` and both rows receive the
sampled token. The default unconditional prompt is ``[<null>] + (the prompt's open span, if any)``: training must
drop the condition the same way (replace it by ``<null>``) for the guidance to mean anything.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from teal_jax.generate import SamplingConfig, filter_logits, left_pad
from teal_jax.models.teal import TealConfig, TealLM
from teal_jax.vocab import AUDIO, IMAGE, TEXT, UnifiedVocab

MODE_TEXT, MODE_IMAGE, MODE_AUDIO = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class SpanConfig:
    """image_tokens: codes per image span (h*w; 0 disables image spans); audio_frames: frames per audio span (0
    disables audio spans); constrain: apply the modality masks (False: any valid id, for debugging);
    guidance_scale: CFG scale inside image/audio spans."""

    image_tokens: int = 0
    audio_frames: int = 0
    constrain: bool = True
    guidance_scale: float = 1.0

    def __post_init__(self):
        if self.image_tokens < 0 or self.audio_frames < 0:
            raise ValueError(f"SpanConfig.image_tokens={self.image_tokens} and audio_frames={self.audio_frames} "
                             "must be >= 0")


def prompt_state(vocab: UnifiedVocab, prompt: Sequence[int], spans: SpanConfig) -> tuple[int, int]:
    """(mode, count) after reading ``prompt`` (host side; raises on a malformed span)."""
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
    """bool [B, V]: the ids allowed next for each example in state (mode [B], count [B])."""
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


def guide(cond: jax.Array, uncond: jax.Array, scale: float, in_span: jax.Array) -> jax.Array:
    """CFG mix ``uncond + scale * (cond - uncond)`` where in_span [B]; cond elsewhere. -inf (masked) stays -inf
    (a plain mix would give NaN from inf - inf)."""
    mixed = uncond + scale * (cond - uncond)
    mixed = jnp.where(jnp.isneginf(cond) | jnp.isneginf(uncond), -jnp.inf, mixed)
    return jnp.where(in_span[:, None], mixed, cond)


def init_cache(model: TealLM, batch_size: int):
    """A zeroed KV cache for a decode-mode TealLM, without materialising parameters."""
    tokens = jnp.zeros((batch_size, 1), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, tokens, tokens))["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


@functools.partial(jax.jit, static_argnames=("config", "sampling", "spans", "guided"))
def _sample_jit(params, tokens, segments, positions, mode, count, rng, scale, *, config: TealConfig,
                sampling: SamplingConfig, spans: SpanConfig, guided: bool):
    """``scale``: the guidance scale, traced (``spans.guidance_scale`` is ignored), so trying several scales
    compiles the sampler once."""
    rows = tokens.shape[0]  # 2B with guidance: [cond rows; uncond rows]
    b = rows // 2 if guided else rows
    vocab = config.vocab
    model = TealLM(config, decode=True)
    logits, mut = model.apply({"params": params, "cache": init_cache(model, rows)}, tokens, positions, segments,
                              mutable=["cache"])
    valid = jnp.asarray(vocab.valid_mask())

    def pick(mode, count, logits, key):
        if guided:
            logits = guide(logits[:b], logits[b:], scale, mode != MODE_TEXT)
        allowed = allowed_mask(vocab, spans, mode, count) if spans.constrain else valid[None]
        logits = jnp.where(allowed, logits, -jnp.inf)
        if sampling.temperature == 0:
            return jnp.argmax(logits, -1).astype(jnp.int32)
        filtered = filter_logits(logits, sampling.temperature, sampling.top_k, sampling.top_p)
        filtered = jnp.where(allowed, filtered, -jnp.inf)  # filter_logits' floor value must not revive masked ids
        return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)

    def cond(carry):
        step, *_, done = carry
        return (step < sampling.max_new_tokens) & ~jnp.all(done)

    def body(carry):
        step, cache, logits, mode, count, pos, out, key, done = carry
        key, sub = jax.random.split(key)
        tok = pick(mode, count, logits, sub)
        tok = jnp.where(done, sampling.pad_id, tok)
        out = out.at[:, step].set(tok)
        span_index = jnp.where(mode != MODE_TEXT, count, 0)  # a span's k-th code is picked at count k
        mode, count = advance(vocab, mode, count, tok)
        if sampling.eos_id is not None:
            done = done | (tok == sampling.eos_id)
        feed = jnp.concatenate([tok, tok]) if guided else tok
        if guided:
            span_index = jnp.concatenate([span_index, span_index])
        logits, mut = model.apply({"params": params, "cache": cache}, feed[:, None], pos[:, None],
                                  jnp.ones((rows, 1), jnp.int32), span_index[:, None], mutable=["cache"])
        return step + 1, mut["cache"], logits[:, -1], mode, count, pos + 1, out, key, done

    out = jnp.full((b, sampling.max_new_tokens), sampling.pad_id, jnp.int32)
    carry = (jnp.array(0), mut["cache"], logits[:, -1], mode, count, positions[:, -1] + 1, out, rng,
             jnp.zeros((b,), bool))
    return jax.lax.while_loop(cond, body, carry)[6]


def sample(config: TealConfig, params, prompts: Sequence[Sequence[int]], sampling: SamplingConfig,
           spans: SpanConfig = SpanConfig(), rng: jax.Array | None = None,
           uncond_prompts: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """Generates after each unified-id prompt -> int32 [B, sampling.max_new_tokens] (pad_id after eos_id).

    ``params``: TealLM params (unboxed). Guidance runs when ``spans.guidance_scale != 1`` or ``uncond_prompts`` is
    given (default unconditional prompts: :func:`null_prompt`). Set ``sampling.eos_id = vocab.eoi`` to stop after
    one image.
    """
    vocab = config.vocab
    for i, p in enumerate(prompts):
        bad = [int(t) for t in p if not 0 <= int(t) < vocab.used_size]
        if bad:
            raise ValueError(f"prompts[{i}] has ids outside the vocabulary [0, {vocab.used_size}): {bad[:5]}")
    states = np.asarray([prompt_state(vocab, p, spans) for p in prompts], np.int32).reshape(-1, 2)
    guided = uncond_prompts is not None or spans.guidance_scale != 1.0
    rows = list(prompts)
    if guided:
        uncond = [null_prompt(vocab, p) for p in prompts] if uncond_prompts is None else list(uncond_prompts)
        if len(uncond) != len(prompts):
            raise ValueError(f"{len(uncond)} uncond_prompts for {len(prompts)} prompts")
        rows += uncond
    tokens, segments, positions = left_pad(rows, sampling.pad_id, multiple=16)  # few distinct compiled shapes
    need = -(-(tokens.shape[1] + sampling.max_new_tokens) // 64) * 64  # round up: fewer recompilations
    cfg = dataclasses.replace(config, lm=dataclasses.replace(config.lm, max_decode_len=need))
    rng = jax.random.key(0) if rng is None else rng
    scale = jnp.asarray(spans.guidance_scale, jnp.float32)
    static_spans = dataclasses.replace(spans, guidance_scale=1.0)  # the scale is traced: one compilation for all
    out = _sample_jit(params, tokens, segments, positions, jnp.asarray(states[:, 0]), jnp.asarray(states[:, 1]),
                      rng, scale, config=cfg, sampling=sampling, spans=static_spans, guided=guided)
    return np.asarray(out)


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
