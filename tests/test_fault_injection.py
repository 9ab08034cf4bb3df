"""Fault injection: a training run is SIGKILLed at seeded random points of its step loop (some right after a step
that starts an async save), and between the kills its newest checkpoint is damaged (a flipped byte, a truncated
file, an empty step folder); separately, the run kills itself at exact points of a save (while Orbax's async write
is in flight; after Orbax finalised a step but before its manifest). Every resume falls back to a step that
verifies, and the finished run's per-step losses and final parameters are bit-identical to an uninterrupted run on
CPU."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
from test_trainer import REPO, _env, _losses, _train_cmd

from teal_jax import checkpoint as C

STEPS = 12
SAVE = ("--config.train.checkpoint_every=2",)


def _start(workdir):
    return subprocess.Popen(_train_cmd(workdir, STEPS, SAVE), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _kill_at(workdir, step, delay):
    """Starts the run, waits until it has logged ``step`` (or finished), sleeps ``delay`` s, SIGKILLs it."""
    proc = _start(workdir)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            if max(_losses(workdir), default=0) >= step:
                break
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.02)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    return out


def _newest_state_file(workdir):
    steps = C.Checkpointer(workdir, read_only=True).all_steps()
    state = os.path.join(workdir, "checkpoints", str(steps[-1]), "state")
    files = [os.path.join(r, n) for r, _, ns in os.walk(state) for n in ns]
    return max(files, key=os.path.getsize)


def _flip(path):
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x10
    open(path, "wb").write(bytes(data))


def test_random_kills_and_damaged_checkpoints_resume_bit_identically(tmp_path):
    ref_dir, run_dir = str(tmp_path / "ref"), str(tmp_path / "run")
    subprocess.run(_train_cmd(ref_dir, STEPS, SAVE), cwd=REPO, env=_env(), check=True, capture_output=True,
                   timeout=300)
    ref = _losses(ref_dir)
    rng = random.Random(0)
    faults = ("flip", "truncate", "empty")
    said = []
    for fault in faults:
        step = rng.randint(3, STEPS - 2)
        _kill_at(run_dir, step, rng.choice((0.0, 0.01, 0.05, 0.2)))
        if not C.Checkpointer(run_dir, read_only=True).all_steps():
            continue
        if fault == "flip":
            _flip(_newest_state_file(run_dir))
        elif fault == "truncate":
            path = _newest_state_file(run_dir)
            os.truncate(path, os.path.getsize(path) // 2)
        else:
            os.makedirs(os.path.join(run_dir, "checkpoints", str(STEPS + 50)), exist_ok=True)
        said.append(fault)
    out = subprocess.run(_train_cmd(run_dir, STEPS, SAVE), cwd=REPO, env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert said, "no checkpoint was ever written before a kill: the faults were not exercised"
    assert _losses(run_dir) == ref  # every step's loss, bit for bit
    _, want, _ = C.load_params(ref_dir)
    _, got, _ = C.load_params(run_dir)
    for a, b in zip(_leaves(want), _leaves(got), strict=True):
        assert a.tobytes() == b.tobytes()
    assert os.listdir(os.path.join(run_dir, "checkpoints_rejected"))  # the damaged steps were set aside, kept


def _leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_metrics_file_cut_mid_line_is_repaired_on_resume(tmp_path):
    from teal_jax.train.metrics import MetricWriter

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "split": "train", "loss": 2.5}\n{"step": 2, "split": "tr')  # killed mid-write
    w = MetricWriter(str(tmp_path), enabled=True, tensorboard=False)
    w.write(2, "train", {"loss": 2.25})
    w.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 2.5), (2, 2.25)]


# The same training command, with the process killing itself at an exact point of a save (no hook in the library:
# the wrapper patches the class before running teal_jax.main).
_SELF_KILL = """
import os, runpy, signal, sys
from teal_jax import checkpoint as C
where, at = sys.argv[1], int(sys.argv[2])
if where == "in_async_save":  # Orbax's async write of step `at` has started and is still in flight
    real = C.Checkpointer.save
    def save(self, step, *args, **kwargs):
        real(self, step, *args, **kwargs)
        if step == at:
            os.kill(os.getpid(), signal.SIGKILL)
    C.Checkpointer.save = save
else:  # step `at` is finalised by Orbax, its manifest is not written yet
    real = C.write_manifest
    def write_manifest(step_dir):
        if os.path.basename(step_dir) == str(at):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(step_dir)
    C.write_manifest = write_manifest
sys.argv = ["teal_jax.main", *sys.argv[3:]]
runpy.run_module("teal_jax.main", run_name="__main__")
"""


def test_kills_inside_a_save_resume_bit_identically(tmp_path):
    """SIGKILL while Orbax's async write of step 4 is in flight, then (on the resumed run) after Orbax finalised
    step 8 but before its manifest: each resume skips the incomplete step (or Orbax never lists it) and the finished
    run matches an uninterrupted one bit for bit."""
    ref_dir, run_dir = str(tmp_path / "ref"), str(tmp_path / "run")
    subprocess.run(_train_cmd(ref_dir, STEPS, SAVE), cwd=REPO, env=_env(), check=True, capture_output=True,
                   timeout=300)
    cmd = _train_cmd(run_dir, STEPS, SAVE)
    assert cmd[1:3] == ["-m", "teal_jax.main"]
    for where, at in (("in_async_save", 4), ("before_seal", 8)):
        out = subprocess.run([sys.executable, "-c", _SELF_KILL, where, str(at), *cmd[3:]], cwd=REPO, env=_env(),
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == -signal.SIGKILL, out.stdout[-2000:] + out.stderr[-2000:]
        steps = C.Checkpointer(run_dir, read_only=True).all_steps()
        assert not os.path.isfile(os.path.join(run_dir, "checkpoints", str(at), C.MANIFEST)), (where, steps)
    out = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "step 8 skipped: manifest: missing (not sealed" in out.stdout + out.stderr
    assert _losses(run_dir) == _losses(ref_dir)
    _, want, _ = C.load_params(ref_dir)
    _, got, _ = C.load_params(run_dir)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(_leaves(want), _leaves(got), strict=True))
