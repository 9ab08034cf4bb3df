"""Two local processes (4 fake CPU devices each, gloo collectives) train as one 8-device job.

Each process reads its own disjoint share of the data; the global batch is assembled with
``jax.make_array_from_process_local_data``. The losses must equal a single process with 8 devices that sees the
same global batches (the two hosts' shares concatenated), and the checkpoint must hold both hosts' iterator states.
"""

import json

import _multiprocess as mp
import numpy as np
import pytest

BODY = """
    from _tiny import tiny_lm_config
    from teal_jax.train import trainer
    c = tiny_lm_config(steps=3, mesh=(4, 2, 1))
    c.train.checkpoint_every = 2
    out = trainer.train(c, ARGS[0])
    print("RESULT", json.dumps({"process": jax.process_index(), "count": jax.process_count(),
                                "devices": jax.device_count(), "loss": out["loss"]}), flush=True)
"""


@pytest.mark.slow  # CI runs the same comparison through the launcher (tests/test_launch_local.py); time budget
def test_two_processes_match_one_process(tmp_path):
    script = mp.write_worker(tmp_path / "worker.py", BODY)
    workdir = tmp_path / "run"
    outs = mp.finish(mp.start(script, 2, workdir))
    for rc, out in outs:
        assert rc == 0, out
    results = [r for _, out in outs for r in mp.results(out)]
    assert sorted(r["process"] for r in results) == [0, 1]
    assert all(r["count"] == 2 and r["devices"] == 8 for r in results)
    assert results[0]["loss"] == results[1]["loss"]

    # Both hosts' iterator states are in the checkpoint (3 batches each were consumed at the final save).
    data = json.loads((workdir / "checkpoints" / "3" / "data" / "metadata").read_text())
    assert data["hosts"] == [{"index": 3}, {"index": 3}]

    # Reference: one process, 8 devices, global batches = host 0's share ++ host 1's share.
    from _tiny import tiny_lm_config

    from teal_jax.train import trainer
    from teal_jax.train.lm_objective import LMObjective, SyntheticTokens

    class TwoHostData(LMObjective):
        def make_data(self, split, *, batch_size, process_index, process_count):
            its = [SyntheticTokens(vocab_size=self.model_config.vocab_size, batch_size=batch_size // 2,
                                   seq_len=self.seq_len + 1, seed=self.config.seed, process_index=i)
                   for i in range(2)]

            class Cat(SyntheticTokens):
                def __next__(self_inner):
                    parts = [next(it) for it in its]
                    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

                def get_state(self_inner):
                    return {"index": its[0].index}

                def set_state(self_inner, s):
                    for it in its:
                        it.set_state(s)

            return Cat(vocab_size=1, batch_size=1, seq_len=1, seed=0, process_index=0)

    c = tiny_lm_config(steps=3, mesh=(4, 2, 1))
    ref = trainer.train(c, str(tmp_path / "ref"), objective=TwoHostData(c))
    # Same math on the same global batch; collectives over gloo vs in-process reorder float sums: 1e-5 relative.
    np.testing.assert_allclose(results[0]["loss"], ref["loss"], rtol=1e-5)
