"""A ``gs://`` workdir, offline: a local GCS emulator (the pure-Python ``gcp-storage-emulator``, on disk) serves a
bucket; Orbax's tensorstore writes reach it through ``TENSORSTORE_GCS_HTTP_URL`` and etils.epath (gcsfs) through
``STORAGE_EMULATOR_HOST``. The tiny LM trains into ``gs://teal-test/run``, checkpoints, resumes (a second run), and
moves a damaged step to ``checkpoints_rejected/`` in the bucket when resuming; its losses are those of the same runs
in a local folder, and nothing named ``gs:`` appears in the working directory."""

import json
import logging
import os

import jax
import numpy as np
import pytest
from _tiny import tiny_lm_config
from test_trainer import _losses

from teal_jax import checkpoint as C
from teal_jax import paths
from teal_jax.train import trainer

# Before gcsfs is imported: no probe of the bucket's storage layout (a control-plane API the emulator lacks), no
# probe of a GCE metadata server for credentials (the emulator needs none).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
os.environ.setdefault("NO_GCE_CHECK", "true")
pytest.importorskip("gcsfs")
server_lib = pytest.importorskip("gcp_storage_emulator.server")

BUCKET = "teal-test"


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    from _multiprocess import free_port
    from etils.epath import backend

    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # it logs every probe of a missing object
    port = free_port()
    # On disk, not in memory: its in-memory store loses concurrent writes of one object now and then.
    server = server_lib.create_server("127.0.0.1", port, default_bucket=BUCKET, data_dir=str(tmp_path / "gcs"))
    server.start()
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", url)
    # One request at a time: the emulator mishandles concurrent conditional writes of one object (OCDBT's manifest
    # is updated by every array of a save; tensorstore then reports 'Malformed StorageGeneration').
    monkeypatch.setenv("TENSORSTORE_GCS_REQUEST_CONCURRENCY", "1")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "cache"))
    import gcsfs

    gcsfs.GCSFileSystem.clear_instance_cache()  # a filesystem made for another emulator port must not be reused
    backend.fsspec_backend._get_filesystem.cache_clear()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield f"gs://{BUCKET}"
    server.stop()
    gcsfs.GCSFileSystem.clear_instance_cache()
    backend.fsspec_backend._get_filesystem.cache_clear()


def _remote_losses(workdir):
    rows = [json.loads(line) for line in paths.read_text(paths.join(workdir, "metrics.jsonl")).splitlines()]
    out = {}
    for r in rows:
        if r["split"] == "train":
            out[r["step"]] = r["loss"]
    return out


def _config(steps):
    c = tiny_lm_config(steps=steps)
    c.train.checkpoint_every = 2
    return c


def test_gs_workdir_trains_saves_resumes_and_rejects_a_damaged_step(bucket, tmp_path):
    run = f"{bucket}/run"
    trainer.train(_config(3), run)  # saves steps 2 and 3
    assert C.Checkpointer(run, read_only=True).all_steps() == [2, 3]
    assert paths.isfile(f"{run}/checkpoints/3/{C.MANIFEST}")
    assert sorted(_remote_losses(run)) == [1, 2, 3]

    trainer.train(_config(6), run)  # resumes from 3; saves 4 and 6
    ckpt = C.Checkpointer(run, read_only=True)
    assert ckpt.all_steps() == [3, 4, 6]
    ckpt.verify(6)
    config, params, _ = C.load_params(run)
    assert config.train.steps == 6 and all(np.isfinite(x).all() for x in jax.tree.leaves(params))

    # The same two runs in a local folder: the bucket run's losses are the same, step by step.
    local = tmp_path / "local"
    trainer.train(_config(3), str(local))
    trainer.train(_config(6), str(local))
    want = _losses(str(local))
    got = _remote_losses(run)
    assert sorted(got) == list(range(1, 7))
    assert [got[s] for s in range(1, 7)] == [want[s] for s in range(1, 7)]  # same devices, same program: exact

    # A damaged newest step: resuming skips it, moves it to checkpoints_rejected/ in the bucket (an object store has
    # no rename: a copy, then a delete) and restores step 4.
    paths.Path(f"{run}/checkpoints/6/{C.MANIFEST}").write_text("{not json")
    t = trainer.Trainer(_config(6), run)
    try:
        _, step = t.restore_or_init()
    finally:
        t.writer.close()
        t.checkpointer.close()
    assert step == 4
    rejected = paths.listdir(f"{run}/checkpoints_rejected")
    assert len(rejected) == 1 and rejected[0].startswith("6-")
    assert paths.isfile(f"{run}/checkpoints_rejected/{rejected[0]}/{C.MANIFEST}")
    assert not paths.exists(f"{run}/checkpoints/6")

    # The manifest holds GCS's own CRC32C of each object (sealing downloads nothing); a changed object is caught.
    manifest = json.loads(paths.read_text(f"{run}/checkpoints/4/{C.MANIFEST}"))
    assert manifest["checksum"] == "crc32c" and all("crc32c" in f for f in manifest["files"].values())
    rel = max((r for r in manifest["files"] if r.startswith("state/")), key=lambda r: manifest["files"][r]["size"])
    data = bytearray(paths.read_bytes(f"{run}/checkpoints/4/{rel}"))
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    paths.Path(f"{run}/checkpoints/4/{rel}").write_bytes(bytes(data))
    with pytest.raises(C.CheckpointIntegrityError, match="does not match its checksum"):
        C.Checkpointer(run, read_only=True).verify(4)

    # TensorBoard's event files were staged locally and uploaded; nothing went to a local folder named 'gs:'.
    assert any(n.startswith("events.out.tfevents") for n in paths.listdir(f"{run}/tensorboard"))
    assert not any("gs:" in p for p in os.listdir("."))
    assert not os.path.exists(os.path.join(os.getcwd(), "gs:"))


def test_evaluator_outputs_reach_the_bucket(bucket):
    """Evaluators write PNG/WAV/JSON through local file APIs: for a gs:// workdir they run on a per-host local
    stand-in and each one's output folder is copied to the bucket; a dependent evaluator reads its dependency's
    result there."""
    from teal_jax.evaluate import evaluators as E

    class Writes(E.Evaluator):
        KIND = "test_writes"
        FIELDS = {"reads": ""}
        DEPENDS = ("reads",)

        def run(self, model, *, workdir, step):
            assert not paths.is_remote(workdir)
            out = self.output_dir(workdir, step)
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, "sample.txt"), "w") as f:
                f.write(f"{self.name} {model}")
            before = E.read_result(workdir, self.reads, step)["figure"] if self.reads else 0.0
            return {"figure": before + 1.0}

    run = f"{bucket}/run"
    first, second = Writes({}, None, name="first"), Writes({"reads": "first"}, None, name="second")
    results = E.run_evaluators([first, second], "model", workdir=run, step=3)
    assert results == {"first": {"figure": 1.0}, "second": {"figure": 2.0}}
    for name in ("first", "second"):
        assert paths.read_text(f"{run}/eval/{name}/step_3/sample.txt") == f"{name} model"
        assert E.read_result(run, name, 3) == results[name]  # read back from the bucket
    assert not os.path.exists(os.path.join(os.getcwd(), "gs:"))


def test_paths_keep_local_paths_and_schemes_apart(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "cache"))
    assert paths.resolve("gs://b/run/") == "gs://b/run" and paths.resolve("rel") == os.path.abspath("rel")
    assert paths.join("gs://b/run", "checkpoints", "3") == "gs://b/run/checkpoints/3"
    assert paths.data_dir(str(tmp_path / "run")) == str(tmp_path / "run" / "data")
    assert paths.data_dir("gs://b/run") == str(tmp_path / "cache" / "gs" / "b" / "run" / "data")
    with pytest.raises(ValueError, match=r"data.data_dir='gs://b/d': this must be a local or mounted folder"):
        paths.require_local("gs://b/d", "data.data_dir")
    with pytest.raises(ValueError, match=r"memory://run: etils.epath has no filesystem for memory://"):
        trainer.Trainer(tiny_lm_config(), "memory://run")
