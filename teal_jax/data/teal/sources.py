"""Opening the image/audio sources the token datasets are made from, and reading fields of their records.

A source is a ``config.data.image_source`` / ``audio_source`` dict (:func:`teal_jax.data.teal.config.source_dict`):
``kind='digits'`` (:func:`teal_jax.data.digits.build_digits`), ``'spoken_words'``
(:func:`teal_jax.data.speech.build_spoken_words`, ``config`` 'small' | 'medium' | 'tiny') or ``'tfds'``: any
prepared tfds dataset (``name``, ``data_dir``, ``image_key``/``audio_key``, ``text_key``, ``label_key``,
``train_split``, ``eval_split``; keys may be paths into nested features, e.g. coco_captions' ``'captions/text'``;
speech goes through :class:`teal_jax.data.speech.RecordAdapter`, e.g. librispeech's ``speech`` at ``source_rate``
16000). :func:`open_sources` returns random-access splits under our names :data:`SPLITS` (``'test'`` is the source's
held-out split).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from teal_jax import paths
from teal_jax.data import templates as templates_lib
from teal_jax.data.teal.config import source_dict

SPLITS = ("train", "test")  # token dataset splits; the stream's 'eval' reads 'test'


def field(record: Mapping[str, Any], path: str, what: str) -> Any:
    """``record['a']['b']`` for ``path='a/b'``; a missing key raises ValueError naming the path, the fields there and
    ``what`` (the config field to set)."""
    value: Any = record
    for part in path.split("/"):
        if not isinstance(value, Mapping) or part not in value:
            fields = sorted(value) if isinstance(value, Mapping) else type(value).__name__
            raise ValueError(f"record has no field {path!r} (at {part!r}: fields {fields}); set {what}")
        value = value[part]
    return value


def as_text(value: Any) -> str:
    """A str, bytes, or a list/array of them (several captions) -> one str, captions one per line."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str):
        return value
    arr = np.asarray(value)
    if arr.ndim == 0:
        return as_text(arr.item())
    return "\n".join(as_text(v).replace("\n", " ") for v in arr.reshape(-1))


def record_meta(record: Mapping[str, Any], source: dict[str, Any], modality: str) -> tuple[int, str]:
    """(label, text) of a source record: label -1 without ``label_key`` (or a non-scalar label); text from
    ``text_key``, else the digit word of the label for 'digits', else ''."""
    what = f"config.data.{modality}_source"
    label = -1
    if source["label_key"]:
        value = np.asarray(field(record, source["label_key"], f"{what}.label_key"))
        label = int(value) if value.ndim == 0 else -1
    if source["text_key"]:
        text = as_text(field(record, source["text_key"], f"{what}.text_key"))
    elif source["kind"] == "digits":
        text = templates_lib.DIGITS[label]
    else:
        text = ""
    return label, text


def source_identity(source: dict[str, Any], sources: Mapping[str, Sequence]) -> dict[str, Any]:
    """What the token dataset depends on (not where the source lives: a moved dataset is the same dataset): every
    source field but ``data_dir``, plus ``lengths`` ``{split: records}``."""
    ident = {k: v for k, v in source.items() if k != "data_dir"}
    ident["lengths"] = {s: len(sources[s]) for s in SPLITS}
    return ident


def default_data_dir(tokenizer_workdir: str | None, kind: str, fallback: str | None) -> str | None:
    """The data dir of the tokenizer's own training run when it trained on ``kind``, else ``fallback``."""
    if tokenizer_workdir:
        from teal_jax import checkpoint

        try:
            cfg = checkpoint.read_config(tokenizer_workdir)
        except FileNotFoundError:
            cfg = None
        if cfg is not None and cfg.data.get("kind") == kind:
            return cfg.data.get("data_dir") or paths.data_dir(tokenizer_workdir)
    return fallback


def open_sources(source: Mapping[str, Any], modality: str, *, data_dir: str | None = None,
                 image_size: int = 32) -> dict[str, Sequence[dict[str, Any]]]:
    """Random-access sources ``{'train': ..., 'test': ...}`` of a source config (building digits / spoken words
    first if needed). ``data_dir`` overrides an empty ``source['data_dir']``; ``image_size`` picks the digits
    builder config (8, 16, 32 or 64). A split that cannot be opened raises ValueError naming the dataset, the split
    and the data dir."""
    src = source_dict(source, modality)
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
