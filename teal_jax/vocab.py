"""The unified TEAL vocabulary: one id space for text, special markers, image codes and audio codes.

Layout (offsets grow left to right; every range is contiguous)::

    [0, text_size)                      text ids (the LM's own vocabulary; SentencePiece)
    [special_offset, image_offset)      specials: <boi> <eoi> <boa> <eoa> <null> task markers ... (configurable)
    [image_offset, audio_offset)        image codes 0..K_img-1            (id = image_offset + code)
    [audio_offset, output_size)         audio codes, one range per kept RVQ level
                                        (id = audio_offset + level * K_audio + code)
    [image_in_offset, audio_in_offset)  input-only image ids (0 = none): a semantic tokenizer's codes, or the
                                        positions of continuous features (``image_in_size`` of them)
    [audio_in_offset, used_size)        input-only audio ids (0 = none), the same for audio
    [used_size, size)                   padding ids: never valid; the model masks their logits to -inf

Input-only ranges (TEAL's separate input and output tokenizers per modality, docs/semantic_tokenizers.md): the
condition side of caption / asr is written with the *input* tokenizer's ids, the generated side of t2i / tts with the
output tokenizer's. Input ids have embedding rows but no output head: their logits are -inf like padding, so no
sampler can emit them. :meth:`UnifiedVocab.modality_of` gives them their modality (``IMAGE`` / ``AUDIO``, so
per-modality statistics and modality experts see them as image / audio); ``modality_mask`` and ``valid_mask`` hold
only ids a model can emit. With both input sizes 0 (a config with one tokenizer per modality) the layout, and every
id, are exactly what they were.

``size`` is ``used_size`` rounded up to a multiple of ``pad_multiple`` (128, as Unified-IO 2 does for TPU-friendly
tables). Because every audio level owns its own id range, the level of an audio id is recoverable from the id alone.

Audio flattening (codes ``[frames, levels]`` from a residual-VQ codec -> one id stream):

- ``'interleave'``: all ``audio_num_levels`` levels, frame-major: f0l0 f0l1 ... f0l(L-1) f1l0 ... ; position ``t`` of
  an audio span holds level ``t % L`` of frame ``t // L``.
- ``'first_levels'``: only the first ``audio_keep_levels`` levels (coarse-to-fine RVQ: the first levels carry most of
  the signal), still frame-major over the kept levels; ``audio_keep_levels=1`` gives one id per frame.

The numpy conversions validate their input and raise ``ValueError`` naming the problem; ``modality_of_jax`` and the
``*_offset`` attributes are for traced code (no validation possible under ``jit``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Modality ids (per token, e.g. batch['modality']).
TEXT, SPECIAL, IMAGE, AUDIO, PADDING = 0, 1, 2, 3, 4
MODALITY_NAMES = ("text", "special", "image", "audio", "padding")
SPAN_MODALITIES = MODALITY_NAMES[IMAGE : AUDIO + 1]  # ('image', 'audio'): the modalities a span holds

AUDIO_SCHEMES = ("interleave", "first_levels")
# The one statement of the TEAL task names (data/templates.py lays each out), with the modality of its image/audio
# span ('text': none); each task has its marker among the specials.
TASK_SPANS = {"caption": "image", "t2i": "image", "asr": "audio", "tts": "audio", "lm": "text"}
DEFAULT_SPECIALS = ("<boi>", "<eoi>", "<boa>", "<eoa>", "<null>", *(f"<task:{t}>" for t in TASK_SPANS))
_REQUIRED_SPECIALS = ("<boi>", "<eoi>", "<boa>", "<eoa>", "<null>")


@dataclasses.dataclass(frozen=True)
class UnifiedVocab:
    """Offsets of the unified vocabulary (see the module docstring for the layout).

    text_size: size of the LM's text vocabulary (ids [0, text_size)).
    image_codebook_size: K_img, codes of the image tokenizer (0 = no image modality).
    audio_codebook_size: K_audio, codes per RVQ level of the audio codec (0 = no audio modality).
    audio_num_levels: L, RVQ levels the codec emits per frame.
    audio_scheme: 'interleave' | 'first_levels' (see module docstring).
    audio_keep_levels: levels kept by 'first_levels' (ignored by 'interleave', which keeps all L).
    specials: names of the special tokens, in id order; must contain <boi> <eoi> <boa> <eoa> <null>.
    pad_multiple: the total size is rounded up to a multiple of this.
    image_in_size / audio_in_size: ids of the input-only image / audio tokenizer (k-means codes, or span positions of
      continuous features); 0 = the output tokenizer reads the condition too.
    """

    text_size: int
    image_codebook_size: int
    audio_codebook_size: int = 0
    audio_num_levels: int = 1
    audio_scheme: str = "interleave"
    audio_keep_levels: int = 1
    specials: tuple[str, ...] = DEFAULT_SPECIALS
    pad_multiple: int = 128
    image_in_size: int = 0
    audio_in_size: int = 0

    def __post_init__(self):
        object.__setattr__(self, "specials", tuple(self.specials))
        for name in ("text_size", "image_codebook_size", "audio_codebook_size", "audio_num_levels",
                     "audio_keep_levels", "pad_multiple", "image_in_size", "audio_in_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"vocab.{name}={value!r} must be a non-negative int")
        if self.text_size < 1 or self.pad_multiple < 1 or self.audio_num_levels < 1:
            raise ValueError(f"vocab.text_size={self.text_size}, vocab.pad_multiple={self.pad_multiple} and "
                             f"vocab.audio_num_levels={self.audio_num_levels} must be >= 1")
        if self.audio_scheme not in AUDIO_SCHEMES:
            raise ValueError(f"vocab.audio_scheme={self.audio_scheme!r}: choose one of {AUDIO_SCHEMES}")
        if self.audio_scheme == "first_levels" and not 1 <= self.audio_keep_levels <= self.audio_num_levels:
            raise ValueError(f"vocab.audio_keep_levels={self.audio_keep_levels} must be in "
                             f"[1, audio_num_levels={self.audio_num_levels}] for audio_scheme='first_levels'")
        if len(set(self.specials)) != len(self.specials):
            raise ValueError(f"vocab.specials={self.specials} has duplicates")
        missing = [s for s in _REQUIRED_SPECIALS if s not in self.specials]
        if missing:
            raise ValueError(f"vocab.specials={self.specials} lacks the required {missing}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | Any, **overrides) -> UnifiedVocab:
        """From a ConfigDict/dict, ignoring keys that are not fields; ``overrides`` win (e.g. text_size=)."""
        d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"config.model.vocab has unknown fields {unknown}; known: {sorted(names)}")
        d.update(overrides)
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ---- layout ------------------------------------------------------------------------------------------------
    @property
    def special_offset(self) -> int:
        return self.text_size

    @property
    def num_specials(self) -> int:
        return len(self.specials)

    @property
    def image_offset(self) -> int:
        return self.special_offset + self.num_specials

    @property
    def audio_offset(self) -> int:
        return self.image_offset + self.image_codebook_size

    @property
    def audio_levels_used(self) -> int:
        """Levels per frame in the unified stream (L for 'interleave', audio_keep_levels for 'first_levels')."""
        return self.audio_num_levels if self.audio_scheme == "interleave" else self.audio_keep_levels

    @property
    def audio_ids(self) -> int:
        """Number of audio ids: one range of K_audio per kept level."""
        return self.audio_levels_used * self.audio_codebook_size

    @property
    def output_size(self) -> int:
        """End of the ids a model can emit (text, specials, output image and audio codes)."""
        return self.audio_offset + self.audio_ids

    @property
    def image_in_offset(self) -> int:
        return self.output_size

    @property
    def audio_in_offset(self) -> int:
        return self.image_in_offset + self.image_in_size

    @property
    def used_size(self) -> int:
        return self.audio_in_offset + self.audio_in_size

    @staticmethod
    def _span_modality(modality: int | str) -> int:
        """IMAGE / AUDIO from the id or its name ('image' / 'audio'); anything else raises ValueError."""
        m = MODALITY_NAMES.index(modality) if modality in SPAN_MODALITIES else modality
        if m not in (IMAGE, AUDIO):
            raise ValueError(f"modality={modality!r} must be IMAGE ({IMAGE}) / 'image' or AUDIO ({AUDIO}) / 'audio'")
        return m

    def input_range(self, modality: int | str) -> tuple[int, int]:
        """[start, stop) of the input ids of ``modality`` (IMAGE / 'image' or AUDIO / 'audio'): its input-only range
        when it has one, else its output range (one tokenizer reads and writes)."""
        modality = self._span_modality(modality)
        if modality == IMAGE:
            return ((self.image_in_offset, self.audio_in_offset) if self.image_in_size
                    else (self.image_offset, self.audio_offset))
        return (self.audio_in_offset, self.used_size) if self.audio_in_size else (self.audio_offset, self.output_size)

    @property
    def size(self) -> int:
        """Total (padded) vocabulary size: the model's logit width."""
        return -(-self.used_size // self.pad_multiple) * self.pad_multiple

    @property
    def nontext_size(self) -> int:
        """Ids after the text range that are real tokens (specials + image + audio, output and input)."""
        return self.used_size - self.text_size

    @property
    def head_size(self) -> int:
        """Columns of the non-text output head (specials + output image + output audio)."""
        return self.output_size - self.text_size

    def special_id(self, name: str) -> int:
        try:
            return self.special_offset + self.specials.index(name)
        except ValueError:
            raise ValueError(f"unknown special token {name!r}; vocab.specials={self.specials}") from None

    @property
    def boi(self) -> int:
        return self.special_id("<boi>")

    @property
    def eoi(self) -> int:
        return self.special_id("<eoi>")

    @property
    def boa(self) -> int:
        return self.special_id("<boa>")

    @property
    def eoa(self) -> int:
        return self.special_id("<eoa>")

    @property
    def null(self) -> int:
        return self.special_id("<null>")

    def audio_level_range(self, level: int) -> tuple[int, int]:
        """[start, stop) of the ids of kept audio level ``level``."""
        if not 0 <= level < self.audio_levels_used:
            raise ValueError(f"audio level {level} out of range [0, {self.audio_levels_used})")
        start = self.audio_offset + level * self.audio_codebook_size
        return start, start + self.audio_codebook_size

    def ranges(self) -> dict[int, tuple[int, int]]:
        """Modality -> [start, stop) of its ids a model emits (image/audio: the output tokenizer's; the input-only
        ranges are :meth:`input_range`)."""
        return {TEXT: (0, self.text_size), SPECIAL: (self.special_offset, self.image_offset),
                IMAGE: (self.image_offset, self.audio_offset), AUDIO: (self.audio_offset, self.output_size),
                PADDING: (self.used_size, self.size)}

    # ---- masks (numpy bool [size]) -----------------------------------------------------------------------------
    def modality_mask(self, modality: int) -> np.ndarray:
        """bool [size]: the ids of ``modality`` (TEXT, SPECIAL, IMAGE, AUDIO or PADDING)."""
        if modality not in self.ranges():
            raise ValueError(f"modality={modality!r} is not one of {list(range(len(MODALITY_NAMES)))}")
        start, stop = self.ranges()[modality]
        m = np.zeros(self.size, bool)
        m[start:stop] = True
        return m

    def audio_level_mask(self, level: int) -> np.ndarray:
        """bool [size]: the ids of kept audio level ``level``."""
        start, stop = self.audio_level_range(level)
        m = np.zeros(self.size, bool)
        m[start:stop] = True
        return m

    def valid_mask(self) -> np.ndarray:
        """bool [size]: every id a model can emit (not padding, not an input-only id)."""
        m = np.zeros(self.size, bool)
        m[: self.output_size] = True
        return m

    # ---- validation --------------------------------------------------------------------------------------------
    @staticmethod
    def _as_int_array(x: Any, what: str) -> np.ndarray:
        a = np.asarray(x)
        if a.dtype.kind not in "iu":
            raise ValueError(f"{what}: expected an integer array, got dtype {a.dtype}")
        return a.astype(np.int64)

    @staticmethod
    def _check_range(a: np.ndarray, lo: int, hi: int, what: str) -> None:
        bad = (a < lo) | (a >= hi)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{what}: value {int(a[first])} at index {first} is outside [{lo}, {hi}) "
                             f"({int(bad.sum())} bad entries)")

    # ---- modality of ids ---------------------------------------------------------------------------------------
    def modality_of(self, ids: Any) -> np.ndarray:
        """ids (any shape, ints in [0, size)) -> int32 modality ids of the same shape (PADDING for padding ids)."""
        a = self._as_int_array(ids, "modality_of(ids)")
        self._check_range(a, 0, self.size, "modality_of(ids)")
        return np.asarray(self.modality_of_jax(a, xp=np))

    def modality_of_jax(self, ids: Any, xp=jnp) -> jax.Array:
        """Traceable version of :meth:`modality_of` (no validation). Without input-only ranges: the number of range
        starts at or below id; input-only image / audio ids are IMAGE / AUDIO."""
        ids = xp.asarray(ids)
        out = xp.zeros(ids.shape, xp.int32)
        for start in (self.special_offset, self.image_offset, self.audio_offset, self.output_size):
            out = out + (ids >= start).astype(xp.int32)
        if self.image_in_size or self.audio_in_size:
            out = xp.where((ids >= self.image_in_offset) & (ids < self.audio_in_offset), IMAGE, out)
            out = xp.where((ids >= self.audio_in_offset) & (ids < self.used_size), AUDIO, out)
            out = xp.where(ids >= self.used_size, PADDING, out).astype(xp.int32)
        return out

    # ---- images ------------------------------------------------------------------------------------------------
    def image_to_unified(self, codes: Any) -> np.ndarray:
        """Image codes int [..., h, w] in [0, K_img) -> unified ids int32 [..., h*w] (row-major)."""
        a = self._as_int_array(codes, "image_to_unified(codes)")
        if a.ndim < 2:
            raise ValueError(f"image_to_unified(codes): expected [..., h, w], got shape {a.shape}")
        self._check_range(a, 0, self.image_codebook_size, "image_to_unified(codes)")
        return (a.reshape(a.shape[:-2] + (-1,)) + self.image_offset).astype(np.int32)

    def unified_to_image(self, ids: Any, h: int, w: int) -> np.ndarray:
        """Unified ids int [..., h*w] (image ids only) -> image codes int32 [..., h, w]."""
        a = self._as_int_array(ids, "unified_to_image(ids)")
        if a.ndim < 1 or a.shape[-1] != h * w:
            raise ValueError(f"unified_to_image(ids): expected [..., {h}*{w}={h * w}] ids, got shape {a.shape}")
        self._check_range(a, self.image_offset, self.audio_offset, "unified_to_image(ids) (image id range)")
        return (a - self.image_offset).reshape(a.shape[:-1] + (h, w)).astype(np.int32)

    # ---- audio -------------------------------------------------------------------------------------------------
    def audio_to_unified(self, codes: Any) -> np.ndarray:
        """Codec codes int [..., frames, levels] in [0, K_audio) -> unified ids int32 [..., frames * kept_levels].

        'interleave' needs levels == audio_num_levels; 'first_levels' needs levels >= audio_keep_levels (the rest
        are dropped).
        """
        a = self._as_int_array(codes, "audio_to_unified(codes)")
        if a.ndim < 2:
            raise ValueError(f"audio_to_unified(codes): expected [..., frames, levels], got shape {a.shape}")
        n = self.audio_levels_used
        if self.audio_scheme == "interleave" and a.shape[-1] != self.audio_num_levels:
            raise ValueError(f"audio_to_unified(codes): {a.shape[-1]} levels given, audio_scheme='interleave' "
                             f"needs vocab.audio_num_levels={self.audio_num_levels}")
        if a.shape[-1] < n:
            raise ValueError(f"audio_to_unified(codes): {a.shape[-1]} levels given, the vocab keeps {n}")
        a = a[..., :n]
        self._check_range(a, 0, self.audio_codebook_size, "audio_to_unified(codes)")
        level_offset = self.audio_offset + np.arange(n) * self.audio_codebook_size  # [n]
        return (a + level_offset).reshape(a.shape[:-2] + (-1,)).astype(np.int32)

    def unified_to_audio(self, ids: Any) -> np.ndarray:
        """Unified ids int [..., frames * kept_levels] -> codes int32 [..., frames, kept_levels].

        Position t must hold an id of level t % kept_levels (the order ``audio_to_unified`` writes).
        """
        a = self._as_int_array(ids, "unified_to_audio(ids)")
        n = self.audio_levels_used
        if a.ndim < 1 or a.shape[-1] % n:
            raise ValueError(f"unified_to_audio(ids): length {a.shape[-1] if a.ndim else None} is not a multiple "
                             f"of the {n} kept audio levels")
        frames = a.reshape(a.shape[:-1] + (-1, n))
        codes = frames - (self.audio_offset + np.arange(n) * self.audio_codebook_size)
        self._check_range(codes, 0, self.audio_codebook_size,
                          "unified_to_audio(ids) (position t must hold an id of audio level t % kept_levels)")
        return codes.astype(np.int32)

    def audio_level_of(self, ids: Any) -> np.ndarray:
        """Audio ids (any shape) -> their kept level index."""
        a = self._as_int_array(ids, "audio_level_of(ids)")
        self._check_range(a, self.audio_offset, self.output_size, "audio_level_of(ids) (audio id range)")
        return ((a - self.audio_offset) // self.audio_codebook_size).astype(np.int32)

    # ---- input-only ids ----------------------------------------------------------------------------------------
    def input_to_unified(self, modality: int | str, codes: Any) -> np.ndarray:
        """Codes of the input-only tokenizer of ``modality`` (IMAGE / 'image', AUDIO / 'audio'), int ``[..., n]``
        (already flat: image cells row-major, audio frames in order) in [0, size of its range) -> unified ids int32
        ``[..., n]``. For continuous features the codes are the span positions ``arange(n)``."""
        modality = self._span_modality(modality)
        if (modality == IMAGE and not self.image_in_size) or (modality == AUDIO and not self.audio_in_size):
            raise ValueError(f"input_to_unified: the vocabulary has no input-only "
                             f"{MODALITY_NAMES[modality]} range (vocab.{MODALITY_NAMES[modality]}_in_size=0)")
        lo, hi = self.input_range(modality)
        a = self._as_int_array(codes, "input_to_unified(codes)")
        self._check_range(a, 0, hi - lo, "input_to_unified(codes)")
        return (a + lo).astype(np.int32)

    # ---- text --------------------------------------------------------------------------------------------------
    def check_text(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Validates text ids (int32 copy)."""
        a = self._as_int_array(ids, "check_text(ids)")
        self._check_range(a, 0, self.text_size, "check_text(ids) (text id range)")
        return a.astype(np.int32)
