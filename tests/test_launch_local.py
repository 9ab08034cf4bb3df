"""The shipped launcher end to end: launch/local_multiprocess.sh starts 2 processes (4 fake CPU devices each, gloo)
that train the tiny LM on text data (generated corpus, SentencePiece, tfds, packing) as one 8-device job; the same
command again resumes from the checkpoint and continues. (Losses equal to a single process fed the same global
batches: tests/test_multihost.py.)"""

import json
import os
import subprocess
import sys

from _multiprocess import REPO, free_port

ARGS = ["--config.train.log_every=1", "--config.train.eval_every=0", "--config.train.checkpoint_every=3",
        "--config.data.num_docs=600", "--config.data.vocab_size=512", "--config.model.vocab_size=512",
        "--config.model.num_layers=2", "--config.model.embed_dim=32", "--config.model.mlp_dim=64",
        "--config.model.num_heads=2", "--config.model.num_kv_heads=2", "--config.model.head_dim=16",
        "--config.data.seq_len=32", "--config.train.batch_size=8", "--config.mesh.shape=(4,2,1)"]


def _launch(run, steps):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", TEAL_PORT=str(free_port()), PYTHON=sys.executable)
    return subprocess.run(["bash", "launch/local_multiprocess.sh", "2", "configs/lm/tiny.py", str(run),
                           f"--config.train.steps={steps}", *ARGS], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def _losses(run):
    rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def test_two_processes_through_the_launcher_train_on_text_and_resume(tmp_path):
    run = tmp_path / "run"
    out = _launch(run, 3)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2 process(es)" in out.stdout + out.stderr
    first = _losses(run)
    assert sorted(first) == [1, 2, 3]
    out = _launch(run, 6)  # the same command again: resumes from step 3
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"resuming from {run}/checkpoints/3" in out.stdout + out.stderr
    losses = _losses(run)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6] and all(losses[s] == first[s] for s in (1, 2, 3))
    assert losses[6] < losses[1]  # it kept learning across the resume
    data = json.loads((run / "checkpoints" / "6" / "data" / "metadata").read_text())
    assert len(data["hosts"]) == 2 and data["hosts"][0] != data["hosts"][1]  # each host its own share of the text
