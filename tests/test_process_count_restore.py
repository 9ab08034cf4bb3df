"""A checkpoint written by 2 processes resumes on 1, and one written by 1 resumes on 2 (4 + 4 fake CPU devices vs 8):
weights and optimizer state are resharded by Orbax onto the new process layout, bit for bit; the data order restarts
with a message that says so, and training continues."""

import _multiprocess as mp
import jax
import numpy as np
import pytest

from teal_jax import checkpoint as C

BODY = """
    from _tiny import tiny_lm_config
    from teal_jax.train import trainer
    workdir, steps = ARGS[0], int(ARGS[1])
    c = tiny_lm_config(steps=steps, mesh=(4, 2, 1))
    if len(ARGS) > 2:  # first dump the state this process layout restores (gathered to process 0)
        import numpy as np
        from jax.experimental import multihost_utils
        t = trainer.Trainer(c, workdir)
        state, step = t.restore_or_init()
        params = jax.tree.leaves(multihost_utils.process_allgather(state["params"], tiled=True))
        if jax.process_index() == 0:
            np.savez(ARGS[2], step=step, *[np.asarray(x) for x in params])
        t.writer.close()
        t.checkpointer.close()
    out = trainer.train(c, workdir)
    print("RESULT", json.dumps({"loss": out["loss"], "count": jax.process_count()}), flush=True)
"""


@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)])
def test_resume_on_another_process_count(tmp_path, first, then):
    script = mp.write_worker(tmp_path / "worker.py", BODY)
    run = tmp_path / "run"
    for rc, out in mp.finish(mp.start(script, first, run, 2)):
        assert rc == 0, out[-3000:]
    _, saved, _ = C.load_params(str(run), step=2)
    dump = tmp_path / "restored.npz"
    outs = mp.finish(mp.start(script, then, run, 3, dump))
    for rc, out in outs:
        assert rc == 0, out[-3000:]
        (result,) = mp.results(out)
        assert result["count"] == then and np.isfinite(result["loss"])
    log = outs[0][1]  # process 0 writes the run's messages
    assert f"resuming from {run}/checkpoints/2" in log and "the data order restarts" in log, log[-2000:]
    # What the new process layout restored is the saved step-2 state, bit for bit (Orbax resharded it).
    restored = np.load(dump)
    assert int(restored["step"]) == 2
    want = [np.asarray(x) for x in jax.tree.leaves(saved)]
    got = [restored[f"arr_{i}"] for i in range(len(want))]
    assert all(a.shape == b.shape and a.tobytes() == b.tobytes() for a, b in zip(want, got, strict=True))
    assert C.Checkpointer(str(run), read_only=True).all_steps() == [2, 3]
