"""TEAL task data: image/audio datasets tokenized once into tfds token datasets, then a packed, resumable task stream.

Two stages.

**Pre-tokenization** (:func:`pretokenize_images`, :func:`pretokenize_audio`; :func:`prepare_task_data` runs both
from a config). A trained image tokenizer (``ImageTokenizer``) runs over an image dataset and a trained audio codec
(``AudioTokenizer``) over a speech dataset, once; the codes are written as a tfds dataset (``TealTokens``, a
``GeneratorBasedBuilder`` in ``array_record`` format, no TensorFlow) under ``tokens_dir``::

    <tokens_dir>/teal_tokens/<modality>_<digest>/1.0.0/teal_tokens-{train,test}.array_record-*
    <tokens_dir>/<modality>_<digest>.json        manifest: dataset name, record counts, skipped clips, source

The config name is a digest of every input: the tokenizer (its config and a hash of its parameters), the source
(kind, name, builder config, keys, split names, record counts) and the audio span. A changed tokenizer or source
therefore builds a new dataset beside the old one; a second call with the same inputs finds the files and does no
tokenization. Records (stored in source order)::

    image: codes int32 [h*w] (raw tokenizer codes, row-major), label int32 (-1 if none), text str, index int64
    audio: codes int32 [frames, levels] (raw codec codes),       label int32 (-1 if none), text str, index int64

``text`` is the caption / transcript (digits: the digit word ``templates.DIGITS[label]``); a source with several
captions per image (coco_captions) stores them all, one per line, and the stream draws one per example. ``index``
is the record's position in its source split. Audio clips are made fixed-length before encoding
(``templates.audio_span`` + ``templates.fit_audio``: start-aligned, zero-padded), so every stored clip has exactly
``frames`` frames; a clip longer than the span is skipped (counted and printed), never truncated, because a cut clip
would no longer match its transcript. Tokenizer calls are batched with a fixed batch size (the last batch is padded),
so each tokenizer compiles once.

Sources (``source`` dicts / ``config.data.image_source`` / ``audio_source``, see :func:`default_source_config`):
``kind='digits'`` (:func:`teal_jax.data.digits.build_digits`), ``'spoken_words'``
(:func:`teal_jax.data.speech.build_spoken_words`, ``config`` 'small' | 'medium' | 'tiny') or ``'tfds'``: any
prepared tfds dataset (``name``, ``data_dir``, ``image_key``/``audio_key``, ``text_key``, ``label_key``,
``train_split``, ``eval_split``; keys may be paths into nested features, e.g. coco_captions' ``'captions/text'``;
speech goes through :class:`teal_jax.data.speech.RecordAdapter`, e.g. librispeech's ``speech`` at ``source_rate``
16000).
Token splits are always ``'train'`` and ``'test'`` (the source's held-out split).

**Task stream** (:class:`TealTaskStream`, a checkpointable ``DataIterator``). Each row of ``seq_len + 1`` tokens
packs whole examples of the tasks in ``config.data.tasks`` (weights): ``caption``/``t2i`` from image records,
``asr``/``tts`` from audio records, ``lm`` from the base LM's text documents (the tfds dataset its data preparation
wrote, :mod:`teal_jax.data.lm`), ``reason_t2i``/``reason_tts``: ``templates.sum_question(a, b, ...)`` whose target
is a labelled record of the digit ``a + b``. Every example is built by :class:`teal_jax.data.templates.Templates`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from teal_jax import lineage
from teal_jax.data import templates as templates_lib
from teal_jax.data.iterator import DataIterator
from teal_jax.vocab import UnifiedVocab

DATASET_NAME = "teal_tokens"
FORMAT_VERSION = 1  # part of every digest: bump when the stored records change meaning
SPLITS = ("train", "test")  # token dataset splits; the stream's 'eval' reads 'test'
TASKS = ("caption", "t2i", "asr", "tts", "lm", "reason_t2i", "reason_tts")
IMAGE_TASKS = ("caption", "t2i", "reason_t2i")
AUDIO_TASKS = ("asr", "tts", "reason_tts")
SOURCE_KINDS = ("digits", "spoken_words", "tfds")
_TEMPLATE_TASK = {"caption": "caption", "t2i": "t2i", "asr": "asr", "tts": "tts", "lm": "lm",
                  "reason_t2i": "t2i", "reason_tts": "tts"}
LOSS_NORMALIZATIONS = ("token", "example")
_DROPPABLE = ("t2i", "tts", "reason_t2i", "reason_tts")


def _log(verbose: bool, msg: str) -> None:
    if verbose:
        print(f"[teal data] {msg}", flush=True)


# ---- config ------------------------------------------------------------------------------------------------------
def default_source_config(modality: str) -> ml_collections.ConfigDict:
    """Every field of ``config.data.image_source`` (modality 'image') / ``audio_source`` ('audio')."""
    if modality == "image":
        return ml_collections.ConfigDict(dict(
            kind="digits",  # 'digits' | 'tfds'
            name="",  # tfds: dataset name, e.g. 'coco_captions' or 'coco_captions/2017'
            data_dir="",  # '' = the tokenizer run's data dir (digits) / tfds' default dir (tfds)
            config="",  # unused for digits (the tokenizer's image size picks the builder config)
            image_key="image",
            text_key="",  # tfds: e.g. 'captions/text'; digits: '' = the digit word of the label
            label_key="label",  # '' = no labels (-1)
            train_split="train",
            eval_split="test",
            augment_copies=0,  # train split: this many extra randomly jittered copies of every image (small affine:
            # +-10 deg, 0.9-1.1 scale, +-8% shift; image_pipeline.random_affine), tokenized once with the rest
        ))
    if modality == "audio":
        return ml_collections.ConfigDict(dict(
            kind="spoken_words",  # 'spoken_words' | 'tfds'
            name="",  # tfds: e.g. 'librispeech'
            data_dir="",  # '' = the codec run's data dir (spoken_words) / tfds' default dir (tfds)
            config="small",  # spoken_words builder config: 'small' | 'medium' | 'tiny'
            audio_key="audio",  # librispeech: 'speech'
            text_key="text",
            label_key="label",  # '' = no labels (-1)
            train_split="train",
            eval_split="test",
            source_rate=16000,  # the dataset's sample rate (resampled to the codec's)
        ))
    raise ValueError(f"modality={modality!r}: choose 'image' or 'audio'")


def default_task_data_config() -> ml_collections.ConfigDict:
    """Every ``config.data`` field of ``data.kind='tasks'`` with its default (see docs/teal.md)."""
    return ml_collections.ConfigDict(dict(
        kind="tasks",
        text_tokenizer="",  # SentencePiece .model; '' = the base LM's (model.base_lm_workdir)
        lm_data_dir="",  # an LM data dir (holding lm_data.json); '' = the base LM run's data dir
        image_tokenizer="",  # workdir of an image_vq run; '' = no image tasks
        audio_tokenizer="",  # workdir of an audio_codec run; '' = no audio tasks
        image_source=default_source_config("image"),
        audio_source=default_source_config("audio"),
        audio_seconds=1.0,  # every clip is one span of this length (longer clips are skipped)
        tokens_dir="",  # '' = <workdir>/tokens
        tokenize_batch=32,  # fixed batch of the tokenizer calls during pre-tokenization
        tasks=ml_collections.ConfigDict(dict(caption=1.0, t2i=1.0, asr=1.0, tts=1.0, lm=0.5, reason_t2i=0.25,
                                             reason_tts=0.25)),
        cond_dropout=0.1,  # t2i/tts/reasoning (train split): condition replaced by <null> with this probability
        loss_normalization="token",  # 'token': every target token weighs the same; 'example': every example's
        # targets weigh 1 in all (a two-token caption counts as much as a 65-token image), batches carry loss_weight
        seq_len=256,  # rows are seq_len + 1 tokens
    ))


def task_weights(tasks: Any) -> dict[str, float]:
    """``config.data.tasks`` as ``{task: weight}``: a mapping of weights, or a list of task names (weight 1 each)."""
    if tasks is None:
        return dict(default_task_data_config().tasks.items())
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    if isinstance(tasks, (list, tuple)):
        return {str(t): 1.0 for t in tasks}
    items = tasks.items() if hasattr(tasks, "items") else None
    if items is None:
        raise ValueError(f"config.data.tasks={tasks!r}: expected a mapping task -> weight or a list of tasks")
    return {str(t): float(w) for t, w in items}


def validate_task_data_config(data) -> None:
    """Typos fail early: a ``config.data`` field close to a known one (e.g. ``image_tokenizr``), an unknown field of
    a source, or an unknown task raises ValueError naming it. Other extra fields are left to whoever reads them."""
    import difflib

    known = list(default_task_data_config().keys())
    for key in sorted(set(data.keys()) - set(known)):
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        if close:
            raise ValueError(f"config.data.{key} is not a field of data.kind='tasks'; did you mean "
                             f"config.data.{close[0]}?")
    for m in ("image", "audio"):
        _source_dict(data.get(f"{m}_source"), m)
    bad = sorted(set(task_weights(data.get("tasks"))) - set(TASKS))
    if bad:
        raise ValueError(f"config.data.tasks has unknown tasks {bad}; known: {TASKS}")


def _source_dict(source: Mapping[str, Any] | None, modality: str) -> dict[str, Any]:
    """A validated source dict: the defaults of ``modality`` overridden by ``source``."""
    base = default_source_config(modality).to_dict()
    given = dict(source.to_dict() if hasattr(source, "to_dict") else (source or {}))
    unknown = sorted(set(given) - set(base))
    if unknown:
        raise ValueError(f"config.data.{modality}_source has unknown fields {unknown}; known: {sorted(base)}")
    base.update({k: v for k, v in given.items() if v is not None})
    kinds = ("digits", "tfds") if modality == "image" else ("spoken_words", "tfds")
    if base["kind"] not in kinds:
        raise ValueError(f"config.data.{modality}_source.kind={base['kind']!r}: choose one of {kinds}")
    if base["kind"] == "tfds" and not base["name"]:
        raise ValueError(f"config.data.{modality}_source.kind='tfds' needs config.data.{modality}_source.name")
    return base


# ---- records of the sources --------------------------------------------------------------------------------------
def _field(record: Mapping[str, Any], path: str, what: str) -> Any:
    """``record['a']['b']`` for ``path='a/b'``; a missing key raises ValueError naming the path and the fields."""
    value: Any = record
    for part in path.split("/"):
        if not isinstance(value, Mapping) or part not in value:
            fields = sorted(value) if isinstance(value, Mapping) else type(value).__name__
            raise ValueError(f"record has no field {path!r} (at {part!r}: fields {fields}); set {what}")
        value = value[part]
    return value


def _as_text(value: Any) -> str:
    """A str, bytes, or a list/array of them (several captions) -> one str, captions one per line."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str):
        return value
    arr = np.asarray(value)
    if arr.ndim == 0:
        return _as_text(arr.item())
    return "\n".join(_as_text(v).replace("\n", " ") for v in arr.reshape(-1))


def _record_meta(record: Mapping[str, Any], source: dict[str, Any], modality: str) -> tuple[int, str]:
    """(label, text) of a source record."""
    what = f"config.data.{modality}_source"
    label = -1
    if source["label_key"]:
        value = np.asarray(_field(record, source["label_key"], f"{what}.label_key"))
        label = int(value) if value.ndim == 0 else -1
    if source["text_key"]:
        text = _as_text(_field(record, source["text_key"], f"{what}.text_key"))
    elif source["kind"] == "digits":
        text = templates_lib.DIGITS[label]
    else:
        text = ""
    return label, text


def _source_identity(source: dict[str, Any], sources: Mapping[str, Sequence]) -> dict[str, Any]:
    """What the token dataset depends on (not where the source lives: a moved dataset is the same dataset)."""
    ident = {k: v for k, v in source.items() if k != "data_dir"}
    ident["lengths"] = {s: len(sources[s]) for s in SPLITS}
    return ident


def _default_data_dir(tokenizer_workdir: str | None, kind: str, fallback: str | None) -> str | None:
    """The data dir of the tokenizer's own training run when it trained on ``kind``, else ``fallback``."""
    if tokenizer_workdir:
        from teal_jax import checkpoint

        try:
            cfg = checkpoint.read_config(tokenizer_workdir)
        except FileNotFoundError:
            cfg = None
        if cfg is not None and cfg.data.get("kind") == kind:
            return cfg.data.get("data_dir") or os.path.join(os.path.abspath(tokenizer_workdir), "data")
    return fallback


def open_sources(source: Mapping[str, Any], modality: str, *, data_dir: str | None = None,
                 image_size: int = 32) -> dict[str, Sequence[dict[str, Any]]]:
    """Random-access sources ``{'train': ..., 'test': ...}`` of a source config (building digits / spoken words
    first if needed). ``data_dir`` overrides an empty ``source['data_dir']``; ``image_size`` picks the digits
    builder config (8, 16, 32 or 64)."""
    src = _source_dict(source, modality)
    d = src["data_dir"] or data_dir
    if src["kind"] == "digits":
        from teal_jax.data.digits import build_digits

        if not d:
            raise ValueError("config.data.image_source.data_dir is empty and no default data dir is known")
        size = image_size if image_size in (8, 16, 32, 64) else 64
        build_digits(d, size)
        name, splits = f"digits_images/{size}px", ("train", "test")
    elif src["kind"] == "spoken_words":
        from teal_jax.data.speech import build_spoken_words

        if not d:
            raise ValueError("config.data.audio_source.data_dir is empty and no default data dir is known")
        build_spoken_words(d, src["config"] or "small")
        name, splits = f"spoken_words/{src['config'] or 'small'}", ("train", "test")
    else:
        name, splits = src["name"], (src["train_split"], src["eval_split"])
    builder = None
    if src["kind"] == "tfds":
        # Prepared files first: a dataset read from its files needs none of its builder code, some of which
        # (coco_captions, librispeech) imports TensorFlow. Not prepared there: tfds' usual lookup (and its mocks).
        from tensorflow_datasets.core import read_only_builder

        try:
            builder = read_only_builder.builder_from_files(name, **({"data_dir": d} if d else {}))
        except Exception:  # noqa: BLE001 - DatasetNotFoundError and friends: fall back to tfds.data_source
            builder = None
    out = {}
    for ours, theirs in zip(SPLITS, splits, strict=True):
        try:
            out[ours] = (builder.as_data_source(split=theirs) if builder is not None
                         else tfds.data_source(name, split=theirs, data_dir=d or None))
        except Exception as e:  # tfds raises several types for a missing/unprepared dataset or split
            raise ValueError(f"config.data.{modality}_source: cannot open tfds dataset {name!r} split {theirs!r} "
                             f"under data_dir={d or '(tfds default)'}: {type(e).__name__}: {e}") from e
    return out


# ---- tokenizer fingerprints ----------------------------------------------------------------------------------------
def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A digest of a tokenizer's config, emitted levels and every parameter/state array (path, dtype, shape, bytes)."""
    import jax
    from flax import linen as nn

    h = hashlib.sha256(repr(tokenizer.config).encode())
    h.update(repr(getattr(tokenizer, "num_levels", None)).encode())
    for path, leaf in jax.tree_util.tree_flatten_with_path(nn.unbox(tokenizer.variables))[0]:
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


# ---- the token dataset builder -------------------------------------------------------------------------------------
class TealTokensConfig(tfds.core.BuilderConfig):
    """One token dataset: ``generate(split)`` yields ``(key, record)``; ``code_shape`` is the codes' shape."""

    def __init__(self, *, name: str, modality: str, code_shape: tuple[int, ...],
                 generate: Callable[[str], Iterator[tuple[int, dict[str, Any]]]], description: str):
        super().__init__(name=name, description=description)
        self.modality, self.code_shape, self.generate = modality, tuple(code_shape), generate


class TealTokens(tfds.core.GeneratorBasedBuilder):
    """Pre-tokenized image/audio records (see the module docstring); splits 'train' and 'test'."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=cfg.description,
            features=tfds.features.FeaturesDict({
                "codes": tfds.features.Tensor(shape=cfg.code_shape, dtype=np.int32),
                "label": np.int32,
                "text": tfds.features.Text(),
                "index": np.int64,
            }),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the sources are read by the config's generator
        return {s: self._generate_examples(s) for s in SPLITS}

    def _generate_examples(self, split: str):
        yield from self.builder_config.generate(split)


def _manifest_path(tokens_dir: str, config_name: str) -> str:
    return os.path.join(tokens_dir, f"{config_name}.json")


def _build(tokens_dir: str, config: TealTokensConfig, stats: dict[str, Any], extra: dict[str, Any],
           verbose: bool) -> dict[str, Any]:
    """Builds ``config`` once (a prepared dataset is not touched) and returns its manifest."""
    os.makedirs(tokens_dir, exist_ok=True)
    manifest_file = _manifest_path(tokens_dir, config.name)
    builder = TealTokens(data_dir=tokens_dir, config=config, file_format="array_record")
    if builder.is_prepared() and os.path.isfile(manifest_file):
        with open(manifest_file) as f:
            return json.load(f)
    if not builder.is_prepared():
        t0 = time.time()
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
        _log(verbose, f"{DATASET_NAME}/{config.name}: {dict(stats['records'])} records, skipped "
             f"{dict(stats['skipped'])} ({time.time() - t0:.1f}s) under {tokens_dir}")
    else:  # prepared by a run that stopped before writing the manifest: counts from the files, skips unknown
        stats = {"records": {s: len(tfds.data_source(f"{DATASET_NAME}/{config.name}", split=s, data_dir=tokens_dir))
                             for s in SPLITS}, "skipped": {s: None for s in SPLITS}}
    manifest = {"dataset": f"{DATASET_NAME}/{config.name}", "tfds_dir": os.path.abspath(tokens_dir),
                "modality": config.modality, "code_shape": list(config.code_shape), **stats, **extra}
    with open(manifest_file + ".tmp", "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(manifest_file + ".tmp", manifest_file)
    return manifest


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _ordered_map(n: int, fn: Callable[[int], Any], batch_size: int, threads: int = 8) -> Iterator[Any]:
    """``fn(0), fn(1), ... fn(n - 1)`` in order, computed ahead by grain reader threads."""
    ds = grain.MapDataset.source(range(n)).map(fn)
    yield from ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=4 * batch_size),
                                  allow_nones=True)


def _batched(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch = []
    for x in items:
        batch.append(x)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Progress:
    def __init__(self, verbose: bool, what: str, total: int, every_s: float = 10.0):
        self.verbose, self.what, self.total, self.every = verbose, what, total, every_s
        self.t0 = self.last = time.time()

    def update(self, done: int) -> None:
        now = time.time()
        if self.verbose and now - self.last >= self.every:
            self.last = now
            _log(True, f"{self.what}: {done}/{self.total} ({done / max(now - self.t0, 1e-9):.0f}/s)")


def pretokenize_images(tokenizer: Any, source: Mapping[str, Any], tokens_dir: str, *,
                       data_dir: str | None = None, sources: Mapping[str, Sequence] | None = None,
                       batch_size: int = 32, verbose: bool = True) -> dict[str, Any]:
    """Encodes every image of the source's train/test splits once; returns the manifest
    ``{'dataset', 'tfds_dir', 'modality', 'code_shape': [h*w], 'records': {split: n}, 'skipped', 'source',
    'tokenizer'}``. ``sources`` (``{'train': seq, 'test': seq}``) replaces opening the source (tests, in-memory
    data); ``data_dir`` is the default data dir of a 'digits' source."""
    from teal_jax.data.image_pipeline import random_affine
    from teal_jax.media.image import center_crop_resize, convert_channels

    src = _source_dict(source, "image")
    cfg = tokenizer.config
    size, channels = int(cfg.image_size), int(cfg.in_channels)
    if sources is None:
        sources = open_sources(src, "image", data_dir=data_dir, image_size=size)
    h, w = tokenizer.token_grid
    tok_info = {"fingerprint": tokenizer_fingerprint(tokenizer), "codebook_size": int(tokenizer.vocab_size),
                "token_grid": [int(h), int(w)], "image_size": size}
    ident = _source_identity(src, sources)
    name = "image_" + _digest({"format": FORMAT_VERSION, "modality": "image", "tokenizer": tok_info,
                               "source": ident})
    stats: dict[str, Any] = {"records": {}, "skipped": {}}
    key = src["image_key"]

    copies = int(src["augment_copies"])
    if copies < 0:
        raise ValueError(f"config.data.image_source.augment_copies={copies} must be >= 0")

    def generate(split: str):
        data = sources[split]
        n = len(data)
        total = n * (1 + (copies if split == "train" else 0))  # record k: copy k // n of source record k % n
        progress = _Progress(verbose, f"image tokens {split}", total)

        def prep(k):  # runs in grain's reader threads (Pillow decodes/resizes without the GIL)
            i, copy = k % n, k // n
            rec = data[i]
            img = convert_channels(np.asarray(_field(rec, key, "config.data.image_source.image_key")),
                                   channels, name=f"{split} record {i}")
            label, text = _record_meta(rec, src, "image")
            img = center_crop_resize(img.astype(np.uint8), size)
            if copy:
                img = random_affine(img, np.random.default_rng((i, copy)))
            return k, img, label, text

        def items():
            yield from _ordered_map(total, prep, batch_size)

        done = 0
        for batch in _batched(items(), batch_size):
            images = np.zeros((batch_size, size, size, channels), np.uint8)  # fixed shape: the last batch padded
            images[: len(batch)] = np.stack([b[1] for b in batch])
            codes = np.asarray(tokenizer.encode(images)).reshape(batch_size, -1)
            for j, (k, _, label, text) in enumerate(batch):
                yield k, {"codes": codes[j].astype(np.int32), "label": np.int32(label), "text": text,
                          "index": np.int64(k % n)}
            done += len(batch)
            progress.update(done)
        stats["records"][split], stats["skipped"][split] = done, 0

    config = TealTokensConfig(name=name, modality="image", code_shape=(int(h) * int(w),), generate=generate,
                              description=f"image codes of {ident}")
    return _build(tokens_dir, config, stats, {"source": ident, "tokenizer": tok_info}, verbose)


def pretokenize_audio(tokenizer: Any, source: Mapping[str, Any], tokens_dir: str, *, seconds: float,
                      data_dir: str | None = None, sources: Mapping[str, Sequence] | None = None,
                      batch_size: int = 32, verbose: bool = True) -> dict[str, Any]:
    """Encodes every clip that fits one span of ``seconds`` (``templates.audio_span``; longer clips are skipped and
    counted) of the source's train/test splits once. Returns the manifest (as :func:`pretokenize_images`, with
    ``code_shape`` [frames, levels] and ``seconds``)."""
    from teal_jax.data.speech import RecordAdapter

    src = _source_dict(source, "audio")
    cfg = tokenizer.config
    rate, hop, levels = int(tokenizer.sample_rate), int(cfg.hop_length), int(tokenizer.num_levels)
    frames, samples = templates_lib.audio_span(seconds, rate, hop)
    if sources is None:
        sources = open_sources(src, "audio", data_dir=data_dir)
    tok_info = {"fingerprint": tokenizer_fingerprint(tokenizer), "codebook_size": int(tokenizer.codebook_size),
                "num_levels": levels, "sample_rate": rate, "hop_length": hop}
    span = {"seconds": float(seconds), "frames": frames, "samples": samples}
    ident = _source_identity(src, sources)
    name = "audio_" + _digest({"format": FORMAT_VERSION, "modality": "audio", "tokenizer": tok_info, "span": span,
                               "source": ident})
    stats: dict[str, Any] = {"records": {}, "skipped": {}}
    source_rate = 16000 if src["kind"] == "spoken_words" else int(src["source_rate"])
    adapter = RecordAdapter(audio_key=src["audio_key"], text_key=None, label_key=None, source_rate=source_rate,
                            sample_rate=rate)

    def generate(split: str):
        data = sources[split]
        n = len(data)
        progress = _Progress(verbose, f"audio tokens {split}", n)
        skipped = [0]

        def prep(i):  # runs in grain's reader threads; None = longer than the span
            rec = data[i]
            if src["audio_key"] not in rec:
                _field(rec, src["audio_key"], "config.data.audio_source.audio_key")  # raises, naming the fields
            clip = adapter.map(rec)["audio"]  # int16 [n] at the codec's rate
            if clip.shape[0] > samples:
                return None
            label, text = _record_meta(rec, src, "audio")
            return i, templates_lib.fit_audio(clip, samples), label, text

        def items():
            for item in _ordered_map(n, prep, batch_size):
                if item is None:
                    skipped[0] += 1
                else:
                    yield item

        done = kept = 0
        for batch in _batched(items(), batch_size):
            clips = np.zeros((batch_size, samples), np.int16)  # fixed shape: the last batch padded with silence
            clips[: len(batch)] = np.stack([b[1] for b in batch])
            codes, _ = tokenizer.encode(clips, rate)
            codes = np.asarray(codes)
            if codes.shape[1:] != (frames, levels):
                raise ValueError(f"the audio tokenizer gave codes {codes.shape[1:]} for {samples} samples, "
                                 f"expected ({frames}, {levels})")
            for j, (i, _, label, text) in enumerate(batch):
                yield i, {"codes": codes[j].astype(np.int32), "label": np.int32(label), "text": text,
                          "index": np.int64(i)}
            kept += len(batch)
            done = kept + skipped[0]
            progress.update(done)
        stats["records"][split], stats["skipped"][split] = kept, skipped[0]
        if skipped[0]:
            _log(verbose, f"audio tokens {split}: skipped {skipped[0]} of {n} clips longer than {seconds} s "
                 f"({samples} samples at {rate} Hz)")

    config = TealTokensConfig(name=name, modality="audio", code_shape=(frames, levels), generate=generate,
                              description=f"audio codes of {ident}, {seconds} s spans")
    return _build(tokens_dir, config, stats, {"source": ident, "tokenizer": tok_info, "span": span}, verbose)


def token_source(manifest: Mapping[str, Any], split: str):
    """``tfds.data_source`` of a token dataset split ('train' or 'test')."""
    return tfds.data_source(manifest["dataset"], split=split, data_dir=manifest["tfds_dir"])


# ---- the task stream ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Records:
    """One modality's records of this host: positions into the host shard, their labels and text ids."""

    source: Sequence[dict[str, Any]]  # the host shard (grain MapDataset slice)
    indices: np.ndarray  # int64 [n]: index of each shard record in the full split
    labels: np.ndarray  # int32 [n]
    texts: list[list[list[int]]]  # per record: one id list per caption line
    with_text: np.ndarray  # positions with at least one caption line
    by_label: dict[int, np.ndarray]  # digit -> positions with that label


class TealTaskStream(DataIterator):
    """Packed rows of TEAL task examples; batch ``i`` is a pure function of ``(seed, process_index, i)``.

    Args:
      vocab: the unified vocabulary (its sizes must match the tokenizers that made the token datasets).
      text_tokenizer: a :class:`teal_jax.tokenizers.text.TextTokenizer` (bos/eos and the text ids).
      tasks: task -> weight (``TASKS``; weight 0 = off). Each example's task is drawn with these weights.
      split: 'train' or 'eval'. 'eval' must be given the held-out records (token split 'test', the LM's 'eval'
        split); its reasoning prompts use ``REASONING_EVAL_PAIRS`` (train: ``REASONING_TRAIN_PAIRS``) and no
        condition is dropped.
      batch_size, seq_len: rows are ``[batch_size, seq_len + 1]``.
      image, audio: token records of this split (``{'codes', 'label', 'text', ...}``, e.g. :func:`token_source`).
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

    Examples never exceed a row except lm documents, which are cut to the row (their prefix); any other example
    that cannot fit raises ValueError at construction.
    """

    def __init__(self, *, vocab: UnifiedVocab, text_tokenizer: Any, tasks: Mapping[str, float], split: str,
                 batch_size: int, seq_len: int, seed: int, image: Sequence[dict[str, Any]] | None = None,
                 audio: Sequence[dict[str, Any]] | None = None, lm_docs: Sequence[dict[str, Any]] | None = None,
                 cond_dropout: float = 0.1, process_index: int = 0, process_count: int = 1, max_tries: int = 4,
                 loss_normalization: str = "token"):
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
            need = "image" if t in IMAGE_TASKS else "audio" if t in AUDIO_TASKS else "lm"
            if {"image": image, "audio": audio, "lm": lm_docs}[need] is None:
                what = {"image": "image token records (config.data.image_tokenizer)",
                        "audio": "audio token records (config.data.audio_tokenizer)",
                        "lm": "text documents (config.data.lm_data_dir / model.base_lm_workdir)"}[need]
                raise ValueError(f"task {t!r} (config.data.tasks.{t}={weights[t]}) needs {what}, none given")

        self.records: dict[str, _Records] = {}
        self._code_len: dict[str, int] = {}
        self._text_ids: dict[str, list[list[int]]] = {}
        for m, src in (("image", image), ("audio", audio)):
            if src is not None and any(t in self.tasks for t in (IMAGE_TASKS if m == "image" else AUDIO_TASKS)):
                self.records[m] = self._read(m, src)
        self.lm_docs = None
        if lm_docs is not None and "lm" in self.tasks:
            self.lm_docs = grain.MapDataset.source(lm_docs)[process_index::process_count]
            self.lm_indices = np.arange(process_index, len(lm_docs), process_count)
            if not len(self.lm_docs):
                raise ValueError(f"task 'lm': the {split} documents have no record for host {process_index} of "
                                 f"{process_count}")
        self.pairs = templates_lib.REASONING_TRAIN_PAIRS if split == "train" else templates_lib.REASONING_EVAL_PAIRS
        self.questions: dict[str, list[tuple[tuple[int, int], list[int]]]] = {}
        for t, m in (("reason_t2i", "image"), ("reason_tts", "audio")):
            if t in self.tasks:
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

    def _meta(self, rec: Mapping[str, Any], labels: list[int], texts: list[list[list[int]]]) -> None:
        labels.append(int(rec["label"]))
        text = _as_text(rec["text"])
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
        needs_text = [t for t in self.tasks if t in (("caption", "t2i") if modality == "image" else ("asr", "tts"))]
        if needs_text and not len(with_text):
            raise ValueError(f"tasks {needs_text} need {modality} records with text; the {self.split} records "
                             f"of host {p} have none")
        return _Records(shard, indices, labels_a, texts, with_text, by_label)

    def _unified(self, modality: str, codes: np.ndarray) -> list[int]:
        codes = np.asarray(codes)
        if modality == "image":
            return self.vocab.image_to_unified(codes.reshape(1, -1)).tolist()
        return self.vocab.audio_to_unified(codes).tolist()

    def _check_lengths(self) -> None:
        """Every possible example of every task fits a row (lm documents are cut instead)."""
        tpl = self.templates
        for task in self.tasks:
            if task == "lm":
                continue
            m = "image" if task in IMAGE_TASKS else "audio"
            fill = self.vocab.image_offset if m == "image" else self.vocab.audio_offset
            codes = [fill] * self._code_len[m]  # the span length is fixed; only the text varies
            if task.startswith("reason_"):
                longest = max((q for _, q in self.questions[task]), key=len)
            else:
                rec = self.records[m]
                longest = max((ids for texts in rec.texts for ids in texts), key=len)
            t = _TEMPLATE_TASK[task]
            cond, tgt = (codes, longest) if t in ("caption", "asr") else (longest, codes)
            n = len(tpl.example(t, cond, tgt)[0])
            if n > self.row:
                raise ValueError(f"a {task} example needs {n} tokens but a row holds config.data.seq_len + 1 = "
                                 f"{self.row} (config.data.seq_len={self.seq_len}); raise config.data.seq_len to at "
                                 f"least {n - 1} or shorten the {m} span / texts")

    # ---- examples ------------------------------------------------------------------------------------------------
    def _example(self, rng: np.random.Generator, task: str) -> tuple[list[int], list[float], dict[str, Any]]:
        tpl = self.templates
        drop = bool(rng.random() < self.dropout) if task in _DROPPABLE else False
        info: dict[str, Any] = {"task": task, "pair": None, "dropped": drop}
        if task == "lm":
            j = int(rng.integers(len(self.lm_docs)))
            ids = self.tok.encode(_as_text(self.lm_docs[j]["text"]))
            toks, mask = tpl.example("lm", [], ids)
            info["index"] = int(self.lm_indices[j])
            return toks[: self.row], mask[: self.row], info
        m = "image" if task in IMAGE_TASKS else "audio"
        rec = self.records[m]
        if task.startswith("reason_"):
            (a, b), question = self.questions[task][int(rng.integers(len(self.questions[task])))]
            candidates = rec.by_label[a + b]
            pos = int(candidates[rng.integers(len(candidates))])
            text, info["pair"] = question, (a, b)
        else:
            pos = int(rec.with_text[rng.integers(len(rec.with_text))])
            lines = rec.texts[pos]
            text = lines[int(rng.integers(len(lines)))]
        info["index"] = int(rec.indices[pos])
        codes = self._unified(m, rec.source[pos]["codes"])
        t = _TEMPLATE_TASK[task]
        if t in ("caption", "asr"):
            toks, mask = tpl.example(t, codes, text)
        else:
            toks, mask = tpl.example(t, text, codes, drop_condition=drop)
        return toks, mask, info

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((self.seed, self.process_index, self.index))
        self.index += 1
        shape = (self.batch_size, self.row)
        out = {"tokens": np.zeros(shape, np.int32), "loss_mask": np.zeros(shape, np.float32),
               "segment_ids": np.zeros(shape, np.int32), "positions": np.zeros(shape, np.int32)}
        per_example = self.loss_normalization == "example"
        if per_example:
            out["loss_weight"] = np.zeros(shape, np.float32)
        draws = []
        for b in range(self.batch_size):
            pos, seg, misses = 0, 1, 0
            while pos < self.row and misses < self.max_tries:
                task = self.tasks[int(rng.choice(len(self.tasks), p=self.probs))]
                toks, mask, info = self._example(rng, task)
                if pos + len(toks) > self.row:
                    misses += 1
                    continue
                sl = slice(pos, pos + len(toks))
                out["tokens"][b, sl], out["loss_mask"][b, sl] = toks, mask
                out["segment_ids"][b, sl], out["positions"][b, sl] = seg, np.arange(len(toks))
                if per_example:
                    m = np.asarray(mask, np.float32)
                    out["loss_weight"][b, sl] = m / max(float(m.sum()), 1.0)
                draws.append({"row": b, "segment": seg, **info})
                pos, seg = pos + len(toks), seg + 1
        out["modality"] = self.vocab.modality_of(out["tokens"])
        self.last_draws = draws
        return out

    def get_state(self) -> dict[str, Any]:
        return {"index": self.index}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self.index = int(state["index"])


# ---- config level: what to read, checks, preparation --------------------------------------------------------------
def tokenizer_run_vocab(workdir: str, modality: str) -> dict[str, int]:
    """Vocabulary sizes of a tokenizer run, from its saved config only: image ``{'codebook_size'}``, audio
    ``{'codebook_size', 'num_levels'}``. A missing run raises ValueError naming the field."""
    from teal_jax import checkpoint

    field = f"config.data.{modality}_tokenizer"
    if not os.path.isdir(workdir):
        raise ValueError(f"{field}={workdir!r}: no such directory (the workdir of an "
                         f"{'image_vq' if modality == 'image' else 'audio_codec'} run)")
    try:
        cfg = checkpoint.read_config(workdir)
    except FileNotFoundError as e:
        raise ValueError(f"{field}={workdir!r}: {e}") from e
    want = "image_vq" if modality == "image" else "audio_codec"
    if cfg.get("objective") != want:
        raise ValueError(f"{field}={workdir!r} is a checkpoint of objective {cfg.get('objective')!r}, expected "
                         f"{want!r}")
    if modality == "image":
        from teal_jax.models.vqgan import VQGANConfig

        return {"codebook_size": int(VQGANConfig.from_config(cfg.model).num_codes)}
    from teal_jax.models.codec import CodecConfig

    c = CodecConfig.from_config(cfg.model, dtype="float32")
    return {"codebook_size": int(c.codebook_size), "num_levels": int(c.num_levels)}


def check_vocab(vocab: UnifiedVocab, modality: str, sizes: Mapping[str, int], where: str) -> None:
    """The vocabulary must hold exactly the tokenizer's codes: ValueError naming both numbers otherwise."""
    if modality == "image":
        if vocab.image_codebook_size != sizes["codebook_size"]:
            raise ValueError(f"config.model.vocab.image_codebook_size={vocab.image_codebook_size} but the image "
                             f"tokenizer {where} has {sizes['codebook_size']} codes")
        return
    if vocab.audio_codebook_size != sizes["codebook_size"]:
        raise ValueError(f"config.model.vocab.audio_codebook_size={vocab.audio_codebook_size} but the audio "
                         f"tokenizer {where} has {sizes['codebook_size']} codes per level")
    if vocab.audio_num_levels != sizes["num_levels"]:
        raise ValueError(f"config.model.vocab.audio_num_levels={vocab.audio_num_levels} but the audio tokenizer "
                         f"{where} emits {sizes['num_levels']} levels")


def resolve_tokens_dir(data_cfg, workdir: str | None) -> str:
    d = data_cfg.get("tokens_dir") or (os.path.join(workdir, "tokens") if workdir else None)
    if not d:
        raise ValueError("no token dir: set config.data.tokens_dir or call prepare(workdir) first")
    return os.path.abspath(d)


def prepare_task_data(config, workdir: str | None, vocab: UnifiedVocab, *, verbose: bool = True,
                      tokenizers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Checks the config against the tokenizers and pre-tokenizes what is missing (idempotent).

    Returns ``{'text_tokenizer': path, 'lm': {'dataset', 'tfds_dir'} | None, 'image': manifest | None,
    'audio': manifest | None}``. ``tokenizers`` (``{'image': ImageTokenizer, 'audio': AudioTokenizer}``) replaces
    loading them from ``data.image_tokenizer`` / ``data.audio_tokenizer`` (tests)."""
    d = config.data
    tokenizers = dict(tokenizers or {})
    tokens_dir = resolve_tokens_dir(d, workdir)
    fallback = os.path.join(workdir, "data") if workdir else None
    validate_task_data_config(d)
    lm = lineage.lm_data(config) if task_weights(d.get("tasks")).get("lm", 0) > 0 else None
    out: dict[str, Any] = {"text_tokenizer": lineage.text_tokenizer(config), "lm": lm, "image": None, "audio": None}
    batch = int(d.get("tokenize_batch", 32))
    for m in ("image", "audio"):
        run = d.get(f"{m}_tokenizer") or ""
        tok = tokenizers.get(m)
        if tok is None and not run:
            continue
        if tok is None:
            check_vocab(vocab, m, tokenizer_run_vocab(run, m), f"at {run}")  # before loading any parameters
            if m == "image":
                from teal_jax.tokenizers.image import ImageTokenizer

                tok = ImageTokenizer.from_checkpoint(run)
            else:
                from teal_jax.tokenizers.audio import AudioTokenizer

                tok = AudioTokenizer.from_checkpoint(run)
        sizes = ({"codebook_size": tok.vocab_size} if m == "image"
                 else {"codebook_size": tok.codebook_size, "num_levels": tok.num_levels})
        check_vocab(vocab, m, sizes, f"at {run}" if run else "(given)")
        source = _source_dict(d.get(f"{m}_source"), m)
        data_dir = _default_data_dir(run, source["kind"], fallback) if source["kind"] != "tfds" else None
        if m == "image":
            out[m] = pretokenize_images(tok, source, tokens_dir, data_dir=data_dir, batch_size=batch,
                                        verbose=verbose)
        else:
            out[m] = pretokenize_audio(tok, source, tokens_dir, seconds=float(d.get("audio_seconds", 1.0)),
                                       data_dir=data_dir, batch_size=batch, verbose=verbose)
    return out


def make_task_stream(config, prepared: Mapping[str, Any], vocab: UnifiedVocab, split: str, *, batch_size: int,
                     process_index: int = 0, process_count: int = 1, seed: int = 0,
                     verbose: bool = True) -> TealTaskStream:
    """The task stream of ``split`` ('train' | 'eval') from :func:`prepare_task_data`'s result. Image/audio tasks
    are left out (with a note) when that modality has no tokenizer; an eval run without an LM eval split leaves
    out 'lm'."""
    from teal_jax.tokenizers.text import TextTokenizer

    if split not in ("train", "eval"):
        raise ValueError(f"split={split!r}: choose 'train' or 'eval'")
    d = config.data
    weights = task_weights(d.get("tasks"))
    token_split = "train" if split == "train" else "test"
    sources: dict[str, Any] = {}
    for m, group in (("image", IMAGE_TASKS), ("audio", AUDIO_TASKS)):
        if prepared.get(m) is None:
            off = [t for t in group if weights.get(t, 0) > 0]
            if off:
                _log(verbose and split == "train", f"no config.data.{m}_tokenizer: tasks {off} are off")
            weights.update({t: 0.0 for t in group})
        else:
            check_vocab(vocab, m, prepared[m]["tokenizer"], f"of {prepared[m]['dataset']}")
            sources[m] = token_source(prepared[m], token_split)
    lm_docs = None
    if weights.get("lm", 0) > 0:
        if prepared.get("lm") is None:
            raise ValueError(f"config.data.tasks.lm={weights['lm']} but there are no LM documents: set "
                             "config.data.lm_data_dir or config.model.base_lm_workdir (an LM run), or tasks.lm=0")
        lm_split = "train" if split == "train" else "eval"
        try:
            lm_docs = tfds.data_source(prepared["lm"]["dataset"], split=lm_split, data_dir=prepared["lm"]["tfds_dir"])
        except Exception as e:  # noqa: BLE001 - tfds raises several types for a missing split
            if split == "train":
                raise
            _log(verbose, f"the LM data has no eval split ({type(e).__name__}): eval leaves out task 'lm'")
            weights["lm"] = 0.0
    return TealTaskStream(
        vocab=vocab, text_tokenizer=TextTokenizer.load(prepared["text_tokenizer"]), tasks=weights, split=split,
        batch_size=batch_size, seq_len=int(d.seq_len), seed=seed, image=sources.get("image"),
        audio=sources.get("audio"), lm_docs=lm_docs, cond_dropout=float(d.get("cond_dropout", 0.1)),
        process_index=process_index, process_count=process_count,
        loss_normalization=str(d.get("loss_normalization", "token")))
