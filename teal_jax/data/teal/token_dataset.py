"""Pre-tokenization: image/audio sources encoded once by the trained tokenizers into tfds token datasets.

A trained image tokenizer (``ImageTokenizer``) runs over an image source and a trained audio codec
(``AudioTokenizer``) over a speech source (:mod:`teal_jax.data.teal.sources`), once; the codes are written as a tfds
dataset (``TealTokens``, a ``GeneratorBasedBuilder`` in ``array_record`` format, no TensorFlow) under
``tokens_dir``::

    <tokens_dir>/teal_tokens/<modality>_<digest>/1.0.0/teal_tokens-{train,test}.array_record-*
    <tokens_dir>/<modality>_<digest>.json        manifest: dataset name, record counts, skipped clips, source

The config name is a digest of every input: the tokenizer (its config and a hash of its parameters), the source
(kind, name, builder config, keys, split names, record counts) and the audio span. A changed tokenizer or source
therefore builds a new dataset beside the old one; a second call with the same inputs finds the files and does no
tokenization. Records (stored in source order)::

    image: codes int32 [h*w] (raw tokenizer codes, row-major), label int32 (-1 if none), text str, index int64
    audio: codes int32 [frames, levels] (raw codec codes),       label int32 (-1 if none), text str, index int64

With ``features=True`` (the continuous-feature baseline, an input-only k-means tokenizer's encoder read before
quantisation: ``encode_features``) ``codes`` holds float32 features ``[h*w, D]`` / ``[frames, D]`` instead. An input
tokenizer's dataset is built from the same source in the same order as the output tokenizer's, so record ``i`` of
both is the same image / clip (the task stream checks their ``index`` fields agree).

``text`` is the caption / transcript (digits: the digit word ``templates.DIGITS[label]``); a source with several
captions per image (coco_captions) stores them all, one per line, and the stream draws one per example. ``index``
is the record's position in its source split. Audio clips are made fixed-length before encoding
(``templates.audio_span`` + ``templates.fit_audio``: start-aligned, zero-padded), so every stored clip has exactly
``frames`` frames; a clip longer than the span is skipped (counted and printed), never truncated, because a cut clip
would no longer match its transcript. Tokenizer calls are batched with a fixed batch size (the last batch is padded),
so each tokenizer compiles once. Token splits are always ``'train'`` and ``'test'`` (the source's held-out split).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

from teal_jax.data import templates as templates_lib
from teal_jax.data import tfds_build
from teal_jax.data.teal import sources as sources_lib
from teal_jax.data.teal.config import log, source_dict
from teal_jax.data.teal.sources import SPLITS

DATASET_NAME = "teal_tokens"
FORMAT_VERSION = 1  # part of every digest: bump when the stored records change meaning


# ---- tokenizer fingerprints ------------------------------------------------------------------------------------
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
                 generate: Callable[[str], Iterator[tuple[int, dict[str, Any]]]], description: str,
                 code_dtype=np.int32):
        super().__init__(name=name, description=description)
        self.modality, self.code_shape, self.generate = modality, tuple(code_shape), generate
        self.code_dtype = code_dtype


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
                "codes": tfds.features.Tensor(shape=cfg.code_shape, dtype=cfg.code_dtype),
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
        tfds_build.prepare(builder)
        log(verbose, f"{DATASET_NAME}/{config.name}: {dict(stats['records'])} records, skipped "
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
            log(True, f"{self.what}: {done}/{self.total} ({done / max(now - self.t0, 1e-9):.0f}/s)")


def pretokenize_images(tokenizer: Any, source: Mapping[str, Any], tokens_dir: str, *,
                       data_dir: str | None = None, sources: Mapping[str, Sequence] | None = None,
                       batch_size: int = 32, verbose: bool = True, features: bool = False) -> dict[str, Any]:
    """Encodes every image of the source's train/test splits once (``features``: stores the tokenizer's
    ``encode_features`` instead of its codes, see the module docstring); returns the manifest
    ``{'dataset', 'tfds_dir', 'modality', 'code_shape': [h*w], 'records': {split: n}, 'skipped', 'source',
    'tokenizer'}``. ``sources`` (``{'train': seq, 'test': seq}``) replaces opening the source (tests, in-memory
    data); ``data_dir`` is the default data dir of a 'digits' source."""
    from teal_jax.data.image_pipeline import random_affine
    from teal_jax.media.image import center_crop_resize, convert_channels

    src = source_dict(source, "image")
    cfg = tokenizer.config
    size, channels = int(cfg.image_size), int(cfg.in_channels)
    if sources is None:
        sources = sources_lib.open_sources(src, "image", data_dir=data_dir, image_size=size)
    h, w = tokenizer.token_grid
    tok_info = {"fingerprint": tokenizer_fingerprint(tokenizer), "codebook_size": int(tokenizer.vocab_size),
                "token_grid": [int(h), int(w)], "image_size": size}
    if features:
        tok_info["features"] = int(tokenizer.feature_dim)
    ident = sources_lib.source_identity(src, sources)
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
            img = convert_channels(np.asarray(sources_lib.field(rec, key, "config.data.image_source.image_key")),
                                   channels, name=f"{split} record {i}")
            label, text = sources_lib.record_meta(rec, src, "image")
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
            if features:
                codes = np.asarray(tokenizer.encode_features(images), np.float32)  # [batch, h*w, D]
            else:
                codes = np.asarray(tokenizer.encode(images)).reshape(batch_size, -1).astype(np.int32)
            for j, (k, _, label, text) in enumerate(batch):
                yield k, {"codes": codes[j], "label": np.int32(label), "text": text, "index": np.int64(k % n)}
            done += len(batch)
            progress.update(done)
        stats["records"][split], stats["skipped"][split] = done, 0

    shape = (int(h) * int(w), int(tokenizer.feature_dim)) if features else (int(h) * int(w),)
    config = TealTokensConfig(name=name, modality="image", code_shape=shape, generate=generate,
                              description=f"image {'features' if features else 'codes'} of {ident}",
                              code_dtype=np.float32 if features else np.int32)
    return _build(tokens_dir, config, stats, {"source": ident, "tokenizer": tok_info}, verbose)


def pretokenize_audio(tokenizer: Any, source: Mapping[str, Any], tokens_dir: str, *, seconds: float,
                      data_dir: str | None = None, sources: Mapping[str, Sequence] | None = None,
                      batch_size: int = 32, verbose: bool = True, features: bool = False) -> dict[str, Any]:
    """Encodes every clip that fits one span of ``seconds`` (``templates.audio_span``; longer clips are skipped and
    counted) of the source's train/test splits once. Returns the manifest (as :func:`pretokenize_images`, with
    ``code_shape`` [frames, levels] and ``seconds``; ``features``: [frames, D] float32 features, see the module
    docstring)."""
    from teal_jax.data.speech import RecordAdapter

    src = source_dict(source, "audio")
    cfg = tokenizer.config
    rate, hop, levels = int(tokenizer.sample_rate), int(cfg.hop_length), int(tokenizer.num_levels)
    frames, samples = templates_lib.audio_span(seconds, rate, hop)
    if sources is None:
        sources = sources_lib.open_sources(src, "audio", data_dir=data_dir)
    tok_info = {"fingerprint": tokenizer_fingerprint(tokenizer), "codebook_size": int(tokenizer.codebook_size),
                "num_levels": levels, "sample_rate": rate, "hop_length": hop}
    if features:
        tok_info["features"] = int(tokenizer.feature_dim)
    span = {"seconds": float(seconds), "frames": frames, "samples": samples}
    ident = sources_lib.source_identity(src, sources)
    name = "audio_" + _digest({"format": FORMAT_VERSION, "modality": "audio", "tokenizer": tok_info, "span": span,
                               "source": ident})
    stats: dict[str, Any] = {"records": {}, "skipped": {}}
    shape = (frames, int(tokenizer.feature_dim)) if features else (frames, levels)
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
            if src["audio_key"] not in rec:  # raises, naming the fields
                sources_lib.field(rec, src["audio_key"], "config.data.audio_source.audio_key")
            clip = adapter.map(rec)["audio"]  # int16 [n] at the codec's rate
            if clip.shape[0] > samples:
                return None
            label, text = sources_lib.record_meta(rec, src, "audio")
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
            codes, _ = (tokenizer.encode_features if features else tokenizer.encode)(clips, rate)
            codes = np.asarray(codes, np.float32 if features else np.int32)
            if codes.shape[1:] != shape:
                raise ValueError(f"the audio tokenizer gave {codes.shape[1:]} for {samples} samples, "
                                 f"expected {shape}")
            for j, (i, _, label, text) in enumerate(batch):
                yield i, {"codes": codes[j], "label": np.int32(label), "text": text, "index": np.int64(i)}
            kept += len(batch)
            done = kept + skipped[0]
            progress.update(done)
        stats["records"][split], stats["skipped"][split] = kept, skipped[0]
        if skipped[0]:
            log(verbose, f"audio tokens {split}: skipped {skipped[0]} of {n} clips longer than {seconds} s "
                f"({samples} samples at {rate} Hz)")

    config = TealTokensConfig(name=name, modality="audio", code_shape=shape, generate=generate,
                              description=f"audio {'features' if features else 'codes'} of {ident}, {seconds} s spans",
                              code_dtype=np.float32 if features else np.int32)
    return _build(tokens_dir, config, stats, {"source": ident, "tokenizer": tok_info, "span": span}, verbose)


def token_source(manifest: Mapping[str, Any], split: str):
    """``tfds.data_source`` of a token dataset split ('train' or 'test')."""
    return tfds.data_source(manifest["dataset"], split=split, data_dir=manifest["tfds_dir"])
