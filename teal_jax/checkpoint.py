"""Orbax checkpoints: one format for every model kind.

Layout of ``<workdir>/checkpoints/<step>/``:
  state/   the train state: ``{'step', 'params', 'opt_state', 'model_state', 'rng'}`` (orbax StandardSave, sharded)
  data/    JSON: ``{'hosts': [iterator state of process 0, process 1, ...]}``
  config/  JSON: the run's ConfigDict

Restoring takes an *abstract* target (``jax.ShapeDtypeStruct`` with shardings on the current mesh), so a checkpoint
written on one mesh restores onto another. ``load_params`` restores parameters for inference without a mesh.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def _gather_host_json(obj: Any) -> list[Any]:
    """Every process's JSON-able ``obj``, in process order (a collective: all processes must call it)."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)
    lengths = multihost_utils.process_allgather(np.array([data.size], np.int32))
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: data.size] = data
    every = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(every[i, : int(lengths[i, 0])]).decode()) for i in range(every.shape[0])]


class Checkpointer:
    """Thin wrapper over ``ocp.CheckpointManager`` (async, keeps the newest ``keep``)."""

    def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
        self.directory = checkpoint_dir(workdir)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
            ),
            item_names=("state", "data", "config"),
        )

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: Any, config: ml_collections.ConfigDict) -> None:
        """Saves asynchronously; ``data_state`` is this host's iterator state (gathered across hosts here)."""
        hosts = _gather_host_json(data_state)
        self.manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave({"hosts": hosts}),
                config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, Any, dict]:
        """Returns ``(state, this host's data state, config dict)`` for ``step``, sharded like ``abstract_state``."""
        path = os.path.join(self.directory, str(step))
        try:
            out = self.manager.restore(
                int(step),
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
                    config=ocp.args.JsonRestore(),
                ),
            )
        except Exception as e:  # orbax raises many types; say which checkpoint and why
            raise RuntimeError(f"could not restore checkpoint {path}: {type(e).__name__}: {e}") from e
        hosts = out["data"]["hosts"]
        if len(hosts) != jax.process_count():
            raise RuntimeError(
                f"checkpoint {path} holds data-iterator states for {len(hosts)} processes but this run has "
                f"{jax.process_count()}; data order cannot be resumed exactly (start a new workdir or match hosts)"
            )
        return out["state"], hosts[jax.process_index()], out["config"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def read_config(workdir: str, step: int | None = None) -> ml_collections.ConfigDict:
    """The ConfigDict saved with a checkpoint (the newest one by default)."""
    ckpt = Checkpointer(workdir, async_save=False)
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint under {ckpt.directory}")
    path = os.path.join(ckpt.directory, str(step), "config")
    cfg = ckpt.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    if cfg is None:
        raise FileNotFoundError(f"checkpoint config missing: {path}")
    return ml_collections.ConfigDict(cfg)


def load_params(workdir: str, step: int | None = None) -> tuple[ml_collections.ConfigDict, dict, Any]:
    """``(config, params, model_state)`` of a checkpoint as host numpy arrays, for inference on any device set.

    ``params`` is ``{group: tree}`` as in training. Optimizer state is not read.
    """
    ckpt = Checkpointer(workdir, async_save=False)
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint under {ckpt.directory} (train first, or check --workdir)")
    config = read_config(workdir, step)
    state_dir = os.path.join(ckpt.directory, str(step), "state")
    checkpointer = ocp.PyTreeCheckpointer()
    meta = checkpointer.metadata(state_dir)
    tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree
    wanted = {k: tree[k] for k in ("params", "model_state") if k in tree}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
    try:
        out = checkpointer.restore(
            state_dir,
            args=ocp.args.PyTreeRestore(item=wanted, restore_args=restore_args, partial_restore=True),
        )
    except Exception as e:
        raise RuntimeError(f"could not read parameters from {state_dir}: {type(e).__name__}: {e}") from e
    return config, out["params"], out.get("model_state", {})
