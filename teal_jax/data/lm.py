"""LM data from a config: prepare once (corpus, SentencePiece model, tfds dataset), then iterate packed batches.

``prepare_lm_data(config.data, workdir)`` is idempotent and resumable: each artefact is written under a temporary
name and renamed, so a killed run leaves either nothing or a finished file, and the next call does only what is
missing. A call that finds everything prepared reads one small manifest and returns. On-disk layout::

    <data_dir>/                          data.data_dir, or <workdir>/data
      lm_data.json                       manifest: the paths below + the settings they were made with
      corpus/generated_n<N>_s<seed>.jsonl   only when data.corpus == 'generated'
      tokenizer/spm.model, spm.vocab     SentencePiece model (unless data.tokenizer_model is given)
      tokenizer/spm.json                 what it was trained on; a later call with other settings is an error
      tfds/local_text_corpus/c<digest>/1.0.0/local_text_corpus-{train,eval}.array_record-*

``make_lm_iterator(config.data, split, batch_size=..., seq_len=..., ...)`` returns a
:class:`~teal_jax.data.iterator.GrainBatches` (see :mod:`teal_jax.data.pipeline` for the batch layout and the
resume semantics). The data config fields and their defaults are :func:`default_data_config`; docs/data.md
describes each.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import ml_collections
from ml_collections import config_dict

from teal_jax import paths as paths_lib
from teal_jax.data import text_corpus
from teal_jax.data.iterator import GrainBatches
from teal_jax.lineage import LM_DATA_MANIFEST
from teal_jax.media.text import resolve_corpus_files

MANIFEST = LM_DATA_MANIFEST
SPLITS = ("train", "eval")


def default_data_config() -> ml_collections.ConfigDict:
    """Every field the LM data path reads, with its default (configs may set a subset; missing ones default)."""
    return ml_collections.ConfigDict(dict(
        kind="text",
        corpus="generated",  # 'generated' or paths/globs (comma-separated) of .jsonl/.txt files
        text_field="text",  # the jsonl field holding a document
        num_docs=20_000,  # generated corpus only
        corpus_seed=0,  # generated corpus only
        vocab_size=1024,  # SentencePiece size to train; an existing model must not exceed it
        tokenizer_model=config_dict.placeholder(str),  # None: train one into <data_dir>/tokenizer
        tokenizer_type="bpe",
        data_dir=config_dict.placeholder(str),  # None: <workdir>/data
        seq_len=128,
        eval_fraction=0.02,
        split_seed=0,
        shuffle_seed=config_dict.placeholder(int),  # None: the run's config.seed
        num_epochs=config_dict.placeholder(int),  # train split; None: repeat forever
        add_bos=True,
        add_eos=True,
        packing="concat",  # 'concat' (concat-then-split) or 'first_fit'
        packing_bins=16,  # first_fit only
    ))


def _get(data_config, key: str) -> Any:
    default = default_data_config()[key]
    value = data_config.get(key, default) if data_config is not None else default
    return default if value is None and default is not None else value


def resolve_data_dir(data_config, workdir: str | None = None, data_dir: str | None = None) -> str:
    d = data_dir or _get(data_config, "data_dir") or (paths_lib.data_dir(workdir) if workdir else None)
    if not d:
        raise ValueError("no data directory: set data.data_dir or pass a workdir")
    return paths_lib.require_local(d, "data.data_dir")


def _log(verbose: bool, msg: str) -> None:
    if verbose:
        print(f"[lm data] {msg}", flush=True)


def _corpus_files(data_config, data_dir: str, verbose: bool) -> list[str]:
    spec = _get(data_config, "corpus")
    if spec != "generated":
        return resolve_corpus_files(spec, field="data.corpus")
    n, seed = int(_get(data_config, "num_docs")), int(_get(data_config, "corpus_seed"))
    if n < 2:
        raise ValueError(f"data.num_docs={n} must be >= 2 (a train and an eval document)")
    path = os.path.join(data_dir, "corpus", f"generated_n{n}_s{seed}.jsonl")
    if not os.path.isfile(path):
        t0 = time.time()
        text_corpus.write_corpus(path, n, seed)
        _log(verbose, f"wrote {n} generated documents to {path} ({time.time() - t0:.1f}s)")
    return [path]


def _tokenizer(data_config, data_dir: str, files: list[str], verbose: bool) -> tuple[str, int]:
    from teal_jax.tokenizers.text import TextTokenizer

    vocab_size = int(_get(data_config, "vocab_size"))
    given = _get(data_config, "tokenizer_model")
    if given:
        tok = TextTokenizer.load(given)
        if tok.vocab_size > vocab_size:
            raise ValueError(f"data.tokenizer_model={given} has {tok.vocab_size} pieces but data.vocab_size="
                             f"{vocab_size}: the LM vocabulary must hold every text id")
        return os.path.abspath(given), tok.vocab_size
    prefix = os.path.join(data_dir, "tokenizer", "spm")
    # What the model was trained on, independent of where the data dir lives (it may be copied or moved).
    corpus = _get(data_config, "corpus")
    source = ({"corpus": corpus, "num_docs": int(_get(data_config, "num_docs")),
               "corpus_seed": int(_get(data_config, "corpus_seed"))} if corpus == "generated"
              else {"corpus_files": files})
    settings = {**source, "vocab_size": vocab_size, "model_type": _get(data_config, "tokenizer_type"),
                "text_field": _get(data_config, "text_field")}
    if os.path.isfile(prefix + ".model") and os.path.isfile(prefix + ".json"):
        with open(prefix + ".json") as f:
            trained = json.load(f)
        if trained != settings:
            diff = {k: (trained.get(k), settings.get(k)) for k in sorted(set(trained) | set(settings))
                    if trained.get(k) != settings.get(k)}
            raise ValueError(f"{prefix}.model was trained with other settings (trained vs now: {diff}); "
                             "use a fresh data.data_dir or delete that tokenizer directory")
        return prefix + ".model", TextTokenizer.load(prefix + ".model").vocab_size
    t0 = time.time()
    tok = TextTokenizer.train(files, vocab_size, prefix, text_field=settings["text_field"],
                              model_type=settings["model_type"])
    with open(prefix + ".json.tmp", "w") as f:
        json.dump(settings, f, indent=1)
    os.replace(prefix + ".json.tmp", prefix + ".json")
    _log(verbose, f"trained a {tok.vocab_size}-piece SentencePiece model {prefix}.model ({time.time() - t0:.1f}s)")
    return prefix + ".model", tok.vocab_size


def _settings(data_config, data_dir: str) -> dict[str, Any]:
    keys = ("corpus", "text_field", "num_docs", "corpus_seed", "vocab_size", "tokenizer_model", "tokenizer_type",
            "eval_fraction", "split_seed")
    return {"data_dir": data_dir, **{k: _get(data_config, k) for k in keys}}


def prepare_lm_data(data_config, workdir: str | None = None, *, data_dir: str | None = None,
                    verbose: bool = True) -> dict[str, Any]:
    """Writes what is missing (corpus, tokenizer, tfds dataset) and returns the paths.

    Returns ``{'data_dir', 'tfds_dir', 'corpus_files', 'tokenizer_model', 'text_vocab_size', 'dataset'}`` where
    ``dataset`` is the tfds name for ``tfds.data_source(dataset, data_dir=tfds_dir, split='train'|'eval')``.
    """
    data_dir = resolve_data_dir(data_config, workdir, data_dir)
    settings = _settings(data_config, data_dir)
    manifest = os.path.join(data_dir, MANIFEST)
    if os.path.isfile(manifest):
        with open(manifest) as f:
            paths = json.load(f)
        ready = paths.get("settings") == settings and all(
            os.path.exists(p) for p in [*paths["corpus_files"], paths["tokenizer_model"], paths["dataset_dir"]])
        if ready:
            return paths

    t0 = time.time()
    files = _corpus_files(data_config, data_dir, verbose)
    tokenizer_model, text_vocab_size = _tokenizer(data_config, data_dir, files, verbose)
    from teal_jax.data.text_builder import build_text_dataset, dataset_dir

    tfds_dir = os.path.join(data_dir, "tfds")
    t1 = time.time()
    dataset = build_text_dataset(files, tfds_dir, text_field=_get(data_config, "text_field"),
                                 eval_fraction=float(_get(data_config, "eval_fraction")),
                                 split_seed=int(_get(data_config, "split_seed")))
    _log(verbose, f"tfds dataset {dataset} ready under {tfds_dir} ({time.time() - t1:.1f}s)")
    paths = {"data_dir": data_dir, "tfds_dir": tfds_dir, "corpus_files": files, "tokenizer_model": tokenizer_model,
             "text_vocab_size": text_vocab_size, "dataset": dataset,
             "dataset_dir": dataset_dir(tfds_dir, dataset), "settings": settings}
    with open(manifest + ".tmp", "w") as f:
        json.dump(paths, f, indent=1)
    os.replace(manifest + ".tmp", manifest)
    _log(verbose, f"prepared in {time.time() - t0:.1f}s; manifest {manifest}")
    return paths


def make_lm_iterator(
    data_config,
    split: str,
    *,
    batch_size: int,
    seq_len: int,
    process_index: int = 0,
    process_count: int = 1,
    seed: int = 0,
    data_dir: str | None = None,
    workdir: str | None = None,
    num_epochs: int | None = None,
) -> GrainBatches:
    """Host-local packed batches of ``split`` ('train' or 'eval'): ``{key: [batch_size, seq_len]}``.

    Prepares the data first if needed (a no-op after :func:`prepare_lm_data`). Train: shuffled with
    ``data.shuffle_seed`` (default ``seed``), ``data.num_epochs`` epochs (default forever). Eval: corpus order,
    ``num_epochs`` (default forever, so every host yields as many batches as asked for).
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: the LM dataset has splits {SPLITS}")
    import tensorflow_datasets as tfds

    from teal_jax.data.pipeline import text_dataset

    paths = prepare_lm_data(data_config, workdir, data_dir=data_dir, verbose=process_index == 0)
    if split == "eval" and float(_get(data_config, "eval_fraction")) <= 0:
        raise ValueError("data.eval_fraction=0: there is no eval split; set it > 0 or disable evaluation")
    source = tfds.data_source(paths["dataset"], data_dir=paths["tfds_dir"], split=split)
    train = split == "train"
    shuffle_seed = _get(data_config, "shuffle_seed")
    epochs = num_epochs if num_epochs is not None else (_get(data_config, "num_epochs") if train else None)
    ds = text_dataset(
        source, tokenizer_model=paths["tokenizer_model"], batch_size=batch_size, seq_len=seq_len, train=train,
        seed=int(seed if shuffle_seed is None else shuffle_seed), process_index=process_index,
        process_count=process_count, num_epochs=epochs, text_key="text", add_bos=bool(_get(data_config, "add_bos")),
        add_eos=bool(_get(data_config, "add_eos")), packing=_get(data_config, "packing"),
        packing_bins=int(_get(data_config, "packing_bins")),
    )
    return GrainBatches(ds, "text")
