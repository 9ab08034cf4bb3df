"""Config level of the TEAL task data: the tokenizer runs checked against the vocabulary, pre-tokenization from a
config (:func:`prepare_task_data`, idempotent) and the task stream of a split (:func:`make_task_stream`).

``TealObjective.prepare`` calls :func:`prepare_task_data` once per run; its result (the text tokenizer, the LM
documents from :mod:`teal_jax.lineage`, and one token manifest per modality) is what :func:`make_task_stream` opens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from teal_jax import lineage, paths
from teal_jax.data import templates as templates_lib
from teal_jax.data.teal.config import (
    MODALITY_TASKS,
    log,
    resolve_tokens_dir,
    source_dict,
    task_weights,
    validate_task_data_config,
)
from teal_jax.data.teal.sources import default_data_dir
from teal_jax.data.teal.task_stream import TealTaskStream
from teal_jax.data.teal.token_dataset import pretokenize_audio, pretokenize_images, token_source
from teal_jax.vocab import UnifiedVocab


def tokenizer_run_vocab(workdir: str, modality: str) -> dict[str, int]:
    """Vocabulary sizes of a tokenizer run, from its saved config only: image ``{'codebook_size'}``, audio
    ``{'codebook_size', 'num_levels'}``. A missing run raises ValueError naming the field."""
    from teal_jax import checkpoint

    field = f"config.data.{modality}_tokenizer"
    if not paths.isdir(workdir):
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


def prepare_task_data(config, workdir: str | None, vocab: UnifiedVocab, *, verbose: bool = True,
                      tokenizers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Checks the config against the tokenizers and pre-tokenizes what is missing (idempotent).

    Returns ``{'text_tokenizer': path, 'lm': {'dataset', 'tfds_dir'} | None, 'image': manifest | None,
    'audio': manifest | None}``. ``tokenizers`` (``{'image': ImageTokenizer, 'audio': AudioTokenizer}``) replaces
    loading them from ``data.image_tokenizer`` / ``data.audio_tokenizer`` (tests)."""
    d = config.data
    tokenizers = dict(tokenizers or {})
    tokens_dir = resolve_tokens_dir(d, workdir)
    fallback = paths.data_dir(workdir) if workdir else None
    validate_task_data_config(d)
    lm = lineage.lm_data(config) if task_weights(d.get("tasks")).get("lm", 0) > 0 else None
    out: dict[str, Any] = {"text_tokenizer": lineage.text_tokenizer(config), "lm": lm, "image": None, "audio": None}
    batch = int(d.get("tokenize_batch", 32))
    for m in templates_lib.SPAN_MODALITIES:
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
        source = source_dict(d.get(f"{m}_source"), m)
        data_dir = default_data_dir(run, source["kind"], fallback) if source["kind"] != "tfds" else None
        if m == "image":
            out[m] = pretokenize_images(tok, source, tokens_dir, data_dir=data_dir, batch_size=batch,
                                        verbose=verbose)
        else:
            out[m] = pretokenize_audio(tok, source, tokens_dir, seconds=float(d.get("audio_seconds", 1.0)),
                                       data_dir=data_dir, batch_size=batch, verbose=verbose)
        in_run = d.get(f"{m}_in_tokenizer") or ""
        if in_run:
            out[f"{m}_in"] = _prepare_input(vocab, m, in_run, bool(d.get(f"{m}_in_features", False)), source,
                                            data_dir, tokens_dir, float(d.get("audio_seconds", 1.0)), batch,
                                            verbose)
    for m in templates_lib.SPAN_MODALITIES:
        if out.get(f"{m}_in") is None and getattr(vocab, f"{m}_in_size"):
            raise ValueError(f"config.model.vocab.{m}_in_size={getattr(vocab, f'{m}_in_size')} but "
                             f"config.data.{m}_in_tokenizer is '' (or config.data.{m}_tokenizer is): the input-only "
                             f"{m} ids would never be written")
    return out


def input_sizes(manifest: Mapping[str, Any]) -> dict[str, int]:
    """What an input-only token dataset needs of the vocabulary / model: ``{'ids', 'features'}`` (``ids``: the
    k-means codes, or the span positions of features; ``features``: their width, 0 for codes)."""
    tok = manifest["tokenizer"]
    feats = int(tok.get("features", 0))
    n = int(np.prod(manifest["code_shape"][:-1])) if feats else int(tok["codebook_size"])
    return {"ids": n, "features": feats}


def check_input_vocab(vocab: UnifiedVocab, model_cfg, modality: str, manifest: Mapping[str, Any],
                      where: str) -> None:
    """The vocabulary's input-only range (and ``model.{m}_in_dim`` for features) must match the input tokenizer."""
    sizes = input_sizes(manifest)
    have = getattr(vocab, f"{modality}_in_size")
    what = "span positions of its features" if sizes["features"] else "codes"
    if have != sizes["ids"]:
        raise ValueError(f"config.model.vocab.{modality}_in_size={have} but the {modality} input tokenizer {where} "
                         f"has {sizes['ids']} {what}")
    dim = int((model_cfg.get(f"{modality}_in_dim", 0) if model_cfg is not None else 0) or 0)
    if model_cfg is not None and dim != sizes["features"]:
        raise ValueError(f"config.model.{modality}_in_dim={dim} but the {modality} input tokenizer {where} gives "
                         f"{'features of width ' + str(sizes['features']) if sizes['features'] else 'codes'} "
                         f"(config.data.{modality}_in_features)")


def _prepare_input(vocab: UnifiedVocab, modality: str, run: str, features: bool, source: Mapping[str, Any],
                   data_dir: str | None, tokens_dir: str, seconds: float, batch: int,
                   verbose: bool) -> dict[str, Any]:
    """Pre-tokenizes the source with the input-only tokenizer of ``run`` (a kmeans_tokenizer workdir), the same
    records in the same order as the output tokenizer's dataset."""
    from teal_jax.tokenizers import kmeans

    field = f"config.data.{modality}_in_tokenizer"
    if not paths.isdir(run):
        raise ValueError(f"{field}={run!r}: no such directory (the workdir of a kmeans_tokenizer run)")
    try:
        tok = kmeans.from_checkpoint(run)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise ValueError(f"{field}={run!r}: cannot load the input tokenizer: {e}") from e
    is_audio = hasattr(tok, "sample_rate")
    if is_audio != (modality == "audio"):
        raise ValueError(f"{field}={run!r} is an {'audio' if is_audio else 'image'} tokenizer, not {modality}")
    if modality == "image":
        manifest = pretokenize_images(tok, source, tokens_dir, data_dir=data_dir, batch_size=batch,
                                      verbose=verbose, features=features)
    else:
        manifest = pretokenize_audio(tok, source, tokens_dir, seconds=seconds, data_dir=data_dir, batch_size=batch,
                                     verbose=verbose, features=features)
    check_input_vocab(vocab, None, modality, manifest, f"at {run}")
    return manifest


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
    for m in MODALITY_TASKS:
        if prepared.get(f"{m}_in") is not None and prepared.get(m) is not None:
            check_input_vocab(vocab, config.model, m, prepared[f"{m}_in"], f"of {prepared[f'{m}_in']['dataset']}")
            sources[f"{m}_in"] = token_source(prepared[f"{m}_in"], token_split)
    for m, group in MODALITY_TASKS.items():
        if prepared.get(m) is None:
            off = [t for t in group if weights.get(t, 0) > 0]
            if off:
                log(verbose and split == "train", f"no config.data.{m}_tokenizer: tasks {off} are off")
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
            log(verbose, f"the LM data has no eval split ({type(e).__name__}): eval leaves out task 'lm'")
            weights["lm"] = 0.0
    return TealTaskStream(
        vocab=vocab, text_tokenizer=TextTokenizer.load(prepared["text_tokenizer"]), tasks=weights, split=split,
        batch_size=batch_size, seq_len=int(d.seq_len), seed=seed, image=sources.get("image"),
        audio=sources.get("audio"), image_in=sources.get("image_in"), audio_in=sources.get("audio_in"),
        in_features={m: bool(prepared[f"{m}_in"]["tokenizer"].get("features"))
                     for m in MODALITY_TASKS if prepared.get(f"{m}_in") is not None}, lm_docs=lm_docs,
        cond_dropout=float(d.get("cond_dropout", 0.1)),
        process_index=process_index, process_count=process_count,
        loss_normalization=str(d.get("loss_normalization", "token")))
