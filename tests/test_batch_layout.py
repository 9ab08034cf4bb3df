"""Global batch arithmetic on every mesh: each batch shard (a position on the data x fsdp axes) must belong to one
process, every process the same share, so that each process feeds its own rows and the global batch is the
configured one; per_device_batch_size sets the global batch from the mesh."""

import numpy as np
import pytest
from _tiny import tiny_lm_config

from teal_jax.parallel.sharding import check_batch_layout
from teal_jax.train import trainer as trainer_lib


@pytest.mark.parametrize("shape,procs,batch,per_process", [
    ((2, 1, 2), [[[0, 0]], [[1, 1]]], 8, 4),  # data over processes, tensor inside one: fine
    ((4, 1, 1), [[[0]], [[0]], [[1]], [[1]]], 8, 4),
    ((1, 2, 2), [[[0, 0], [1, 1]]], 6, 3),  # fsdp over processes
    ((1, 1, 4), [[[0, 0, 0, 0]]], 8, 8),  # one process: anything goes
])
def test_layouts_where_each_process_feeds_its_own_rows(shape, procs, batch, per_process):
    assert check_batch_layout(shape, np.array(procs), batch) == per_process


def test_replicated_batch_shards_across_processes_are_an_error():
    """The issue's case: mesh (1, 1, 4) on 2 processes: one batch shard on both processes (the global batch came out
    half its size and the 'replicated' rows differed per host)."""
    with pytest.raises(ValueError, match=r"mesh.shape=\(1, 1, 4\) on 2 processes, train.batch_size=8: batch shard 0 "
                                         r".*replicated over processes \[0, 1\]"):
        check_batch_layout((1, 1, 4), np.array([[[0, 0, 1, 1]]]), 8)
    with pytest.raises(ValueError, match=r"unequal numbers of batch shards \[3, 1\]"):
        check_batch_layout((4, 1, 1), np.array([[[0]], [[0]], [[0]], [[1]]]), 8)
    with pytest.raises(ValueError, match="the batch does not divide over the 4 batch shards"):
        check_batch_layout((4, 1, 1), np.array([[[0]], [[0]], [[1]], [[1]]]), 6)


def test_per_device_batch_size_sets_the_global_batch(tmp_path, devices):
    c = tiny_lm_config(steps=1, mesh=(4, 2, 1))
    c.train.per_device_batch_size = 3
    t = trainer_lib.Trainer(c, str(tmp_path))
    assert c.train.batch_size == 24 and t.host_batch == 24  # 3 x 8 batch shards, one process
