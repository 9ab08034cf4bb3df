"""Two local processes (4 fake CPU devices each, gloo collectives) train as one 8-device job.

Each process reads its own disjoint share of the data; the global batch is assembled with
``jax.make_array_from_process_local_data``. The losses must equal a single process with 8 devices that sees the
same global batches (the two hosts' shares concatenated), and the checkpoint must hold both hosts' iterator states.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_default_matmul_precision", "highest")
    os.environ["TEAL_COORDINATOR"] = sys.argv[1]
    os.environ["TEAL_NUM_PROCESSES"] = "2"
    os.environ["TEAL_PROCESS_ID"] = sys.argv[2]
    from teal_jax.parallel import distributed
    distributed.initialize("auto")
    sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
    from _tiny import tiny_lm_config
    from teal_jax.train import trainer
    c = tiny_lm_config(steps=3, mesh=(4, 2, 1))
    c.train.checkpoint_every = 2
    out = trainer.train(c, sys.argv[3])
    print("RESULT", json.dumps({"process": jax.process_index(), "count": jax.process_count(),
                                "devices": jax.device_count(), "loss": out["loss"]}), flush=True)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    workdir = tmp_path / "run"
    coord = f"127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    procs = [subprocess.Popen([sys.executable, str(script), coord, str(i), str(workdir)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("multi-process run timed out")
        assert p.returncode == 0, out
        outs.append(out)
    results = [json.loads(line.split("RESULT ", 1)[1]) for out in outs for line in out.splitlines()
               if line.startswith("RESULT ")]
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
