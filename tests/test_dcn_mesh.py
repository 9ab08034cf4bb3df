"""Meshes split into a fast part (inside a TPU slice or a GPU host) and a slow DCN part (across them), as MaxText's
dcn axes: FSDP stays inside a host while data parallelism crosses the network. Stub devices stand for 4 GPU hosts
of 8 (grouped by process) and 2 TPU slices of 4 (grouped by slice_index)."""

import dataclasses

import numpy as np
import pytest

from teal_jax.parallel import sharding as shd


@dataclasses.dataclass(frozen=True)
class Dev:
    id: int
    process_index: int
    slice_index: int = 0
    platform: str = "gpu"
    device_kind: str = "stub"


def test_four_gpu_hosts_fsdp_inside_data_across():
    devices = [Dev(i, i // 8) for i in range(32)]
    mesh = shd.make_mesh((1, 8, 1), devices, dcn_shape=(4, 1, 1))
    assert dict(mesh.shape) == {"data": 4, "fsdp": 8, "tensor": 1}
    procs = shd.device_processes(mesh)
    assert all(len(set(procs[d].ravel())) == 1 for d in range(4))  # each data row is one host: FSDP never crosses
    assert sorted(procs[:, 0, 0]) == [0, 1, 2, 3]
    assert shd.check_batch_layout(tuple(mesh.devices.shape), procs, 64) == 16  # each host feeds its own rows


def test_tpu_slices_are_grouped_by_slice_index():
    devices = [Dev(i, i // 2, slice_index=i // 4) for i in range(8)]  # 2 slices of 4 chips, 2 hosts each
    mesh = shd.make_mesh((1, -1, 1), devices, dcn_shape=(2, 1, 1))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert [sorted({d.slice_index for d in row.ravel()}) for row in mesh.devices] == [[0], [1]]


def test_bad_dcn_layouts_name_both_shapes():
    devices = [Dev(i, i // 8) for i in range(32)]
    with pytest.raises(ValueError, match=r"mesh.shape=\(1, 4, 1\) \(inside one slice or host\) needs 4 devices, but "
                                         r"each of the 4 groups of mesh.dcn_shape=\(4, 1, 1\) has 8"):
        shd.make_mesh((1, 4, 1), devices, dcn_shape=(4, 1, 1))
    with pytest.raises(ValueError, match=r"mesh.dcn_shape=\(2, 1, 1\): Number of slices 4 must equal"):
        shd.make_mesh((1, 16, 1), devices, dcn_shape=(2, 1, 1))
    assert np.asarray(shd.make_mesh((-1, 1, 1), None, dcn_shape=(1, 1, 1)).devices).size >= 1  # no DCN: as before
