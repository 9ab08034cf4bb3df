"""``teal_jax.load(workdir)``: a trained run, ready for inference in Python.

What comes back depends on what the workdir trained (``config.objective``); every result follows
:class:`teal_jax.inference.protocol.Model` (``kind``, ``run_config``, ``workdir``, ``sample``):

  'lm'           -> :class:`teal_jax.inference.lm.LanguageModel` (``.generate(texts)``, ``.logits(tokens)``)
  'image_vq'     -> an ImageTokenizer (:class:`teal_jax.inference.tokenizer_runs.ImageTokenizerRun`)
  'audio_codec'  -> an AudioTokenizer (:class:`teal_jax.inference.tokenizer_runs.AudioTokenizerRun`)
  'teal'         -> :class:`teal_jax.inference.teal.TealModel`
  'kmeans_tokenizer' -> the fitted semantic input tokenizer
                    (:class:`teal_jax.inference.tokenizer_runs.KMeansTokenizerRun`)
"""

from __future__ import annotations

import importlib
import os

import ml_collections

from teal_jax import checkpoint

_LOADERS = {
    "lm": "teal_jax.inference.lm:LanguageModel",
    "image_vq": "teal_jax.inference.tokenizer_runs:ImageTokenizerRun",
    "audio_codec": "teal_jax.inference.tokenizer_runs:AudioTokenizerRun",
    "teal": "teal_jax.inference.teal:TealModel",
    "kmeans_tokenizer": "teal_jax.inference.tokenizer_runs:KMeansTokenizerRun",
}


def load(workdir: str, step: int | None = None):
    """Loads the newest (or ``step``) checkpoint of ``workdir`` as a ready-to-use model; see the module docstring.
    Raises FileNotFoundError without a checkpoint, ValueError for an objective without a loader."""
    config = checkpoint.read_config(workdir, step)
    kind = config.get("objective", "lm")
    if kind not in _LOADERS:
        raise ValueError(f"{workdir}: config.objective={kind!r} has no loader; known: {sorted(_LOADERS)}")
    module, name = _LOADERS[kind].split(":")
    cls = getattr(importlib.import_module(module), name)
    return cls.from_checkpoint(workdir, step) if step is not None else cls.from_checkpoint(workdir)


def config_path(config: ml_collections.ConfigDict, field: str) -> str:
    """``config.data.<field>`` as a string ('' when unset)."""
    data = config.get("data") or {}
    value = data.get(field) if hasattr(data, "get") else None
    return os.fspath(value) if value else ""


def load_tokenizer(kind: str, path: str):
    """The ImageTokenizer ('image') / AudioTokenizer ('audio') of the workdir ``path`` named by
    ``config.data.<kind>_tokenizer``; errors name that field."""
    field = f"config.data.{kind}_tokenizer"
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{field}={path!r}: no such directory (expected the workdir of an "
                                f"{'image_vq' if kind == 'image' else 'audio_codec'} training run)")
    if kind == "image":
        from teal_jax.tokenizers.image import ImageTokenizer as cls
    else:
        from teal_jax.tokenizers.audio import AudioTokenizer as cls
    try:
        return cls.from_checkpoint(path)
    except (FileNotFoundError, ValueError, RuntimeError, KeyError) as e:
        raise type(e)(f"{field}={path!r}: cannot load the {kind} tokenizer: {e}") from e
