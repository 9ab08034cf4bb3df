"""Run lineage: which base LM, text tokenizer and LM documents a run points to.

A TEAL run names its base through ``config.model.base_lm_workdir`` (a text-LM run, or a TEAL run it continues) or
``config.model.base_lm_hf`` (a HF Llama directory). Training (data preparation, the objective's base weights),
loading (``teal_jax.load``) and evaluation (the base LM's perplexity) all follow that chain; this module is the one
place that does, reading only saved run configs (and, for :func:`load_base`, checkpoints).

* :func:`lm_run_text_tokenizer`: the SentencePiece model a text-LM run used.
* :func:`lm_ancestor`: ``(workdir, config)`` of the run behind ``base_lm_workdir``, TEAL continuations followed.
* :func:`text_tokenizer`: a TEAL run's SentencePiece model.
* :func:`lm_data`: the tfds text documents of the base LM (for TEAL's text task).
* :func:`load_base`: the base parameters, ``('lm', lm_params)`` or ``('teal', teal_params)``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from teal_jax import checkpoint
from teal_jax import paths as paths_lib

MAX_CHAIN = 8  # TEAL runs continuing TEAL runs: at most this many links are followed
LM_DATA_MANIFEST = "lm_data.json"  # written by teal_jax.data.lm.prepare_lm_data into a text run's data dir


def _is_teal(config) -> bool:
    return config.get("objective", "lm") == "teal"


def lm_run_text_tokenizer(workdir: str, config) -> str | None:
    """The SentencePiece model a text run used: ``config.data.tokenizer_model``, else the one its data preparation
    recorded in ``<data_dir>/lm_data.json``; None when there is neither."""
    data = config.get("data") or {}
    path = data.get("tokenizer_model")
    if path:
        return path
    data_dir = data.get("data_dir") or paths_lib.data_dir(workdir)
    manifest = os.path.join(data_dir, LM_DATA_MANIFEST)
    if os.path.isfile(manifest):
        with open(manifest) as f:
            return json.load(f).get("tokenizer_model")
    return None


def lm_ancestor(model_cfg) -> tuple[str | None, Any]:
    """``(workdir, config)`` of the run behind ``model.base_lm_workdir``: a text-LM run, or the first TEAL run of
    the chain that names its text tokenizer, LM data or HF base itself; ``(None, None)`` when none is named."""
    workdir = model_cfg.get("base_lm_workdir") if model_cfg is not None else None
    for _ in range(MAX_CHAIN):
        if not workdir:
            return None, None
        if not paths_lib.isdir(workdir):
            raise ValueError(f"config.model.base_lm_workdir={workdir!r}: no such directory")
        try:
            cfg = checkpoint.read_config(workdir)
        except FileNotFoundError as e:
            raise ValueError(f"config.model.base_lm_workdir={workdir!r}: {e}") from e
        if not _is_teal(cfg):
            return workdir, cfg
        d = cfg.data
        if d.get("text_tokenizer") or d.get("lm_data_dir") or cfg.model.get("base_lm_hf"):
            return workdir, cfg  # a TEAL run that named them explicitly, or one on a HF checkpoint
        workdir = cfg.model.get("base_lm_workdir")
    raise ValueError(f"config.model.base_lm_workdir: more than {MAX_CHAIN} chained TEAL runs")


def text_tokenizer(config: ml_collections.ConfigDict, *, run: str = "") -> str:
    """A TEAL run's SentencePiece model (absolute path): ``data.text_tokenizer``, else the base LM's (a TEAL base is
    followed to its LM), else ``<model.base_lm_hf>/tokenizer.model`` (this run's, or that of the TEAL run it
    continues). ``run`` names the run in errors. Raises FileNotFoundError when none is found or the file is
    missing."""
    where = f"{run}: " if run else ""
    path = (config.get("data") or {}).get("text_tokenizer")
    if not path:
        try:
            workdir, cfg = lm_ancestor(config.model)
        except ValueError as e:
            raise FileNotFoundError(f"{where}config.data.text_tokenizer is '' and the base LM cannot be read ({e})"
                                    ) from e
        if cfg is not None and _is_teal(cfg):
            path = cfg.data.get("text_tokenizer")
        elif workdir:
            path = lm_run_text_tokenizer(workdir, cfg)
        hf = config.model.get("base_lm_hf")
        if not hf and cfg is not None and _is_teal(cfg):
            hf = cfg.model.get("base_lm_hf")  # e.g. stage 2 continuing a stage-1 run on a HF checkpoint
        if not path and hf and os.path.isfile(os.path.join(hf, "tokenizer.model")):
            path = os.path.join(hf, "tokenizer.model")
    if not path:
        raise FileNotFoundError(
            f"{where}no text tokenizer: config.data.text_tokenizer is '' and none was found through "
            f"config.model.base_lm_workdir={config.model.get('base_lm_workdir')!r} / "
            f"base_lm_hf={config.model.get('base_lm_hf')!r}; set config.data.text_tokenizer to the SentencePiece "
            ".model path (or base_lm_workdir to an LM run whose data preparation recorded one)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{where}config.data.text_tokenizer: SentencePiece model {path} does not exist")
    return os.path.abspath(path)


def lm_data(config: ml_collections.ConfigDict) -> dict[str, str] | None:
    """``{'dataset', 'tfds_dir'}`` of the LM text documents (``data.lm_data_dir``, else the base LM run's data
    dir), or None when there are none."""
    d = config.data.get("lm_data_dir")
    if not d:
        workdir, cfg = lm_ancestor(config.model)
        if cfg is None:
            return None
        if _is_teal(cfg):
            d = cfg.data.get("lm_data_dir")
        elif cfg.data.get("kind", "text") == "text":
            d = cfg.data.get("data_dir") or paths_lib.data_dir(workdir)
        if not d:
            return None  # e.g. a base LM trained on synthetic tokens: no documents
    manifest = os.path.join(d, LM_DATA_MANIFEST)
    if not os.path.isfile(manifest):
        raise FileNotFoundError(f"LM data dir {d} has no {LM_DATA_MANIFEST} (config.data.lm_data_dir or the base "
                                "LM's data dir): prepare the LM data first (teal_jax.data.lm.prepare_lm_data)")
    with open(manifest) as f:
        paths = json.load(f)
    return {"dataset": paths["dataset"], "tfds_dir": paths["tfds_dir"]}


def load_base(workdir: str) -> tuple[str, ml_collections.ConfigDict, Any]:
    """``(kind, run_config, params['model'])`` of an 'lm' or 'teal' checkpoint (kind is its objective); any other
    objective is a ValueError naming the workdir."""
    config, params, _ = checkpoint.load_params(workdir)
    kind = config.get("objective", "lm")
    if kind not in ("lm", "teal"):
        raise ValueError(f"{workdir}: checkpoint of objective {kind!r}, expected 'lm' or 'teal'")
    return kind, config, params["model"]


def load_base_lm_params(workdir: str) -> Any:
    """The text LM parameters of a checkpoint: an 'lm' run's ``params['model']``, a 'teal' run's
    ``params['model']['lm']``."""
    kind, _, params = load_base(workdir)
    return params if kind == "lm" else params["lm"]
