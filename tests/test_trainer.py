"""The trainer on 8 fake CPU devices: mesh equivalence, sharding, accumulation, frozen params, NaN stop, checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _tiny import tiny_lm_config
from jax.sharding import PartitionSpec as P

from teal_jax.parallel import sharding as shd
from teal_jax.train import trainer as trainer_lib
from teal_jax.train.lm_objective import LMObjective

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_steps(trainer, n):
    state = trainer.init_state()
    losses = []
    for _ in range(n):
        batch = shd.global_batch(next(trainer.train_iter), trainer.mesh)
        with shd.set_mesh(trainer.mesh), shd.axis_rules():
            state, metrics = trainer._train_step(state, batch)
        losses.append(float(metrics["loss"]))
    return state, losses


def _host(tree):
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
    c = tiny_lm_config(mesh=(1, 1, 1))
    t = trainer_lib.Trainer(c, str(tmp_path_factory.mktemp("one")), devices=jax.devices()[:1])
    state, losses = _run_steps(t, 2)
    return losses, _host(state["params"])


# Tolerance: float32 with 'highest' matmul precision; sharded reductions reorder sums, so allow 1e-5 relative.
@pytest.mark.parametrize("mesh", [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)])
def test_mesh_shapes_match_one_device(mesh, one_device_run, tmp_path, devices):
    ref_losses, ref_params = one_device_run
    t = trainer_lib.Trainer(tiny_lm_config(mesh=mesh), str(tmp_path))
    state, losses = _run_steps(t, 2)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
    got = _host(state["params"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got, ref_params)
    # The parameters really are sharded as LOGICAL_AXIS_RULES say.
    q = state["params"]["model"]["layers"]["attn"]["q_proj"]["kernel"]  # [layers, embed, heads, head_dim]
    assert q.sharding.spec == P(None, "fsdp", "tensor", None)
    emb = state["params"]["model"]["embed"]["embedding"]  # [vocab, embed]
    assert emb.sharding.spec == P("tensor", "fsdp")
    fsdp, tensor = t.mesh.shape["fsdp"], t.mesh.shape["tensor"]
    assert q.addressable_shards[0].data.shape == (2, 32 // fsdp, 4 // tensor, 8)
    # Optimizer moments follow their parameters.
    mu = state["opt_state"]["model"].inner_states["train"].inner_state[1][0].mu
    assert mu["layers"]["attn"]["q_proj"]["kernel"].sharding.is_equivalent_to(q.sharding, q.ndim)


def test_mesh_errors_name_both_numbers(devices, tmp_path):
    with pytest.raises(ValueError, match=r"needs 9 devices, but 8"):
        shd.make_mesh((3, 3, 1))
    with pytest.raises(ValueError, match=r"multiple of 3 devices, but 8"):
        shd.make_mesh((-1, 3, 1))
    c = tiny_lm_config(mesh=(1, 1, 8))  # 4 heads cannot split over 8 tensor shards
    with pytest.raises(ValueError, match=r"size 4, which does not divide .* \('tensor',\) of size 8"):
        trainer_lib.Trainer(c, str(tmp_path))
    c = tiny_lm_config(mesh=(8, 1, 1), batch_size=4)
    with pytest.raises(ValueError, match=r"4 examples per microbatch.*8 batch shards"):
        trainer_lib.Trainer(c, str(tmp_path))


def test_grad_accumulation_matches_full_batch(tmp_path, devices):
    # Every synthetic token has weight 1, so the mean over 2 microbatch means equals the full-batch mean.
    ref = trainer_lib.Trainer(tiny_lm_config(mesh=(4, 1, 1), batch_size=8), str(tmp_path / "a"),
                              devices=jax.devices()[:4])
    c = tiny_lm_config(mesh=(4, 1, 1), batch_size=8)
    c.train.grad_accum = 2
    acc = trainer_lib.Trainer(c, str(tmp_path / "b"), devices=jax.devices()[:4])
    s1, l1 = _run_steps(ref, 2)
    s2, l2 = _run_steps(acc, 2)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), _host(s1["params"]),
                 _host(s2["params"]))


class _FrozenLayers(LMObjective):
    def trainable(self, params):
        return {"model": {k: jax.tree.map(lambda _, k=k: k != "layers", v) for k, v in params["model"].items()}}


def test_frozen_parameters_stay_bit_identical(tmp_path, devices):
    c = tiny_lm_config(mesh=(2, 2, 2))
    t = trainer_lib.Trainer(c, str(tmp_path), objective=_FrozenLayers(c))
    before = _host(t.init_state()["params"])
    after, _ = _run_steps(t, 3)
    after = _host(after["params"])
    for a, b in zip(jax.tree.leaves(before["model"]["layers"]), jax.tree.leaves(after["model"]["layers"]),
                    strict=True):
        assert a.tobytes() == b.tobytes()
    assert not np.array_equal(before["model"]["embed"]["embedding"], after["model"]["embed"]["embedding"])
    # Adam moments (mu, nu) are kept for the trainable leaves only.
    opt = t.init_state()["opt_state"]["model"]
    moment_elems = sum(x.size for x in jax.tree.leaves(opt) if x.ndim > 0)
    trainable_elems = sum(x.size for k, v in before["model"].items() if k != "layers" for x in jax.tree.leaves(v))
    assert moment_elems == 2 * trainable_elems


class _NanAtStep2(LMObjective):
    def grads(self, params, model_state, batch, rng, step):
        grads, model_state, metrics = super().grads(params, model_state, batch, rng, step)
        bad = jnp.where(step == 2, jnp.nan, 1.0)
        return jax.tree.map(lambda g: g * bad, grads), model_state, {**metrics, "loss": metrics["loss"] * bad}


def test_nan_stops_with_message_and_saves_last_good_state(tmp_path, devices):
    c = tiny_lm_config(steps=5, mesh=(8, 1, 1))
    t = trainer_lib.Trainer(c, str(tmp_path), objective=_NanAtStep2(c))
    with pytest.raises(trainer_lib.NonFiniteError, match=r"non-finite loss or gradient at step 3") as e:
        t.run()
    assert "checkpointed at step 2" in str(e.value)
    debug = tmp_path / "nan_debug" / "step_3"
    assert (debug / "batch_process0.npz").exists() and (debug / "metrics.json").exists()
    assert "finite, its checkpoint verified" in str(e.value)
    # replay.json: the offending batch's index, and the data state before it: set it and the batch comes back.
    replay = json.loads((debug / "replay_process0.json").read_text())
    assert replay["step"] == 3 and replay["batch_index"] == 2
    it = t._make_iter("train")
    it.set_state(replay["data_state_before"])
    saved = np.load(debug / "batch_process0.npz")
    again = next(it)
    assert set(saved.files) == set(again) and all(np.array_equal(saved[k], again[k]) for k in saved.files)
    t.checkpointer.verify(2)
    assert t.checkpointer.latest_step() == 2
    # The checkpoint holds the state after 2 good steps: it equals a clean 2-step run.
    clean, _ = _run_steps(trainer_lib.Trainer(c, str(tmp_path / "clean")), 2)
    restored, _, _ = t.checkpointer.restore(2, t.abstract_state())
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), _host(restored["params"]),
                 _host(clean["params"]))


def test_checkpoint_restores_onto_other_meshes(tmp_path, devices):
    c = tiny_lm_config(steps=2, mesh=(2, 2, 2))
    t = trainer_lib.Trainer(c, str(tmp_path))
    t.run()
    saved = _host(t.state["params"])
    t.checkpointer.close()
    for mesh, devs in (((8, 1, 1), None), ((1, 1, 1), jax.devices()[:1]), ((1, 2, 4), None)):
        c2 = tiny_lm_config(steps=2, mesh=mesh)
        t2 = trainer_lib.Trainer(c2, str(tmp_path), devices=devs)
        restored, _, _ = t2.checkpointer.restore(2, t2.abstract_state())
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), _host(restored["params"]), saved)
        leaf = restored["params"]["model"]["layers"]["mlp"]["up_proj"]["kernel"]
        assert leaf.sharding.mesh.shape == t2.mesh.shape
        t2.checkpointer.close()


def test_config_validation_errors(tmp_path):
    c = tiny_lm_config()
    c.train.stepz = 3
    with pytest.raises(ValueError, match=r"config.train.stepz: unknown field \(did you mean config.train.steps\?\)"):
        trainer_lib.Trainer(c, str(tmp_path))
    c = tiny_lm_config()
    c.train.batch_size = 7
    c.train.grad_accum = 2
    with pytest.raises(ValueError, match=r"batch_size=7 is not divisible by config.train.grad_accum=2"):
        trainer_lib.Trainer(c, str(tmp_path))


def _train_cmd(workdir, steps, extra=()):
    return [sys.executable, "-m", "teal_jax.main", "--config=configs/lm/tiny.py:synthetic", f"--workdir={workdir}",
            f"--config.train.steps={steps}", "--config.train.log_every=1", "--config.train.eval_every=0",
            "--config.train.checkpoint_every=3", "--config.train.batch_size=8", "--config.data.seq_len=16",
            "--config.model.num_layers=2", "--config.model.embed_dim=32", "--config.model.mlp_dim=64",
            "--config.model.vocab_size=256", "--config.mesh.shape=(2,2,2)", *extra]


def _losses(workdir):
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r["split"] == "train":
                out[r["step"]] = r["loss"]  # a resumed run re-logs steps after its checkpoint: keep the last
    return out


def _env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _wait_for_step(proc, workdir, step, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.stdout.read()}")
        try:
            if max(_losses(workdir), default=0) >= step:
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("timed out waiting for training progress")


@pytest.mark.slow  # CI covers kill + resume with tests/test_fault_injection.py (CI time budget)
def test_killed_and_resumed_run_matches_uninterrupted(tmp_path):
    """SIGKILL after step >= 4 (checkpoint at 3), then SIGTERM during the resumed run (graceful save), then resume
    again: every step's loss is bit-identical to an uninterrupted run on CPU."""
    steps = 10
    ref_dir, run_dir = str(tmp_path / "ref"), str(tmp_path / "run")
    subprocess.run(_train_cmd(ref_dir, steps), cwd=REPO, env=_env(), check=True, capture_output=True, timeout=300)
    ref = _losses(ref_dir)
    assert sorted(ref) == list(range(1, steps + 1))

    proc = subprocess.Popen(_train_cmd(run_dir, steps), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _wait_for_step(proc, run_dir, 4)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)

    proc = subprocess.Popen(_train_cmd(run_dir, steps), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _wait_for_step(proc, run_dir, 7)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "saving step" in out, out

    subprocess.run(_train_cmd(run_dir, steps), cwd=REPO, env=_env(), check=True, capture_output=True, timeout=300)
    got = _losses(run_dir)
    assert got == ref  # exact equality of every step's loss
