"""The contract between the one trainer and the model-specific part of training.

The trainer (``teal_jax.train.trainer``) owns everything that is the same for every model kind: the mesh and
shardings, optimizers (one Optax optimizer per *parameter group*), gradient accumulation, clipping, NaN/Inf detection,
logging, evaluation scheduling and checkpoints. An :class:`Objective` owns everything else: how to build the model and
its data, how to turn a batch into gradients, and what to report.

Parameter groups. ``params`` is always a dict ``{group_name: pytree}``. A language model has one group
(``'model'``); a GAN-trained tokenizer has two (``'model'`` and ``'disc'``). Each group gets its own optimizer,
configured by ``config.optimizer`` with per-group overrides in ``config.optimizers.<group>``.

Non-parameter state (EMA codebook statistics, step counters of a quantizer, ...) lives in ``model_state``: any
pytree of arrays, carried through the train step and checkpointed with the params.

Everything an objective returns from ``grads``/``eval_metrics`` must be traceable: the trainer calls them under
``jax.jit``. Metrics are a flat ``dict[str, scalar]``; names are logged as they are.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from teal_jax.data.iterator import DataIterator

PyTree = Any
Batch = Mapping[str, Any]  # dict of arrays with a leading batch axis
Metrics = dict[str, jax.Array]


class Objective(abc.ABC):
    """Model-specific part of training; see the module docstring."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.workdir: str | None = None

    def prepare(self, workdir: str) -> None:
        """Host-side, idempotent preparation before anything else (build datasets, train a text tokenizer, ...).

        Called by the trainer on every process (process 0 first, then the others after a barrier); sets
        ``self.workdir``. Overrides should call ``super().prepare(workdir)``.
        """
        self.workdir = workdir

    # ---- model -------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def init(self, rng: jax.Array, batch: Batch) -> tuple[dict[str, PyTree], PyTree]:
        """Returns ``(params, model_state)``; ``params`` is ``{group: tree}``.

        Leaves may be ``flax.linen.Partitioned`` boxes carrying logical axis names; the trainer reads the names to
        shard them and unboxes them. ``batch`` is an example (global) batch used for shapes only.
        """

    @abc.abstractmethod
    def grads(
        self, params: dict[str, PyTree], model_state: PyTree, batch: Batch, rng: jax.Array, step: jax.Array
    ) -> tuple[dict[str, PyTree], PyTree, Metrics]:
        """Returns ``(grads, new_model_state, metrics)`` for one (micro)batch.

        ``grads`` has the structure of ``params``. ``metrics`` must contain ``'loss'`` (the trainer checks it for
        NaN/Inf). Metrics are averaged over gradient-accumulation microbatches.
        """

    def eval_metrics(self, params: dict[str, PyTree], model_state: PyTree, batch: Batch) -> Metrics:
        """Metrics on one eval batch (averaged over batches by the trainer). Default: none."""
        return {}

    def trainable(self, params: dict[str, PyTree]) -> dict[str, PyTree]:
        """A tree of Python bools, same structure as ``params``: False leaves are frozen (bit-identical after
        training; no optimizer state). Default: everything trains."""
        return jax.tree.map(lambda _: True, params)

    # ---- data --------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def make_data(self, split: str, *, batch_size: int, process_index: int, process_count: int) -> DataIterator:
        """A host-local iterator for ``split`` ('train' or 'eval'); ``batch_size`` is this host's share."""

    # ---- accounting --------------------------------------------------------------------------------------------
    def tokens_per_example(self, batch: Batch) -> int:
        """Work units per example for throughput (tokens for an LM, pixels or samples for tokenizers)."""
        return 1

    def flops_per_example(self, batch: Batch) -> float | None:
        """Training FLOPs (forward + backward) per example, for MFU; None where unknown."""
        return None

    # ---- after training ----------------------------------------------------------------------------------------
    def on_eval(self, params: dict[str, PyTree], model_state: PyTree, workdir: str, step: int) -> Metrics:
        """Host-side hook after each evaluation (write samples, PNG/WAV, extra metrics). Default: nothing."""
        return {}


# Objectives register by name; the modules are imported lazily so that training an LM never imports audio code.
_OBJECTIVES: dict[str, str] = {
    "lm": "teal_jax.train.lm_objective:LMObjective",
    "image_vq": "teal_jax.train.image_objective:ImageVQObjective",
    "audio_codec": "teal_jax.train.audio_objective:AudioCodecObjective",
    "teal": "teal_jax.train.teal_objective:TealObjective",
}


def register_objective(name: str, target: str) -> None:
    """Registers ``'module.path:ClassName'`` under ``name`` (for objectives outside this package)."""
    _OBJECTIVES[name] = target


def make_objective(config: ml_collections.ConfigDict) -> Objective:
    name = config.objective
    if name not in _OBJECTIVES:
        raise ValueError(f"config.objective={name!r} is not a known objective; choose one of {sorted(_OBJECTIVES)}")
    module, cls = _OBJECTIVES[name].split(":")
    return getattr(importlib.import_module(module), cls)(config)
