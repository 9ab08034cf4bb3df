"""TEAL task templates: the one statement of how each task is laid out in unified ids.

Training examples, generation prompts and evaluation all build their sequences here, so they cannot drift apart.
Every example is a condition followed by a target; the loss is on the target span only (``loss_mask`` 1 on the
tokens to be predicted)::

    task     condition (loss 0)                        target (loss 1)
    caption  bos <task:caption> <boi> image <eoi>      text eos
    t2i      bos <task:t2i> text <boi>                 image <eoi>
    asr      bos <task:asr> <boa> audio <eoa>          text eos
    tts      bos <task:tts> text <boa>                 audio <eoa>
    lm       bos                                       text eos

``text`` is the text tokenizer's ids; ``image``/``audio`` are *unified* ids (``vocab.image_to_unified`` /
``vocab.audio_to_unified``). The span openers ``<boi>``/``<boa>`` end the condition: a generation prompt is exactly the
condition, and the constrained sampler (``teal_jax.inference.constraints``) starts inside the span.

Condition dropout (classifier-free guidance): a t2i/tts example whose condition is dropped becomes
``<null> <boi> image <eoi>`` (or ``<null> <boa> audio <eoa>``): precisely ``constraints.null_prompt`` of its prompt
followed by its target, so the unconditional rows the sampler builds are ones the model was trained on.

Reasoning prompts (TEAL's MNIST generation with reasoning; the task stream's ``REASONING_TASKS`` ``reason_t2i`` /
``reason_tts``): the text of a t2i/tts example asks for a digit, e.g.
``the sum of three and four is`` -> an image of 7 (t2i) or speech of "seven" (tts); the task marker and the span
opener say which modality answers. The prompt ends where the text LM's corpus (``teal_jax.data.text_corpus``: "the
sum of three and four is seven.") puts the answer, so the frozen LM's next-token state already holds it: measured on
the demo's text LM, the answer is its next word after "... is" 15 times in 15, and 1 time in 15 after "draw the sum
of three and four". Adaptation only has to connect that state to the image/audio span. ``REASONING_EVAL_PAIRS`` are
never used for training; ``REASONING_VALIDATION_PAIRS`` (a subset of the training pairs) serve for choosing sampling
settings, so the held-out pairs are touched only by the final evaluation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from teal_jax.vocab import SPAN_MODALITIES, TASK_SPANS, UnifiedVocab

# The task names and their span modalities are stated once, in teal_jax/vocab.py (TASK_SPANS); the layouts are here.
TASKS = tuple(TASK_SPANS)
SPAN_TASKS = tuple(t for t in TASKS if TASK_SPANS[t] != "text")  # caption t2i asr tts: an image/audio span each
# condition = an image/audio span (an input-only tokenizer's ids when there is one)
CONDITION_TASKS = ("caption", "asr")
GENERATION_TASKS = ("t2i", "tts")  # condition = text, target = a modality span: condition dropout applies
# Reasoning tasks of the task stream: a t2i/tts example whose text is a sum question (see sum_question).
REASONING_TASKS = {"reason_t2i": "t2i", "reason_tts": "tts"}  # task -> its layout
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# (a, b) with a + b <= 9: every ordered pair of digits whose sum is a digit (55 pairs). A fixed, spread-out subset is
# held out of training and used only to evaluate reasoning prompts.
SUM_PAIRS = tuple((a, b) for a in range(10) for b in range(10) if a + b <= 9)
REASONING_EVAL_PAIRS = ((0, 7), (1, 5), (2, 2), (2, 6), (3, 0), (3, 4), (4, 1), (4, 5), (5, 3), (6, 1), (6, 3),
                        (7, 2), (8, 1), (1, 8), (0, 9))
REASONING_TRAIN_PAIRS = tuple(p for p in SUM_PAIRS if p not in REASONING_EVAL_PAIRS)


def _round_robin(pairs: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """``pairs`` reordered round-robin over their answers 0..9 (the middle pair of each answer first), so that any
    prefix is spread over the answer digits."""
    groups = [sorted(p for p in pairs if p[0] + p[1] == d) for d in range(10)]
    out = []
    while any(groups):
        for g in groups:
            if g:
                out.append(g.pop(len(g) // 2))
    return tuple(out)


# The training pairs in the order validation (choosing sampling settings such as the guidance scale) takes them:
# round-robin over the answers, so the first 10 ask for every digit once. They are training prompts (the model has
# seen their text): validation chooses settings with them and the held-out pairs alone judge the model.
REASONING_VALIDATION_PAIRS = _round_robin(REASONING_TRAIN_PAIRS)


def sum_question(a: int, b: int, modality: str) -> str:
    """The reasoning prompt whose answer is the digit a + b, e.g. 'the sum of three and four is' (-> 7).

    It ends in 'is', where the text corpus states the answer ('the sum of three and four is seven.'), so the frozen
    LM's state at the end of the prompt holds the answer. The text is the same for both modalities: the task marker
    (``<task:t2i>`` / ``<task:tts>``) and the span opener say whether an image or speech answers; ``modality`` is
    still checked ('image' or 'audio') so that a caller's mistake is caught."""
    if not (0 <= a <= 9 and 0 <= b <= 9 and a + b <= 9):
        raise ValueError(f"sum_question: {a} + {b} is not a digit")
    if modality not in SPAN_MODALITIES:
        raise ValueError(f"sum_question: modality={modality!r}, expected 'image' or 'audio'")
    return f"the sum of {DIGITS[a]} and {DIGITS[b]} is"


def layout(task: str) -> str:
    """The template a task is laid out with: itself, or the t2i/tts layout of a reasoning task."""
    return REASONING_TASKS.get(task, task)


Example = tuple[list[int], list[float]]  # (unified ids, loss mask: 1.0 on target tokens)


@dataclasses.dataclass(frozen=True)
class Templates:
    """Task layouts over one vocabulary; ``bos``/``eos`` are the text tokenizer's ids."""

    vocab: UnifiedVocab
    bos: int
    eos: int

    def __post_init__(self):
        for name in ("bos", "eos"):
            v = getattr(self, name)
            if not 0 <= v < self.vocab.text_size:
                raise ValueError(f"Templates.{name}={v} is not a text id [0, {self.vocab.text_size})")

    def _check(self, ids: Sequence[int], modality: str, what: str, condition: bool = False) -> list[int]:
        """``ids`` must lie in the modality's output range; a ``condition`` span in its input range (the input-only
        tokenizer's ids when the vocabulary has them, else the output range: ``vocab.input_range``)."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        v = self.vocab
        lo, hi = {"text": (0, v.text_size), "image": (v.image_offset, v.audio_offset),
                  "audio": (v.audio_offset, v.output_size)}[modality]
        if condition and modality != "text":
            lo, hi = v.input_range(modality)
        bad = [i for i in ids if not lo <= i < hi]
        if bad:
            raise ValueError(f"{what}: {modality} ids must be in [{lo}, {hi}), got {bad[:5]}")
        return ids

    def marker(self, task: str) -> int:
        return self.vocab.special_id(f"<task:{task}>")

    # ---- prompts (the condition; what generation is given) ---------------------------------------------------
    def prompt(self, task: str, condition: Sequence[int]) -> list[int]:
        """The condition of ``task`` for ``condition`` ids (text ids for t2i/tts, unified image/audio ids for
        caption/asr, text ids for lm)."""
        v = self.vocab
        if task == "caption":
            return [self.bos, self.marker(task), v.boi, *self._check(condition, "image", "caption image", True), v.eoi]
        if task == "asr":
            return [self.bos, self.marker(task), v.boa, *self._check(condition, "audio", "asr audio", True), v.eoa]
        if task == "t2i":
            return [self.bos, self.marker(task), *self._check(condition, "text", "t2i text"), v.boi]
        if task == "tts":
            return [self.bos, self.marker(task), *self._check(condition, "text", "tts text"), v.boa]
        if task == "lm":
            return [self.bos, *self._check(condition, "text", "lm text")]
        raise ValueError(f"unknown task {task!r}; known: {TASKS}")

    def null_prompt(self, task: str) -> list[int]:
        """The unconditional prompt of a generation task (= ``inference.constraints.null_prompt`` of its prompt)."""
        if task not in GENERATION_TASKS:
            raise ValueError(f"null_prompt: task {task!r} has no unconditional form; only {GENERATION_TASKS}")
        return [self.vocab.null, self.vocab.boi if task == "t2i" else self.vocab.boa]

    # ---- targets -----------------------------------------------------------------------------------------------
    def target(self, task: str, ids: Sequence[int]) -> list[int]:
        """The target span of ``task``: text ids + eos, or unified image/audio ids + the span closer."""
        v = self.vocab
        if task in ("caption", "asr", "lm"):
            return [*self._check(ids, "text", f"{task} target"), self.eos]
        if task == "t2i":
            return [*self._check(ids, "image", "t2i target"), v.eoi]
        if task == "tts":
            return [*self._check(ids, "audio", "tts target"), v.eoa]
        raise ValueError(f"unknown task {task!r}; known: {TASKS}")

    def example(self, task: str, condition: Sequence[int], target: Sequence[int], *,
                drop_condition: bool = False) -> Example:
        """A training example ``(ids, loss_mask)``. ``drop_condition`` (t2i/tts only) replaces the condition by
        the null prompt. For ``lm``, ``condition`` is ignored-but-empty and every text token is a target."""
        if task == "lm":
            if len(condition):
                raise ValueError("lm examples have no condition; pass the text as the target")
            cond = [self.bos]
        elif drop_condition:
            cond = self.null_prompt(task)
        else:
            cond = self.prompt(task, condition)
        tgt = self.target(task, target)
        return cond + tgt, [0.0] * len(cond) + [1.0] * len(tgt)

    def span_example(self, task: str, text: Sequence[int], span: Sequence[int], *,
                     drop_condition: bool = False) -> Example:
        """The example of an image/audio task from its text ids and its span's unified ids, whichever is the
        condition: caption/asr predict the text from the span, t2i/tts the span from the text (``drop_condition``
        applies to those only). A reasoning task takes its layout's (:func:`layout`)."""
        task = layout(task)
        if task not in SPAN_TASKS:
            raise ValueError(f"span_example: task {task!r} has no image/audio span; span tasks: {SPAN_TASKS}")
        if task in GENERATION_TASKS:
            return self.example(task, text, span, drop_condition=drop_condition)
        return self.example(task, span, text, drop_condition=drop_condition)

    def parse_text(self, generated: Sequence[int]) -> list[int]:
        """The text ids of a generated text target: everything before the first eos (or the first non-text id)."""
        out = []
        for t in generated:
            t = int(t)
            if t == self.eos or not 0 <= t < self.vocab.text_size:
                break
            out.append(t)
        return out


def audio_span(seconds: float, sample_rate: int, hop: int) -> tuple[int, int]:
    """(frames, samples) of one audio span: every clip is start-aligned and zero-padded or cut to ``samples``
    (= frames * hop) before encoding, so every span holds exactly ``frames`` codec frames, which is what
    constrained TTS decoding must produce."""
    if seconds <= 0 or sample_rate <= 0 or hop <= 0:
        raise ValueError(f"audio_span: seconds={seconds}, sample_rate={sample_rate}, hop={hop} must be > 0")
    frames = max(1, int(round(seconds * sample_rate / hop)))
    return frames, frames * hop


def fit_audio(waveform: np.ndarray, samples: int) -> np.ndarray:
    """[..., n] -> [..., samples]: cut or zero-padded at the end (see :func:`audio_span`)."""
    w = np.asarray(waveform)
    n = w.shape[-1]
    if n >= samples:
        return w[..., :samples]
    pad = [(0, 0)] * (w.ndim - 1) + [(0, samples - n)]
    return np.pad(w, pad)
