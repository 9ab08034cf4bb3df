"""Checkpoints that cannot lie: every step is sealed with a manifest of file sizes and CRC-32s; reads verify it.

Faults injected here: a flipped byte in a parameter file, a truncated file, a garbled manifest, an empty step folder,
a step that was never sealed, a workdir that does not exist. Each is detected and named; resume falls back to the
newest step that verifies (setting the bad ones aside); inference loading fails unless told which step to use.
"""

import json
import os

import jax
import numpy as np
import pytest

from teal_jax import checkpoint as C
from teal_jax.config import base_config


def _state(step):
    return {"params": {"model": {"w": np.arange(4096, dtype=np.float32) + step, "b": np.full(3, step, np.int32)}},
            "step": np.int32(step)}


def _abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), state)


@pytest.fixture
def run(tmp_path):
    ckpt = C.Checkpointer(str(tmp_path), async_save=True)
    for step in (2, 4):
        ckpt.save(step, _state(step), {"index": step}, base_config())
    ckpt.close()
    return str(tmp_path)


def _biggest_state_file(step_dir):
    files = [os.path.join(r, n) for r, _, ns in os.walk(os.path.join(step_dir, "state")) for n in ns]
    return max(files, key=os.path.getsize)


def _flip(path, offset=None):
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        i = len(data) // 2 if offset is None else offset
        data[i] ^= 0x40
        f.seek(0)
        f.write(data)


def test_every_step_is_sealed_and_verifies(run):
    ckpt = C.Checkpointer(run, read_only=True)
    for step in (2, 4):
        manifest = json.load(open(os.path.join(ckpt.step_dir(step), C.MANIFEST)))
        assert manifest["checksum"] == "crc32" and any(k.startswith("state") for k in manifest["files"])
        ckpt.verify(step)
    config, params, _ = C.load_params(run)
    np.testing.assert_array_equal(params["model"]["w"], _state(4)["params"]["model"]["w"])


def test_flipped_byte_is_detected_and_load_names_the_good_step(run):
    step_dir = os.path.join(run, "checkpoints", "4")
    _flip(_biggest_state_file(step_dir))
    with pytest.raises(C.CheckpointIntegrityError, match=r"step 4 .*state: file .* does not match its checksum "
                                                         r"\(corrupted\); the newest step that verifies is 2"):
        C.load_params(run)
    _, params, _ = C.load_params(run, step=2)  # told which step: loads it, bit for bit
    np.testing.assert_array_equal(params["model"]["w"], _state(2)["params"]["model"]["w"])
    with pytest.raises(C.CheckpointIntegrityError, match="step 4"):
        C.load_params(run, step=4)


def test_resume_falls_back_and_sets_the_bad_step_aside(run):
    _flip(_biggest_state_file(os.path.join(run, "checkpoints", "4")))
    said = []
    ckpt = C.Checkpointer(run, async_save=False)
    step, state, data, _ = ckpt.restore_latest(_abstract(_state(0)), say=said.append)
    assert step == 2 and data == {"index": 2}
    np.testing.assert_array_equal(np.asarray(state["params"]["model"]["w"]), _state(2)["params"]["model"]["w"])
    assert "step 4 skipped: state" in said[0] and "resuming from step 2" in said[-1]
    assert ckpt.all_steps() == [2] and not os.path.exists(os.path.join(run, "checkpoints", "4"))
    assert os.listdir(os.path.join(run, "checkpoints_rejected"))[0].startswith("4-")
    ckpt.save(4, _state(4), {"index": 4}, base_config())  # the step can be written again
    ckpt.close()
    C.Checkpointer(run, read_only=True).verify(4)


@pytest.mark.parametrize("fault,problem", [
    ("truncate", r"state: file .* has \d+ bytes, the manifest says \d+ \(truncated or overwritten\)"),
    ("manifest", r"manifest: unreadable"),
    ("unsealed", r"manifest: missing \(not sealed"),
    ("delete", r"state: file .* is missing"),
])
def test_each_fault_is_named(run, fault, problem):
    step_dir = os.path.join(run, "checkpoints", "4")
    if fault == "truncate":
        path = _biggest_state_file(step_dir)
        os.truncate(path, os.path.getsize(path) // 2)
    elif fault == "manifest":
        with open(os.path.join(step_dir, C.MANIFEST), "w") as f:
            f.write("{not json")
    elif fault == "unsealed":
        os.remove(os.path.join(step_dir, C.MANIFEST))
    else:
        os.remove(_biggest_state_file(step_dir))
    with pytest.raises(C.CheckpointIntegrityError, match=problem):
        C.Checkpointer(run, read_only=True).verify(4)
    said = []
    found = C.Checkpointer(run, async_save=False).restore_latest(_abstract(_state(0)), say=said.append)
    assert found[0] == 2 and "step 4 skipped" in said[0]


def test_empty_step_folder_is_skipped(run):
    os.makedirs(os.path.join(run, "checkpoints", "9"))
    with pytest.raises(C.CheckpointIntegrityError, match=r"step 9 .*manifest: missing \(empty folder"):
        C.load_params(run)
    said = []
    step, *_ = C.Checkpointer(run, async_save=False).restore_latest(_abstract(_state(0)), say=said.append)
    assert step == 4 and "step 9 skipped" in said[0]


def test_damaged_state_metadata_is_named_not_an_attribute_error(run):
    """A damaged Orbax metadata file used to end in "'NoneType' object has no attribute 'tree'"."""
    _flip(os.path.join(run, "checkpoints", "4", "state", "_METADATA"), offset=2)
    with pytest.raises(C.CheckpointIntegrityError, match=r"step 4 .*state: file state/_METADATA does not match"):
        C.load_params(run)


def test_config_reads_verify_only_the_config(run):
    _flip(_biggest_state_file(os.path.join(run, "checkpoints", "4")))
    assert C.read_config(run).objective == "lm"  # the config item is intact
    _flip(os.path.join(run, "checkpoints", "4", "config", "metadata"), offset=1)
    with pytest.raises(C.CheckpointIntegrityError, match="step 4 .*config"):
        C.read_config(run)


def test_reading_a_missing_workdir_creates_nothing(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="no checkpoint under .*nope .*no such directory"):
        C.load_params(str(missing))
    assert not missing.exists()
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoints/ folder"):
        C.read_config(str(tmp_path / "empty_run"))
    assert os.listdir(tmp_path / "empty_run") == []


def test_temp_folder_of_a_killed_async_save_is_cleaned_and_skipped(run):
    """Orbax writes a step into ``<step>.orbax-checkpoint-tmp-<n>`` and renames it when done: a kill leaves the
    temporary folder, which is not a step; opening the run for training removes it, reading never lists it."""
    tmp = os.path.join(run, "checkpoints", "6.orbax-checkpoint-tmp-1234")
    os.makedirs(os.path.join(tmp, "state"))
    with open(os.path.join(tmp, "state", "half_written"), "wb") as f:
        f.write(b"x" * 100)
    assert C.Checkpointer(run, read_only=True).all_steps() == [2, 4]
    assert C.load_params(run)[1]["model"]["b"].tolist() == [4, 4, 4]
    said = []
    step, *_ = C.Checkpointer(run, async_save=False).restore_latest(_abstract(_state(0)), say=said.append)
    assert step == 4 and not said and not os.path.exists(tmp)
