"""Multi-process training through the shipped launcher, launch/local_multiprocess.sh: N local processes (8 / N fake
CPU devices each, gloo collectives) run ``python -m teal_jax.main`` as one 8-device job, and every figure is compared
with a single process computing the same thing.

* text data: 2 processes train the tiny LM on text (generated corpus, SentencePiece, tfds, packing); their losses equal
  one process fed the same global batches (the two hosts' shares concatenated); the same command resumes the run;
* preemption: SIGTERM reaches ONE of the launcher's processes only; JAX's preemption sync point makes both stop at the
  same step, save one checkpoint and exit cleanly; relaunching resumes from it;
* restore across process counts, 2 -> 1 and 1 -> 2: the weights and optimizer state are resharded, the data order
  restarts (a message says so), and the first resumed loss equals the loss one process computes with the saved
  step-2 weights on the first batch of the restarted data order.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from _multiprocess import REPO, free_port

from teal_jax import checkpoint as C

MODEL = {"model.num_layers": 2, "model.embed_dim": 32, "model.mlp_dim": 64, "model.num_heads": 2,
         "model.num_kv_heads": 2, "model.head_dim": 16, "data.seq_len": 32, "train.batch_size": 8,
         "train.log_every": 1, "train.eval_every": 0, "train.compute_dtype": "float32", "optimizer.warmup_steps": 1,
         "optimizer.lr": 1e-2}
TEXT = {**MODEL, "data.num_docs": 600, "data.vocab_size": 512, "model.vocab_size": 512, "train.checkpoint_every": 3}
SYNTH = {**MODEL, "model.vocab_size": 256, "train.checkpoint_every": 1000}
MESH = "--config.mesh.shape=(4,2,1)"


def _flags(overrides):
    return [f"--config.{k}={v}" for k, v in overrides.items()] + [MESH]


def _launch(n, config, run, steps, overrides, *, background=False, pid_file=None):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // n}", JAX_PLATFORMS="cpu",
               JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", JAX_DEFAULT_MATMUL_PRECISION="highest",
               TEAL_PORT=str(free_port()), PYTHON=sys.executable)
    if pid_file:
        env["TEAL_PID_FILE"] = str(pid_file)
    cmd = ["bash", "launch/local_multiprocess.sh", str(n), config, str(run), f"--config.train.steps={steps}",
           *_flags(overrides)]
    if background:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-4000:]
    return out.stdout


def _losses(run, key="loss"):
    rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    return {r["step"]: r[key] for r in rows if r["split"] == "train"}  # a resumed run re-logs: keep the last


def _config(kind, steps, overrides):
    from configs.lm import tiny

    c = tiny.get_config("synthetic" if kind == "synthetic" else None)
    for k, v in overrides.items():
        group, field = k.split(".")
        c[group][field] = v
    c.mesh.shape = (4, 2, 1)
    c.train.steps = steps
    return c


class _Concat:
    """One process's view of two hosts' iterators: each batch is host 0's rows then host 1's."""

    def __init__(self, its):
        self.its = its

    def __iter__(self):
        return self

    def __next__(self):
        parts = [next(it) for it in self.its]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def get_state(self):
        return [it.get_state() for it in self.its]

    def set_state(self, state):
        for it, s in zip(self.its, state, strict=True):
            it.set_state(s)


def test_two_processes_through_the_launcher_train_on_text_like_one_process_and_resume(tmp_path):
    from teal_jax.data import lm as lm_data
    from teal_jax.train import trainer
    from teal_jax.train.lm_objective import LMObjective

    run = tmp_path / "run"
    out = _launch(2, "configs/lm/tiny.py", run, 3, TEXT)
    assert "2 process(es)" in out
    first = _losses(run)
    assert sorted(first) == [1, 2, 3]

    # One process (8 devices) fed the same global batches: host 0's share of the text, then host 1's.
    class TwoHostText(LMObjective):
        def make_data(self, split, *, batch_size, process_index, process_count):
            return _Concat([lm_data.make_lm_iterator(
                self.config.data, split, batch_size=batch_size // 2, seq_len=self.seq_len + 1, process_index=i,
                process_count=2, seed=self.config.seed, data_dir=str(run / "data")) for i in range(2)])

    c = _config("text", 3, TEXT)
    c.data.data_dir = str(run / "data")  # the corpus, tokenizer and tfds files the launched run prepared
    trainer.train(c, str(tmp_path / "ref"), objective=TwoHostText(c))
    ref = _losses(tmp_path / "ref")
    # Same math on the same global batch; gloo collectives vs in-process sums reorder float additions.
    np.testing.assert_allclose([first[s] for s in (1, 2, 3)], [ref[s] for s in (1, 2, 3)], rtol=1e-5)

    out = _launch(2, "configs/lm/tiny.py", run, 6, TEXT)  # the same command again: resumes from step 3
    assert f"resuming from {run}/checkpoints/3" in out
    losses = _losses(run)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6] and all(losses[s] == first[s] for s in (1, 2, 3))
    assert losses[6] < losses[1]  # it kept learning across the resume
    data = json.loads((run / "checkpoints" / "6" / "data" / "metadata").read_text())
    assert len(data["hosts"]) == 2 and data["hosts"][0] != data["hosts"][1]  # each host its own share of the text


def test_sigterm_to_one_launched_process_stops_both_at_one_step_and_resumes(tmp_path):
    run, pid_file = tmp_path / "run", tmp_path / "pids"
    launcher = _launch(2, "configs/lm/tiny.py:synthetic", run, 400, SYNTH, background=True, pid_file=pid_file)
    deadline = time.time() + 300
    while time.time() < deadline and launcher.poll() is None:  # until training is under way
        try:
            if max(_losses(str(run)), default=0) >= 3:
                break
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.05)
    pids = dict(line.split() for line in pid_file.read_text().splitlines())
    assert sorted(pids) == ["0", "1"]
    os.kill(int(pids["1"]), signal.SIGTERM)  # the preempted worker only (not process 0, which logs)
    try:
        out, _ = launcher.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        launcher.kill()
        for pid in pids.values():
            os.kill(int(pid), signal.SIGKILL)
        pytest.fail("the processes hung after one of them received SIGTERM")
    assert launcher.returncode == 0, out[-4000:]  # both processes exited cleanly
    assert "preemption, agreed by every host" in out, out[-3000:]
    step = int(re.search(r"saving step (\d+) and stopping", out).group(1))
    assert 3 <= step < 400
    ckpt = C.Checkpointer(str(run), read_only=True)
    assert ckpt.all_steps() == [step]  # one consistent checkpoint, written by both processes
    ckpt.verify(step)
    assert len(json.loads((run / "checkpoints" / str(step) / "data" / "metadata").read_text())["hosts"]) == 2

    before = _losses(str(run))
    out = _launch(2, "configs/lm/tiny.py:synthetic", run, step + 2, SYNTH)  # restart both: resume and finish
    assert f"resuming from {run}/checkpoints/{step}" in out, out[-3000:]
    after = _losses(str(run))
    assert max(after) == step + 2 and all(after[s] == before[s] for s in range(1, step + 1))


def _nll_one_process(run, step, batch):
    """The nll one process (this test's, 8 devices) computes with the weights saved at ``step`` on ``batch``."""
    from teal_jax.train.lm_objective import LMObjective

    config, params, model_state = C.load_params(str(run), step=step)
    return float(LMObjective(config).eval_metrics(params, model_state, batch)["loss"])


@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)])
def test_restore_across_process_counts_through_the_launcher(tmp_path, first, then):
    from teal_jax.train.lm_objective import SyntheticTokens

    run = tmp_path / "run"
    _launch(first, "configs/lm/tiny.py:synthetic", run, 2, SYNTH)
    out = _launch(then, "configs/lm/tiny.py:synthetic", run, 4, SYNTH)
    assert f"{then} process(es)" in out and f"resuming from {run}/checkpoints/2" in out, out[-3000:]
    assert "the data order restarts" in out, out[-3000:]
    assert C.Checkpointer(str(run), read_only=True).all_steps() == [2, 4]
    losses = _losses(str(run), "nll")
    assert sorted(losses) == [1, 2, 3, 4] and all(np.isfinite(list(losses.values())))

    # The data order restarted: the first resumed batch is batch 0 of each of the new processes' shares.
    c = _config("synthetic", 4, SYNTH)
    rows = 8 // then
    batch = [next(SyntheticTokens(vocab_size=c.model.vocab_size, batch_size=rows, seq_len=c.data.seq_len + 1,
                                  seed=c.seed, process_index=i)) for i in range(then)]
    batch = {k: np.concatenate([b[k] for b in batch]) for k in batch[0]}
    # Step 3's loss is computed with the restored step-2 weights (resharded onto the new process count).
    np.testing.assert_allclose(losses[3], _nll_one_process(run, 2, batch), rtol=1e-5)
