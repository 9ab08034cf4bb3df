"""The synthetic TEAL task stream (``data.kind='synthetic'``): class-coded toy examples for tests and smoke runs.

No dataset and no tokenizer: class ``c`` in ``[0, num_classes)`` is named by two text ids ``(1 + c,
1 + num_classes + c)``; its "image" is the code pattern ``(7c + i*w + j) mod K_img`` over an ``image_shape`` grid and
its "audio" ``(5c + 3f + l) mod K_audio`` over ``audio_frames`` frames and every codec level, with a ``code_noise``
fraction of the codes replaced by random ones. Examples are the real task layouts
(:class:`teal_jax.data.templates.Templates` with bos = text id 0 and eos = the last text id: neither is a class
word) packed by the task stream's own packer
(:func:`teal_jax.data.packing.pack_drawn_examples`), so a synthetic run trains on exactly the sequences real task
data would give it, condition dropout (``<null>`` prompts) included.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from teal_jax.data import templates as templates_lib
from teal_jax.data.iterator import IndexedIterator
from teal_jax.data.packing import pack_drawn_examples
from teal_jax.vocab import UnifiedVocab

TASKS = templates_lib.SPAN_TASKS  # caption t2i asr tts: every task with an image/audio span


class SyntheticTealTasks(IndexedIterator):
    """Packed rows of synthetic task examples; batch ``i`` is a pure function of ``(seed, process_index, i)``.

    Args:
      vocab: the unified vocabulary; image tasks are left out when it has no image codes, audio tasks when it has
        no audio ids.
      data: ``config.data`` with ``image_shape`` (h, w), ``audio_frames``, ``num_classes``, ``tasks`` (names from
        :data:`TASKS`, drawn uniformly), ``code_noise`` and ``cond_dropout`` (probability that a t2i/tts condition
        becomes ``<null>``).
      batch_size, seq_len: rows are ``[batch_size, seq_len]`` (``seq_len`` here is the row length, i.e.
        ``config.data.seq_len + 1``).
      seed, process_index: what the batches are a function of (with the batch index).

    Batches: ``tokens``, ``loss_mask``, ``segment_ids``, ``positions``, ``modality``, as
    :class:`teal_jax.data.teal.task_stream.TealTaskStream`'s. A row closes at the first drawn example that does not
    fit (``max_tries=1``). ``last_draws``: one dict per example of the last batch with ``row``, ``segment``, ``task``,
    ``label`` (the class) and ``dropped``. Raises ValueError for an unknown task, a vocabulary with none of the
    tasks' modalities, a text vocabulary too small for ``num_classes``, or an example longer than a row.
    """

    def __init__(self, vocab: UnifiedVocab, data: ml_collections.ConfigDict, *, batch_size: int, seq_len: int,
                 seed: int, process_index: int):
        self.vocab, self.batch_size, self.seq_len = vocab, batch_size, seq_len
        self.h, self.w = (int(x) for x in data.image_shape)
        self.frames = int(data.audio_frames)
        self.num_classes = int(data.num_classes)
        self.noise = float(data.code_noise)
        self.dropout = float(data.cond_dropout)
        tasks = tuple(data.tasks)
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"config.data.tasks has unknown tasks {unknown}; choose from {TASKS}")
        spans = templates_lib.TASK_SPANS
        if not vocab.image_codebook_size:
            tasks = tuple(t for t in tasks if spans[t] != "image")
        if not vocab.audio_ids:
            tasks = tuple(t for t in tasks if spans[t] != "audio")
        if not tasks:
            raise ValueError("config.data.tasks leaves no task the vocabulary supports")
        self.tasks = tasks
        if 2 * self.num_classes + 2 > vocab.text_size:
            raise ValueError(f"config.data.num_classes={self.num_classes} needs text_size >= "
                             f"{2 * self.num_classes + 2}, got {vocab.text_size}")
        self.templates = templates_lib.Templates(vocab, bos=0, eos=vocab.text_size - 1)
        longest = max(len(self.templates.span_example(t, self._words(0), self._span(t, 0, None))[0])
                      for t in self.tasks)
        if longest > seq_len:
            raise ValueError(f"config.data.seq_len={seq_len - 1}: a synthetic example needs {longest - 1}")
        self.seed, self.process_index, self.index = seed, process_index, 0
        self.last_draws: list[dict[str, Any]] = []

    def _words(self, c: int) -> list[int]:
        """The two text ids that name class ``c``."""
        return [1 + c, 1 + self.num_classes + c]

    def _span(self, task: str, c: int, rng: np.random.Generator | None) -> list[int]:
        """Unified ids of class ``c``'s image (caption/t2i) or audio (asr/tts) codes; noisy when ``rng`` is given."""
        v = self.vocab

        def noisy(codes, k):
            if rng is None:
                return codes
            flip = rng.random(codes.shape) < self.noise
            return np.where(flip, rng.integers(0, k, codes.shape), codes)

        if templates_lib.TASK_SPANS[task] == "image":
            i, j = np.meshgrid(np.arange(self.h), np.arange(self.w), indexing="ij")
            codes = noisy((7 * c + i * self.w + j) % v.image_codebook_size, v.image_codebook_size)
            return v.image_to_unified(codes).tolist()
        f, lv = np.meshgrid(np.arange(self.frames), np.arange(v.audio_num_levels), indexing="ij")
        codes = noisy((5 * c + 3 * f + lv) % v.audio_codebook_size, v.audio_codebook_size)
        return v.audio_to_unified(codes).tolist()

    def _example(self, rng: np.random.Generator) -> tuple[list[int], list[float], dict[str, Any]]:
        """One drawn example: its task, its class, its codes' noise, then (t2i/tts) whether the condition drops."""
        task = self.tasks[rng.integers(len(self.tasks))]
        c = int(rng.integers(self.num_classes))
        span = self._span(task, c, rng)
        drop = bool(rng.random() < self.dropout) if task in templates_lib.GENERATION_TASKS else False
        toks, mask = self.templates.span_example(task, self._words(c), span, drop_condition=drop)
        return toks, mask, {"task": task, "label": c, "dropped": drop}

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((self.seed, self.process_index, self.index))
        self.index += 1
        out, self.last_draws = pack_drawn_examples(lambda: self._example(rng), self.batch_size, self.seq_len,
                                                   max_tries=1)
        out["modality"] = self.vocab.modality_of(out["tokens"])
        return out

