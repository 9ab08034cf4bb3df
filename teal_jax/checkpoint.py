"""Orbax checkpoints: one format for every model kind.

Layout of ``<workdir>/checkpoints/<step>/``:
  state/   the train state: ``{'step', 'params', 'opt_state', 'model_state', 'rng'}`` (orbax StandardSave, sharded)
  data/    JSON: ``{'hosts': [iterator state of process 0, process 1, ...]}``
  config/  JSON: the run's ConfigDict
  manifest.json  written last, once the step is complete: size and CRC-32 of every other file of the step

Integrity: a step is *sealed* (its manifest written, atomically, by process 0) once Orbax has finalised it: at the
next save, at ``wait()`` and at ``close()``. Every read verifies what it reads against the manifest first
(:meth:`Checkpointer.verify`): a missing or unreadable manifest, a missing, resized or changed file is a
:class:`CheckpointIntegrityError` naming the step, the item and the problem. ``restore_latest`` (resume) skips
steps that do not verify, newest first, saying why, and moves them out of the way (to
``<workdir>/checkpoints_rejected/``) so that new saves never collide with them; ``load_params`` / ``read_config``
(inference) fail unless the step they were asked for (the newest by default) verifies.

Restoring takes an *abstract* target (``jax.ShapeDtypeStruct`` with shardings on the current mesh), so a checkpoint
written on one mesh restores onto another. ``load_params`` restores parameters for inference without a mesh.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from teal_jax import paths
from teal_jax.quiet import quiet_absl

MANIFEST = "manifest.json"
ITEMS = ("state", "data", "config")


def checkpoint_dir(workdir: str) -> str:
    return paths.join(paths.resolve(workdir), "checkpoints")


class CheckpointIntegrityError(RuntimeError):
    """A checkpoint step that cannot be trusted: ``step``, ``item`` ('manifest', 'state', 'data', 'config' or
    'step') and ``problem`` say which and why."""

    def __init__(self, path: str, step: int, item: str, problem: str):
        self.path, self.step, self.item, self.problem = path, step, item, problem
        super().__init__(f"checkpoint step {step} ({path}): {item}: {problem}")


def _files(step_dir: str) -> list[str]:
    return [rel for rel in paths.walk_files(step_dir) if rel != MANIFEST and not rel.startswith(f".{MANIFEST}.tmp")]


def write_manifest(step_dir: str) -> dict[str, Any]:
    """Seals a complete step: size and CRC-32 of each file (on GCS the CRC32C the store keeps of each object, so
    nothing is downloaded), written atomically (a local temp file renamed; an object store writes the object whole)."""
    files = {rel: paths.fingerprint(paths.join(step_dir, rel)) for rel in _files(step_dir)}
    kinds = sorted({k for f in files.values() for k in f if k != "size"})
    manifest = {"format": 1, "checksum": "+".join(kinds) or "crc32", "files": files}
    paths.write_text(paths.join(step_dir, MANIFEST), json.dumps(manifest, indent=0, sort_keys=True))
    return manifest


def verify_step(step_dir: str, step: int, items: Iterable[str] = ITEMS) -> None:
    """Checks the files of ``items`` (all of the step's by default) against its manifest; raises
    :class:`CheckpointIntegrityError` on the first problem."""
    if not paths.isdir(step_dir):
        raise CheckpointIntegrityError(step_dir, step, "step", "no such folder")
    path = paths.join(step_dir, MANIFEST)
    if not paths.isfile(path):
        what = "empty folder" if not paths.listdir(step_dir) else "not sealed"
        raise CheckpointIntegrityError(step_dir, step, "manifest", f"missing ({what}: the save never completed, "
                                       "or the step was written before checksums existed)")
    try:
        files = json.loads(paths.read_text(path))["files"]
        assert isinstance(files, dict)
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as e:
        raise CheckpointIntegrityError(step_dir, step, "manifest", f"unreadable ({type(e).__name__}: {e})") from None
    items = tuple(items)
    for item in items:
        if not any(rel.split("/")[0] == item for rel in files):
            raise CheckpointIntegrityError(step_dir, step, item, "not in the manifest (the save never wrote it)")
    for rel, want in files.items():
        item = rel.split("/")[0]
        if item not in items and "/" in rel:
            continue
        full = paths.join(step_dir, rel)
        if not paths.isfile(full):
            raise CheckpointIntegrityError(step_dir, step, item, f"file {rel} is missing")
        if "crc32c" in want:  # sealed on an object store: compare the store's own checksum of the object
            got = paths.fingerprint(full)
            size, same = got["size"], got.get("crc32c") == want["crc32c"]
        else:
            size, crc = paths.size_and_crc32(full)
            same = crc == want["crc32"]
        if size != want["size"]:
            raise CheckpointIntegrityError(step_dir, step, item, f"file {rel} has {size} bytes, the manifest says "
                                           f"{want['size']} (truncated or overwritten)")
        if not same:
            raise CheckpointIntegrityError(step_dir, step, item, f"file {rel} does not match its checksum "
                                           "(corrupted)")


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
    """Thin wrapper over ``ocp.CheckpointManager`` (async, keeps the newest ``keep``) that seals and verifies steps.

    ``read_only=True`` (inference, lineage) never creates anything: a workdir without checkpoints is a
    FileNotFoundError naming it.
    """

    def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True, read_only: bool = False):
        self.workdir = paths.resolve(workdir)
        self.directory = checkpoint_dir(workdir)
        if read_only and not paths.isdir(self.directory):
            what = "no such directory" if not paths.isdir(self.workdir) else "no checkpoints/ folder in it"
            raise FileNotFoundError(f"no checkpoint under {self.workdir} ({what}; train first, or check --workdir)")
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=not read_only, enable_async_checkpointing=async_save,
                cleanup_tmp_directories=not read_only,  # (Orbax's own read_only flag only adds a warning)
            ),
            item_names=ITEMS,
        )
        self._unsealed: set[int] = set()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def step_dir(self, step: int) -> str:
        return paths.join(self.directory, str(int(step)))

    def verify(self, step: int, items: Iterable[str] = ITEMS) -> None:
        """Raises :class:`CheckpointIntegrityError` unless ``items`` of ``step`` match its manifest."""
        verify_step(self.step_dir(step), int(step), items)

    def _seal(self) -> None:
        """Writes the manifest of every step this object saved that Orbax has finalised since (process 0)."""
        if not self._unsealed:
            return
        self.manager.wait_until_finished()
        done = set(self.manager.all_steps())
        for step in sorted(self._unsealed):
            if step in done and jax.process_index() == 0:
                write_manifest(self.step_dir(step))
        self._unsealed.clear()
        _sync("teal_jax_checkpoint_sealed")

    def save(self, step: int, state: Any, data_state: Any, config: ml_collections.ConfigDict) -> None:
        """Saves asynchronously; ``data_state`` is this host's iterator state (gathered across hosts here). The
        previous save is sealed first (Orbax would wait for it here anyway)."""
        hosts = _gather_host_json(data_state)
        self._seal()
        self.manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave({"hosts": hosts}),
                config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
            ),
            force=True,
        )
        self._unsealed.add(int(step))

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, Any, dict]:
        """Returns ``(state, this host's data state, config dict)`` for ``step``, sharded like ``abstract_state``
        (any mesh, any process count: Orbax reshards); the step is verified first (:class:`CheckpointIntegrityError`).
        The data state is None when the checkpoint was written by another number of processes: per-host data order
        cannot carry over, and the caller restarts its iterators."""
        path = self.step_dir(step)
        self.verify(step)
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
            return out["state"], None, out["config"]
        return out["state"], hosts[jax.process_index()], out["config"]

    def restore_latest(self, abstract_state: Any, say=print) -> tuple[int, Any, Any, dict] | None:
        """Resume: ``(step, state, data state, config)`` of the newest step that verifies, or None when there is
        none. Every newer step that does not verify is reported through ``say`` and moved to
        ``<workdir>/checkpoints_rejected/<step>-<unix time>`` (process 0), so later saves cannot collide with it."""
        candidates = sorted(set(self.manager.all_steps()) | set(_step_folders(self.directory)), reverse=True)
        rejected = False
        for step in candidates:
            try:
                self.verify(step)
            except CheckpointIntegrityError as e:
                say(f"checkpoint step {step} skipped: {e.item}: {e.problem}")
                self._reject(step)
                rejected = True
                continue
            if rejected:
                self.manager.reload()
                say(f"resuming from step {step}, the newest step that verifies")
            state, data_state, config = self.restore(step, abstract_state)
            return step, state, data_state, config
        if rejected:
            self.manager.reload()
        return None

    def _reject(self, step: int) -> None:
        if jax.process_index() == 0:
            dest = paths.join(self.workdir, "checkpoints_rejected", f"{step}-{int(time.time())}")
            paths.move_tree(self.step_dir(step), dest)
        _sync(f"teal_jax_checkpoint_rejected_{step}")

    def wait(self) -> None:
        self.manager.wait_until_finished()
        self._seal()

    def close(self) -> None:
        self.wait()
        self.manager.close()


def _step_folders(directory: str) -> list[int]:
    """Integer-named folders (Orbax may not list an empty or half-written one)."""
    if not paths.isdir(directory):
        return []
    return [int(n) for n in paths.listdir(directory) if n.isdigit() and paths.isdir(paths.join(directory, n))]


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def pick_step(workdir: str, step: int | None, items: Iterable[str]) -> tuple[Checkpointer, int]:
    """``(read-only Checkpointer, step)`` for reading ``items`` of ``step`` (the newest by default), verified: a
    step that does not verify is an error that names the newest one that does (pass it as ``step``)."""
    ckpt = Checkpointer(workdir, async_save=False, read_only=True)
    steps = sorted(set(ckpt.all_steps()) | set(_step_folders(ckpt.directory)))
    if step is None:
        if not steps:
            raise FileNotFoundError(f"no checkpoint under {ckpt.directory} (train first, or check --workdir)")
        step = steps[-1]
    try:
        ckpt.verify(step, items)
    except CheckpointIntegrityError as e:
        good = []
        for s in reversed(steps):
            if s != step:
                try:
                    ckpt.verify(s, items)
                    good.append(s)
                    break
                except CheckpointIntegrityError:
                    continue
        hint = (f"; the newest step that verifies is {good[0]}: pass step={good[0]} to use it" if good
                else "; no other step verifies")
        raise CheckpointIntegrityError(e.path, e.step, e.item, e.problem + hint) from None
    return ckpt, int(step)


def read_config(workdir: str, step: int | None = None) -> ml_collections.ConfigDict:
    """The ConfigDict saved with a checkpoint (the newest one by default; its config item is verified)."""
    ckpt, step = pick_step(workdir, step, ("config",))
    path = paths.join(ckpt.directory, str(step), "config")
    cfg = ckpt.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    if cfg is None:
        raise FileNotFoundError(f"checkpoint config missing: {path}")
    return ml_collections.ConfigDict(cfg)


def load_params(workdir: str, step: int | None = None) -> tuple[ml_collections.ConfigDict, dict, Any]:
    """``(config, params, model_state)`` of a checkpoint as host numpy arrays, for inference on any device set.

    ``params`` is ``{group: tree}`` as in training. Optimizer state is not read. The step (the newest by default)
    must verify (:class:`CheckpointIntegrityError` otherwise, naming the newest step that does).
    """
    ckpt, step = pick_step(workdir, step, ("state", "config"))
    config = read_config(workdir, step)
    state_dir = paths.join(ckpt.directory, str(step), "state")
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        with quiet_absl():  # Orbax warns that a per-item folder has no step metadata: it never does, by design
            meta = checkpointer.metadata(state_dir)
        tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree
    except Exception as e:
        raise RuntimeError(f"could not read the metadata of {state_dir}: {type(e).__name__}: {e}") from e
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
