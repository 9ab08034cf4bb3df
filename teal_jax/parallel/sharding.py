"""The one place where sharding is decided: the device mesh, the logical-axis rules, and what follows from them.

Models name their parameter axes logically ('embed', 'heads', 'vocab', ...); ``LOGICAL_AXIS_RULES`` maps each name to
a mesh axis of ``('data', 'fsdp', 'tensor')``. Batches shard their leading axis over ``('data', 'fsdp')``: FSDP is data
parallelism whose parameters (and optimizer state) are also split over the 'fsdp' axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical name -> mesh axis (None = replicated). 'sequence' and 'expert' are reserved mesh-axis names for later.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    # Tokenizer convnets are small: replicate their kernels and codebooks, shard only their batches.
    ("conv_in", None),
    ("conv_out", None),
    ("codebook", None),
    ("code_dim", None),
)


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None,
              dcn_shape: Sequence[int] | None = None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh; one entry of ``shape`` may be -1 (all remaining devices).

    ``dcn_shape`` (MaxText's ``dcn_*`` axes): a second factor per axis that crosses the slow network between TPU
    slices (devices' ``slice_index``) or GPU hosts (their process): ``shape`` is then the fast (ICI / NVLink) part
    inside one slice or host, and the mesh's axis sizes are ``shape * dcn_shape``. E.g. 4 hosts x 8 GPUs with
    ``shape=(1, 8, 1)``, ``dcn_shape=(4, 1, 1)``: FSDP inside each host, data parallelism across hosts.
    """
    devices = list(jax.devices() if devices is None else devices)
    if dcn_shape is not None and math.prod(int(d) for d in dcn_shape) > 1:
        return _hybrid_mesh(shape, dcn_shape, devices)
    shape = [int(s) for s in shape]
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh.shape={tuple(shape)} must have {len(MESH_AXES)} entries for axes {MESH_AXES}")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh.shape={tuple(shape)}: entries must be positive, with at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(
                f"mesh.shape={tuple(shape)}: the fixed axes need a multiple of {known} devices, "
                f"but {len(devices)} devices are available"
            )
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ValueError(
            f"mesh.shape={tuple(shape)} needs {math.prod(shape)} devices, but {len(devices)} are available"
        )
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=axis_types, devices=devices)


def _hybrid_mesh(shape: Sequence[int], dcn_shape: Sequence[int], devices: list) -> Mesh:
    dcn = [int(d) for d in dcn_shape]
    if len(dcn) != len(MESH_AXES) or any(d < 1 for d in dcn):
        raise ValueError(f"mesh.dcn_shape={tuple(dcn)} must have {len(MESH_AXES)} positive entries")
    granules = math.prod(dcn)
    if len(devices) % granules:
        raise ValueError(f"mesh.dcn_shape={tuple(dcn)} needs the {len(devices)} devices in {granules} equal groups")
    inner = list(shape)
    per_granule = len(devices) // granules
    known = math.prod(s for s in inner if s != -1)
    if -1 in inner:
        inner[inner.index(-1)] = per_granule // max(known, 1)
    if math.prod(inner) != per_granule:
        raise ValueError(f"mesh.shape={tuple(shape)} (inside one slice or host) needs {math.prod(inner)} devices, "
                         f"but each of the {granules} groups of mesh.dcn_shape={tuple(dcn)} has {per_granule}")
    from jax.experimental import mesh_utils

    # TPU slices (several distinct slice_index values) are the DCN groups; otherwise each process (a GPU host) is.
    by_slice = len({getattr(d, "slice_index", 0) for d in devices}) > 1
    try:
        grid = mesh_utils.create_hybrid_device_mesh(inner, dcn, devices, process_is_granule=not by_slice)
    except ValueError as e:
        raise ValueError(f"mesh.shape={tuple(shape)} with mesh.dcn_shape={tuple(dcn)}: {e}") from None
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return Mesh(grid, MESH_AXES, axis_types=axis_types)


def logical_specs(boxed_tree: Any) -> Any:
    """PartitionSpecs of logical names for a tree whose leaves may be ``nn.Partitioned`` boxes."""
    return nn.get_partition_spec(boxed_tree)


def _mesh_axes_of(spec_entry, rules) -> tuple[str, ...]:
    if spec_entry is None:
        return ()
    names = spec_entry if isinstance(spec_entry, tuple) else (spec_entry,)
    table = dict(rules)
    out: list[str] = []
    for n in names:
        m = table.get(n)
        if m is None:
            continue
        out.extend(m if isinstance(m, tuple) else (m,))
    return tuple(out)


def check_divisible(shapes: Any, logical: Any, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> None:
    """Raises if a dimension is not divisible by the mesh axes its logical name maps to (naming both numbers)."""
    flat_shapes = jax.tree_util.tree_flatten_with_path(shapes)[0]
    flat_specs = jax.tree.leaves(logical, is_leaf=lambda x: isinstance(x, PartitionSpec))
    for (path, leaf), spec in zip(flat_shapes, flat_specs, strict=True):
        shape = np.shape(leaf) if not hasattr(leaf, "shape") else leaf.shape
        for dim, entry in enumerate(spec):
            axes = _mesh_axes_of(entry, rules)
            size = math.prod(mesh.shape[a] for a in axes)
            if size > 1 and shape[dim] % size:
                raise ValueError(
                    f"parameter {jax.tree_util.keystr(path)} dimension {dim} ('{entry}') has size {shape[dim]}, "
                    f"which does not divide evenly over mesh axes {axes} of size {size}"
                )


def logical_to_sharding(logical: Any, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> Any:
    """NamedShardings from a tree of logical PartitionSpecs."""
    return nn.logical_to_mesh_sharding(logical, mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ('data', 'fsdp'); everything else replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_shards(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch_layout(mesh_shape: Sequence[int], device_processes: np.ndarray, batch_size: int) -> int:
    """Checks that every process can feed its own examples, and returns the examples per process.

    ``device_processes``: the process index of each mesh device, shaped like the mesh ('data', 'fsdp', 'tensor').
    A batch shard (one position on the data x fsdp axes) must live on devices of one process only: when two processes
    hold replicas of a shard, each would put its own (different) rows there, and the global batch would be neither
    replicated nor the configured size. Every process must hold the same number of shards, and ``batch_size`` must
    divide over them. Errors name the mesh, the process count and the batch.
    """
    procs = np.asarray(device_processes).reshape(tuple(mesh_shape))
    n_proc = int(procs.max()) + 1
    shard_owner = procs.reshape(procs.shape[0] * procs.shape[1], -1)  # [batch shards, tensor]
    where = f"mesh.shape={tuple(int(s) for s in mesh_shape)} on {n_proc} processes, train.batch_size={batch_size}"
    for i, row in enumerate(shard_owner):
        owners = sorted(set(row.tolist()))
        if len(owners) > 1:
            raise ValueError(
                f"{where}: batch shard {i} (a position on the data x fsdp axes) is replicated over processes "
                f"{owners}, which would each feed it different rows. Put the processes on the batch axes (e.g. "
                "data or fsdp >= the process count, tensor within a process)")
    per_process = np.bincount(shard_owner[:, 0], minlength=n_proc)
    if len(set(per_process.tolist())) > 1:
        raise ValueError(f"{where}: processes hold unequal numbers of batch shards {per_process.tolist()}")
    shards = shard_owner.shape[0]
    if batch_size % shards:
        raise ValueError(f"{where}: the batch does not divide over the {shards} batch shards")
    return batch_size // n_proc


def device_processes(mesh: Mesh) -> np.ndarray:
    """The process index of every device of ``mesh``, shaped like the mesh."""
    return np.vectorize(lambda d: d.process_index, otypes=[int])(mesh.devices)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local numpy batch -> global jax.Arrays sharded along the batch axis (works multi-host)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def set_mesh(mesh: Mesh):
    """Context manager making ``mesh`` current (``jax.set_mesh`` where the installed JAX has it)."""
    if hasattr(jax, "set_mesh"):
        return jax.set_mesh(mesh)
    return jax.sharding.use_mesh(mesh)  # older JAX


def axis_rules():
    """Context manager activating the logical-axis rules for ``nn.with_logical_constraint`` inside models."""
    return nn.logical_axis_rules(LOGICAL_AXIS_RULES)
