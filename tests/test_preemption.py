"""Preemption on two local processes (4 fake CPU devices each): SIGTERM reaches ONE process only; JAX's preemption
sync point makes both stop at the same step, save one consistent checkpoint and exit cleanly; restarting both resumes
from it and finishes."""

import signal
import time

import _multiprocess as mp
from test_trainer import _losses

from teal_jax import checkpoint as C

STEPS = 400
BODY = """
    from _tiny import tiny_lm_config
    from teal_jax.train import trainer
    out = trainer.train(tiny_lm_config(steps=int(ARGS[1]), mesh=(4, 2, 1)), ARGS[0])
    print("RESULT", json.dumps({"process": jax.process_index(), "stopped_at": out.get("stopped_at")}), flush=True)
"""


def test_sigterm_to_one_process_stops_both_at_one_step_and_resumes(tmp_path):
    script = mp.write_worker(tmp_path / "worker.py", BODY)
    run = tmp_path / "run"
    procs = mp.start(script, 2, run, STEPS)
    deadline = time.time() + 240
    while time.time() < deadline and all(p.poll() is None for p in procs):  # wait until training is under way
        try:
            if max(_losses(str(run)), default=0) >= 5:
                break
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # the preempted worker only
    outs = mp.finish(procs)
    for rc, out in outs:
        assert rc == 0, out[-3000:]
    stopped = [r["stopped_at"] for _, out in outs for r in mp.results(out)]
    assert len(stopped) == 2 and stopped[0] == stopped[1] and 5 <= stopped[0] < STEPS, outs[0][1][-2000:]
    step = int(stopped[0])
    ckpt = C.Checkpointer(str(run), read_only=True)
    assert ckpt.all_steps() == [step]
    ckpt.verify(step)
    assert "preemption, agreed by every host" in outs[0][1]

    # Restart both: they resume from the agreed step and finish (a short run to keep the test quick).
    outs = mp.finish(mp.start(script, 2, run, step + 3))
    assert all(rc == 0 for rc, _ in outs), outs[-1][1][-3000:]
    assert f"resuming from {run}/checkpoints/{step}" in outs[0][1], outs[0][1][-3000:]  # process 0 writes the log
    assert max(_losses(str(run))) == step + 3
