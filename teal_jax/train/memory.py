"""Will it fit? Compile the train step ahead of time for the configured mesh and report per-device memory.

``python -m teal_jax.main --config=... --workdir=/tmp/x --mode=compile --target=h100`` builds the trainer's abstract
state on the current devices (fake CPU devices work: ``XLA_FLAGS=--xla_force_host_platform_device_count=N
JAX_PLATFORMS=cpu`` for an N-device target), lowers and compiles the jitted train step with its real shardings and
prints, per device:

  parameters       the bytes of this device's shards of every parameter
  optimizer state  the same for the optimizer state (Adam moments mirror the parameters' shardings)
  batch            this device's rows of one global batch
  temporaries      XLA's temp buffers of the compiled step: activations kept for the backward pass, gradients,
                   scratch (``memory_analysis().temp_size_in_bytes``)
  total            arguments (state + batch) + temporaries + generated code; outputs alias the donated state

and whether that fits the named device's memory (``DEVICE_MEMORY``) or a byte count. The temporaries come from the
backend that compiled: on fake CPU devices they are an estimate of an accelerator's (fusion and rematerialisation
differ by backend); parameters, optimizer state and batch are exact.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import ml_collections
import numpy as np

GiB = 1 << 30
# Per-device memory (bytes) of the targets users name.
DEVICE_MEMORY = {
    "v4": 32 * GiB, "v5e": 16 * GiB, "v5p": 95 * GiB, "v6e": 32 * GiB,
    "a100": 80 * GiB, "h100": 80 * GiB, "h200": 141 * GiB, "b200": 180 * GiB,
}


def target_bytes(target: str) -> int:
    """``target``: a name of :data:`DEVICE_MEMORY` or a byte count (suffixes K, M, G, T allowed: '24G')."""
    t = target.strip().lower()
    if t in DEVICE_MEMORY:
        return DEVICE_MEMORY[t]
    units = {"k": 1 << 10, "m": 1 << 20, "g": GiB, "t": 1 << 40}
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise ValueError(f"--target={target!r}: name one of {sorted(DEVICE_MEMORY)} or a byte count such as 24G") \
            from None


def _per_device_bytes(shapes: Any, shardings: Any) -> int:
    """Bytes one device holds of ``shapes`` under ``shardings`` (the largest shard of each leaf)."""
    total = 0
    for s, sh in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings, is_leaf=lambda x: hasattr(x, "shard_shape")),
                     strict=True):
        shard = sh.shard_shape(s.shape) if s.shape else ()
        total += math.prod(shard) * np.dtype(s.dtype).itemsize
    return total


def compile_report(config: ml_collections.ConfigDict, workdir: str, target: str | None = None) -> dict[str, Any]:
    """Builds the trainer (abstract state only: nothing is initialised), compiles one train step and returns the
    per-device figures (bytes) with ``fits`` against ``target`` when given."""
    from teal_jax.train.trainer import Trainer

    trainer = Trainer(config, workdir)
    try:
        state_shapes = trainer.abstract_state()
        batch = {k: jax.ShapeDtypeStruct((int(config.train.batch_size),) + np.shape(v)[1:], np.asarray(v).dtype,
                                         sharding=trainer.batch_sharding)
                 for k, v in trainer.example.items()}
        compiled = trainer._train_step.lower(state_shapes, batch).compile()
        mem = compiled.memory_analysis()
        params = _per_device_bytes(state_shapes["params"], trainer.state_shardings["params"])
        opt = _per_device_bytes(state_shapes["opt_state"], trainer.state_shardings["opt_state"])
        batch_bytes = _per_device_bytes(batch, jax.tree.map(lambda _: trainer.batch_sharding, batch))
        report = {
            "mesh": dict(trainer.mesh.shape), "devices": int(trainer.mesh.devices.size),
            "backend": jax.default_backend(), "global_batch": int(config.train.batch_size),
            "parameters": params, "optimizer_state": opt, "batch": batch_bytes,
            "temporaries": int(mem.temp_size_in_bytes), "code": int(mem.generated_code_size_in_bytes),
            "arguments": int(mem.argument_size_in_bytes),
        }
        report["total"] = report["arguments"] + report["temporaries"] + report["code"]
        if target:
            report["target"], report["target_bytes"] = target, target_bytes(target)
            report["fits"] = report["total"] <= report["target_bytes"]
        return report
    finally:
        trainer.writer.close()
        trainer.checkpointer.close()


def format_report(r: dict[str, Any]) -> str:
    """The table ``--mode=compile`` prints."""
    g = lambda b: f"{b / GiB:9.3f} GiB" if b >= GiB // 4 else f"{b / (1 << 20):9.3f} MiB"  # noqa: E731
    lines = [f"per-device memory of one train step: mesh {r['mesh']} ({r['devices']} {r['backend']} devices), "
             f"global batch {r['global_batch']}",
             f"  parameters       {g(r['parameters'])}",
             f"  optimizer state  {g(r['optimizer_state'])}",
             f"  batch            {g(r['batch'])}",
             f"  temporaries      {g(r['temporaries'])}   (activations, gradients, scratch: XLA's buffer assignment"
             f"{'; an estimate off-accelerator' if r['backend'] == 'cpu' else ''})",
             f"  code             {g(r['code'])}",
             f"  total            {g(r['total'])}"]
    if "fits" in r:
        verdict = "fits" if r["fits"] else "does NOT fit"
        lines.append(f"  {verdict} {r['target']} ({g(r['target_bytes']).strip()} per device; "
                     f"{100 * r['total'] / r['target_bytes']:.0f}% used)")
    return "\n".join(lines)
