"""The packed multi-task stream of TEAL training: :class:`TealTaskStream`, a checkpointable ``DataIterator``.

Each row of ``seq_len + 1`` tokens packs whole examples of the tasks in ``config.data.tasks`` (weights): ``caption``
/ ``t2i`` from image token records, ``asr`` / ``tts`` from audio token records
(:mod:`teal_jax.data.teal.token_dataset`), ``lm`` from the base LM's text documents (the tfds dataset its data
preparation wrote, :mod:`teal_jax.data.lm`), ``reason_t2i`` / ``reason_tts``: ``templates.sum_question(a, b, ...)``
whose target is a labelled record of the digit ``a + b``. Every example is built by
:class:`teal_jax.data.templates.Templates` and placed by :func:`teal_jax.data.packing.pack_drawn_examples`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from teal_jax.data import templates as templates_lib
from teal_jax.data.iterator import IndexedIterator
from teal_jax.data.packing import pack_drawn_examples
from teal_jax.data.teal.config import DROPPABLE_TASKS, LOSS_NORMALIZATIONS, TASKS, task_modality, task_weights
from teal_jax.data.teal.sources import as_text
from teal_jax.vocab import UnifiedVocab


@dataclasses.dataclass
class _Records:
    """One modality's records of this host: positions into the host shard, their labels and text ids."""

    source: Sequence[dict[str, Any]]  # the host shard (grain MapDataset slice)
    indices: np.ndarray  # int64 [n]: index of each shard record in the full split
    labels: np.ndarray  # int32 [n]
    texts: list[list[list[int]]]  # per record: one id list per caption line
    with_text: np.ndarray  # positions with at least one caption line
    by_label: dict[int, np.ndarray]  # digit -> positions with that label


class TealTaskStream(IndexedIterator):
    """Packed rows of TEAL task examples; batch ``i`` is a pure function of ``(seed, process_index, i)``.

    Args:
      vocab: the unified vocabulary (its sizes must match the tokenizers that made the token datasets).
      text_tokenizer: a :class:`teal_jax.tokenizers.text.TextTokenizer` (bos/eos and the text ids).
      tasks: task -> weight (``TASKS``; weight 0 = off). Each example's task is drawn with these weights.
      split: 'train' or 'eval'. 'eval' must be given the held-out records (token split 'test', the LM's 'eval'
        split); its reasoning prompts use ``REASONING_EVAL_PAIRS`` (train: ``REASONING_TRAIN_PAIRS``) and no
        condition is dropped.
      batch_size, seq_len: rows are ``[batch_size, seq_len + 1]``.
      image, audio: token records of this split (``{'codes', 'label', 'text', ...}``, e.g.
        :func:`teal_jax.data.teal.token_dataset.token_source`).
      lm_docs: text documents of this split (``{'text': ...}``, the LM data's tfds dataset).
      cond_dropout: probability (train split) that a t2i/tts/reasoning condition becomes ``<null>``.
      process_index, process_count: host p of P draws only from records p, p + P, ... of each source.
      max_tries: draws that did not fit a row's remaining space before the row is closed (padded).
      loss_normalization: 'token' (every target token weighs 1) or 'example' (each target token of an example
        weighs 1 / its number of target tokens, so every example weighs the same: short text answers are not
        drowned by long image/audio spans in the shared embedding rows); 'example' adds ``loss_weight``.

    Batches: ``tokens`` int32, ``loss_mask`` float32 (1 on target tokens), ``segment_ids`` int32 (1, 2, ... per
    example; 0 on padding), ``positions`` int32 (restarting at 0 per example), ``modality`` int32, all
    ``[batch_size, seq_len + 1]``. ``last_draws`` lists what the last batch holds: one dict per example with
    ``row``, ``segment``, ``task``, ``index`` (the record's position in its token split, i.e. ``source[index]``;
    for lm the document's position in its split), ``pair`` (reasoning) and ``dropped`` (condition dropout).

    Input-only tokenizers (``image_in`` / ``audio_in``: token records of the same source in the same order, made by
    an input-only tokenizer; ``in_features[m]``: they hold continuous features): the condition of ``caption`` /
    ``asr`` is written with their ids (``vocab.input_to_unified``; for features the span positions ``0..n-1``) and
    the batch gains ``features_image`` / ``features_audio`` float32 ``[batch_size, seq_len + 1, D]``: each
    condition's features at its input ids, 0 elsewhere. Generation targets (t2i, tts, reasoning) keep the output
    tokenizer's codes.

    Examples never exceed a row except lm documents, which are cut to the row (their prefix); any other example
    that cannot fit raises ValueError at construction.
    """

    def __init__(self, *, vocab: UnifiedVocab, text_tokenizer: Any, tasks: Mapping[str, float], split: str,
                 batch_size: int, seq_len: int, seed: int, image: Sequence[dict[str, Any]] | None = None,
                 audio: Sequence[dict[str, Any]] | None = None, lm_docs: Sequence[dict[str, Any]] | None = None,
                 cond_dropout: float = 0.1, process_index: int = 0, process_count: int = 1, max_tries: int = 4,
                 loss_normalization: str = "token", image_in: Sequence[dict[str, Any]] | None = None,
                 audio_in: Sequence[dict[str, Any]] | None = None, in_features: Mapping[str, bool] | None = None):
        if split not in ("train", "eval"):
            raise ValueError(f"split={split!r}: choose 'train' or 'eval'")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count})")
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"config.data.seq_len={seq_len} and batch_size={batch_size} must be >= 1")
        if not 0.0 <= cond_dropout <= 1.0:
            raise ValueError(f"config.data.cond_dropout={cond_dropout} must be in [0, 1]")
        tok = text_tokenizer
        if tok.vocab_size > vocab.text_size:
            raise ValueError(f"the text tokenizer {getattr(tok, 'path', '')} has {tok.vocab_size} pieces but the "
                             f"model's text vocabulary (config.model.lm.vocab_size) has {vocab.text_size}")
        self.vocab, self.tok, self.split = vocab, tok, split
        self.templates = templates_lib.Templates(vocab, tok.bos_id, tok.eos_id)
        self.batch_size, self.seq_len, self.row = int(batch_size), int(seq_len), int(seq_len) + 1
        self.seed, self.process_index, self.process_count = int(seed), int(process_index), int(process_count)
        self.dropout = float(cond_dropout) if split == "train" else 0.0
        if loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(f"config.data.loss_normalization={loss_normalization!r}: choose one of "
                             f"{LOSS_NORMALIZATIONS}")
        self.loss_normalization = loss_normalization
        self.max_tries = int(max_tries)
        weights = task_weights(tasks)
        unknown = sorted(set(weights) - set(TASKS))
        if unknown:
            raise ValueError(f"config.data.tasks has unknown tasks {unknown}; known: {TASKS}")
        bad = {t: w for t, w in weights.items() if not np.isfinite(w) or w < 0}
        if bad:
            raise ValueError(f"config.data.tasks weights must be finite and >= 0, got {bad}")
        self.tasks = tuple(t for t in TASKS if weights.get(t, 0.0) > 0)
        if not self.tasks:
            raise ValueError("config.data.tasks: every task weight is 0")
        p = np.asarray([weights[t] for t in self.tasks], np.float64)
        self.probs = p / p.sum()
        for t in self.tasks:
            need = task_modality(t)
            if {"image": image, "audio": audio, "text": lm_docs}[need] is None:
                what = {"image": "image token records (config.data.image_tokenizer)",
                        "audio": "audio token records (config.data.audio_tokenizer)",
                        "text": "text documents (config.data.lm_data_dir / model.base_lm_workdir)"}[need]
                raise ValueError(f"task {t!r} (config.data.tasks.{t}={weights[t]}) needs {what}, none given")

        self.records: dict[str, _Records] = {}
        self._code_len: dict[str, int] = {}
        self._text_ids: dict[str, list[list[int]]] = {}
        for m, src in {"image": image, "audio": audio}.items():
            if src is not None and any(task_modality(t) == m for t in self.tasks):
                self.records[m] = self._read(m, src)
        # input-only records: the same records (checked by index), read on the condition side of caption / asr
        self.in_records: dict[str, Sequence[dict[str, Any]]] = {}
        self.in_features = {m: bool(f) for m, f in (in_features or {}).items()}
        self._in_shape: dict[str, tuple[int, ...]] = {}  # of an input record's codes: [n] / [n, 1] / features [n, D]
        for m, src in {"image": image_in, "audio": audio_in}.items():
            if src is not None and m in self.records:
                self.in_records[m] = self._read_input(m, src)
        self.lm_docs = None
        if lm_docs is not None and "lm" in self.tasks:
            self.lm_docs = grain.MapDataset.source(lm_docs)[process_index::process_count]
            self.lm_indices = np.arange(process_index, len(lm_docs), process_count)
            if not len(self.lm_docs):
                raise ValueError(f"task 'lm': the {split} documents have no record for host {process_index} of "
                                 f"{process_count}")
        self.pairs = templates_lib.REASONING_TRAIN_PAIRS if split == "train" else templates_lib.REASONING_EVAL_PAIRS
        self.questions: dict[str, list[tuple[tuple[int, int], list[int]]]] = {}
        for t in templates_lib.REASONING_TASKS:
            if t in self.tasks:
                m = task_modality(t)
                rec = self.records[m]
                usable = [(a, b) for a, b in self.pairs if len(rec.by_label.get(a + b, ()))]
                if not usable:
                    raise ValueError(f"task {t!r}: no labelled {m} record (label >= 0) of any sum digit in the "
                                     f"{split} records of host {process_index}; set config.data.tasks.{t}=0 for an "
                                     "unlabelled source")
                self.questions[t] = [((a, b), tok.encode(templates_lib.sum_question(a, b, m))) for a, b in usable]
        self._check_lengths()
        self.index = 0
        self.last_draws: list[dict[str, Any]] = []

    # ---- construction helpers ---------------------------------------------------------------------------------
    def _read(self, modality: str, source: Sequence[dict[str, Any]]) -> _Records:
        p, n = self.process_index, self.process_count
        shard = grain.MapDataset.source(source)[p::n]
        if not len(shard):
            raise ValueError(f"the {self.split} {modality} records have no record for host {p} of {n} "
                             f"({len(source)} records)")
        labels, texts = [], []
        indices = np.arange(p, len(source), n)
        getitems = getattr(source, "__getitems__", None)  # tfds data sources read many records at once
        for start in range(0, len(indices), 1024):
            chunk = indices[start : start + 1024].tolist()
            recs = getitems(chunk) if getitems is not None else [source[i] for i in chunk]
            for rec in recs:
                self._meta(rec, labels, texts)
        return self._finish(modality, shard, indices, labels, texts)

    def _read_input(self, modality: str, source: Sequence[dict[str, Any]]):
        """This host's shard of the input-only records, after checking record i is the output records' record i."""
        out = self.records[modality]
        if len(source) <= int(out.indices[-1]):
            raise ValueError(f"the {self.split} {modality} input-tokenizer records ({len(source)}) are not the output "
                             f"tokenizer's records: rebuild both token datasets from the same source")
        shard = grain.MapDataset.source(source)[self.process_index :: self.process_count]
        getitems = getattr(source, "__getitems__", None)
        for start in range(0, len(out.indices), 1024):
            chunk = out.indices[start : start + 1024].tolist()
            recs = getitems(chunk) if getitems is not None else [source[i] for i in chunk]
            mine = np.asarray([int(r["index"]) for r in recs])
            theirs = np.asarray([int(r["index"]) for r in (out.source[j] for j in range(start, start + len(chunk)))])
            if not np.array_equal(mine, theirs):
                bad = int(np.argmax(mine != theirs)) + start
                raise ValueError(f"the {self.split} {modality} input-tokenizer record {int(out.indices[bad])} is not "
                                 f"the output tokenizer's (source index {mine[bad - start]} vs {theirs[bad - start]}): "
                                 "both token datasets must come from the same source and clip span")
        self._in_shape[modality] = np.asarray(shard[0]["codes"]).shape
        return shard

    def _in_len(self, modality: str) -> int:
        """Condition ids of one input record: a feature per position, else one id per code."""
        shape = self._in_shape[modality]
        return shape[0] if self.in_features.get(modality) else int(np.prod(shape))

    def _meta(self, rec: Mapping[str, Any], labels: list[int], texts: list[list[list[int]]]) -> None:
        labels.append(int(rec["label"]))
        text = as_text(rec["text"])
        if text not in self._text_ids:  # many records share a text (digit words, short transcripts)
            lines = [line.strip() for line in text.split("\n") if line.strip()]
            self._text_ids[text] = [list(ids) for ids in self.tok.encode(lines)] if lines else []
        texts.append(self._text_ids[text])

    def _finish(self, modality: str, shard: Sequence[dict[str, Any]], indices: np.ndarray, labels: list[int],
                texts: list[list[list[int]]]) -> _Records:
        p = self.process_index
        labels_a = np.asarray(labels, np.int32)
        with_text = np.asarray([i for i, t in enumerate(texts) if t], np.int64)
        by_label = {d: np.nonzero(labels_a == d)[0] for d in range(10)}
        first = np.asarray(shard[0]["codes"])
        self._code_len[modality] = len(self._unified(modality, first))
        needs_text = [t for t in self.tasks if t in templates_lib.SPAN_TASKS and task_modality(t) == modality]
        if needs_text and not len(with_text):
            raise ValueError(f"tasks {needs_text} need {modality} records with text; the {self.split} records "
                             f"of host {p} have none")
        return _Records(shard, indices, labels_a, texts, with_text, by_label)

    def _unified(self, modality: str, codes: np.ndarray) -> list[int]:
        codes = np.asarray(codes)
        if modality == "image":
            return self.vocab.image_to_unified(codes.reshape(1, -1)).tolist()
        return self.vocab.audio_to_unified(codes).tolist()

    def _input(self, modality: str, codes: np.ndarray, info: dict[str, Any]) -> list[int]:
        """The condition ids of an input-only record; features are kept in ``info`` until the batch is packed."""
        if self.in_features.get(modality):
            info["features"] = (modality, codes.astype(np.float32))
            return self.vocab.input_to_unified(modality, np.arange(codes.shape[0])).tolist()
        return self.vocab.input_to_unified(modality, codes.reshape(-1)).tolist()

    def _fill_features(self, out: dict[str, np.ndarray]) -> None:
        """``features_<m>`` of the packed batch: each condition's features at its input ids (its segment)."""
        for m, on in self.in_features.items():
            if not on or m not in self.in_records:
                continue
            out[f"features_{m}"] = np.zeros(out["tokens"].shape + self._in_shape[m][-1:], np.float32)
        for d in self.last_draws:
            if "features" not in d:
                continue
            m, feats = d.pop("features")
            lo, hi = self.vocab.input_range(m)
            row, toks = d["row"], out["tokens"][d["row"]]
            where = np.nonzero((out["segment_ids"][row] == d["segment"]) & (toks >= lo) & (toks < hi))[0]
            out[f"features_{m}"][row, where] = feats[toks[where] - lo]

    def _check_lengths(self) -> None:
        """Every possible example of every task fits a row (lm documents are cut instead)."""
        tpl = self.templates
        for task in self.tasks:
            if task == "lm":
                continue
            m = task_modality(task)
            fill = self.vocab.image_offset if m == "image" else self.vocab.audio_offset
            codes = [fill] * self._code_len[m]  # the span length is fixed; only the text varies
            if m in self.in_records and task in templates_lib.CONDITION_TASKS:
                codes = [self.vocab.input_range(m)[0]] * self._in_len(m)
            if task in templates_lib.REASONING_TASKS:
                longest = max((q for _, q in self.questions[task]), key=len)
            else:
                rec = self.records[m]
                longest = max((ids for texts in rec.texts for ids in texts), key=len)
            n = len(tpl.span_example(task, longest, codes)[0])
            if n > self.row:
                raise ValueError(f"a {task} example needs {n} tokens but a row holds config.data.seq_len + 1 = "
                                 f"{self.row} (config.data.seq_len={self.seq_len}); raise config.data.seq_len to at "
                                 f"least {n - 1} or shorten the {m} span / texts")

    # ---- examples ------------------------------------------------------------------------------------------------
    def _example(self, rng: np.random.Generator, task: str) -> tuple[list[int], list[float], dict[str, Any]]:
        tpl = self.templates
        drop = bool(rng.random() < self.dropout) if task in DROPPABLE_TASKS else False
        info: dict[str, Any] = {"task": task, "pair": None, "dropped": drop}
        if task == "lm":
            j = int(rng.integers(len(self.lm_docs)))
            ids = self.tok.encode(as_text(self.lm_docs[j]["text"]))
            toks, mask = tpl.example("lm", [], ids)
            info["index"] = int(self.lm_indices[j])
            return toks[: self.row], mask[: self.row], info
        m = task_modality(task)
        rec = self.records[m]
        if task in templates_lib.REASONING_TASKS:
            (a, b), question = self.questions[task][int(rng.integers(len(self.questions[task])))]
            candidates = rec.by_label[a + b]
            pos = int(candidates[rng.integers(len(candidates))])
            text, info["pair"] = question, (a, b)
        else:
            pos = int(rec.with_text[rng.integers(len(rec.with_text))])
            lines = rec.texts[pos]
            text = lines[int(rng.integers(len(lines)))]
        info["index"] = int(rec.indices[pos])
        if m in self.in_records and task in templates_lib.CONDITION_TASKS:
            codes = self._input(m, np.asarray(self.in_records[m][pos]["codes"]), info)
        else:
            codes = self._unified(m, rec.source[pos]["codes"])
        toks, mask = tpl.span_example(task, text, codes, drop_condition=drop)
        return toks, mask, info

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((self.seed, self.process_index, self.index))
        self.index += 1

        def draw():  # the task, then its example, from this batch's generator
            return self._example(rng, self.tasks[int(rng.choice(len(self.tasks), p=self.probs))])

        out, self.last_draws = pack_drawn_examples(draw, self.batch_size, self.row, max_tries=self.max_tries,
                                                   example_weights=self.loss_normalization == "example")
        out["modality"] = self.vocab.modality_of(out["tokens"])
        if self.in_features:
            self._fill_features(out)
        return out


