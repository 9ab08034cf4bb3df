"""Local text files (jsonl/txt) as a tfds dataset in array_record format (no TensorFlow).

``LocalTextCorpus`` is a ``tfds.core.GeneratorBasedBuilder`` whose config carries the corpus files, the jsonl text
field and the split parameters. The config name is a digest of all of them (the files' contents included), so a
changed corpus builds a new dataset next to the old one instead of silently reusing it (file names and
contents count, directories do not):
``<data_dir>/local_text_corpus/<config name>/1.0.0/local_text_corpus-{train,eval}.array_record-*``.

Splits: documents are numbered in corpus order (files sorted, then line order; blank lines skipped); a seeded
permutation (``split_seed``) sends ``round(n * eval_fraction)`` of them (at least one when ``eval_fraction > 0``) to
``'eval'`` and the rest to ``'train'``. Each record is ``{'text': str, 'index': int64}``; ``index`` is the document's
number, which lets tests prove the splits are disjoint and complete. Records are stored in corpus order
(``disable_shuffling``): the reader shuffles.

Reading needs no builder code: ``tfds.data_source('local_text_corpus/<config name>', data_dir=..., split=...)``
finds the prepared files (tfds loads a dataset from its files when the named config is not one of the class's own).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from teal_jax.data import tfds_build
from teal_jax.media.text import read_documents

DATASET_NAME = "local_text_corpus"


class TextCorpusConfig(tfds.core.BuilderConfig):
    """Which files, which jsonl field, and how to split. Build one with :func:`text_corpus_config`."""

    def __init__(self, *, files: Sequence[str], text_field: str, eval_fraction: float, split_seed: int, name: str):
        super().__init__(name=name, description=f"{len(files)} local text file(s), field {text_field!r}, "
                         f"eval_fraction={eval_fraction}, split_seed={split_seed}")
        self.files = tuple(files)
        self.text_field = text_field
        self.eval_fraction = eval_fraction
        self.split_seed = split_seed


def _digest(files: Sequence[str], text_field: str, eval_fraction: float, split_seed: int) -> str:
    h = hashlib.sha256(repr((text_field, float(eval_fraction), int(split_seed))).encode())
    for path in files:
        h.update(os.path.basename(path).encode() + b"\0")  # not the directory: a moved corpus is the same corpus
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def text_corpus_config(files: Sequence[str], *, text_field: str = "text", eval_fraction: float = 0.02,
                       split_seed: int = 0) -> TextCorpusConfig:
    """Validates the arguments and names the config ``c<digest>`` (see the module docstring)."""
    if not files:
        raise ValueError("text_corpus_config: no corpus files given")
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"corpus file {path} does not exist")
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"data.eval_fraction={eval_fraction} must be in [0, 1)")
    files = tuple(os.path.abspath(f) for f in files)
    name = "c" + _digest(files, text_field, eval_fraction, split_seed)
    return TextCorpusConfig(files=files, text_field=text_field, eval_fraction=eval_fraction, split_seed=split_seed,
                            name=name)


def split_indices(num_docs: int, eval_fraction: float, split_seed: int) -> dict[str, np.ndarray]:
    """Sorted document numbers of each split (a seeded permutation; see the module docstring)."""
    num_eval = int(round(num_docs * eval_fraction))
    if eval_fraction > 0 and num_docs > 1:
        num_eval = min(max(num_eval, 1), num_docs - 1)
    perm = np.random.default_rng(split_seed).permutation(num_docs)
    return {"eval": np.sort(perm[:num_eval]), "train": np.sort(perm[num_eval:])}


class LocalTextCorpus(tfds.core.GeneratorBasedBuilder):
    """Documents from local jsonl/txt files; splits 'train' and 'eval' (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "index": np.int64}),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # local files: nothing to download
        cfg = self.builder_config
        # One validating pass first: bad input fails here with file:line, before tfds starts writing.
        num_docs = sum(1 for _ in read_documents(cfg.files, cfg.text_field))
        if num_docs == 0:
            raise ValueError(f"corpus files {list(cfg.files)} hold no documents")
        splits = split_indices(num_docs, cfg.eval_fraction, cfg.split_seed)
        return {name: self._generate_examples(idx) for name, idx in splits.items() if len(idx)}

    def _generate_examples(self, indices: np.ndarray):
        cfg = self.builder_config
        wanted = np.zeros(int(indices.max()) + 1, bool)
        wanted[indices] = True
        for i, (_, _, text) in enumerate(read_documents(cfg.files, cfg.text_field)):
            if i < len(wanted) and wanted[i]:
                yield i, {"text": text, "index": i}


def build_text_dataset(files: Sequence[str], data_dir: str, *, text_field: str = "text", eval_fraction: float = 0.02,
                       split_seed: int = 0) -> str:
    """Builds the dataset once (later calls find the files and return at once); returns its tfds name
    ``'local_text_corpus/<config name>'`` for ``tfds.data_source(name, data_dir=data_dir, split=...)``."""
    config = text_corpus_config(files, text_field=text_field, eval_fraction=eval_fraction, split_seed=split_seed)
    os.makedirs(data_dir, exist_ok=True)
    builder = LocalTextCorpus(data_dir=data_dir, config=config, file_format="array_record")
    if not builder.is_prepared():
        tfds_build.prepare(builder)
    return f"{DATASET_NAME}/{config.name}"


def dataset_dir(data_dir: str, dataset: str) -> str:
    """Where ``build_text_dataset`` put ``dataset`` ('local_text_corpus/<config name>') under ``data_dir``."""
    return os.path.join(data_dir, dataset, str(LocalTextCorpus.VERSION))
