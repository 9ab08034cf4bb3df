"""Shared harness of the multi-process tests: N local processes (fake CPU devices each, gloo collectives) joined
into one jax.distributed job through the TEAL_* variables, started from a worker script body.

A worker script is ``PRELUDE`` + the test's own body; it is called with ``coordinator process_id n_processes
*args`` and sees them as ``COORD, PID, N, ARGS``; ``PRELUDE`` has set up 8 // N fake devices per process, gloo, and
initialised jax.distributed (when N > 1), and put tests/ on the path.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PRELUDE = textwrap.dedent("""
    import json, os, sys
    COORD, PID, N, ARGS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // N}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_default_matmul_precision", "highest")
    if N > 1:
        os.environ.update(TEAL_COORDINATOR=COORD, TEAL_NUM_PROCESSES=str(N), TEAL_PROCESS_ID=str(PID))
    from teal_jax.parallel import distributed
    distributed.initialize("auto" if N > 1 else "off")
    sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_worker(path, body: str) -> str:
    path.write_text(PRELUDE + textwrap.dedent(body))
    return str(path)


def start(script: str, n: int, *args) -> list[subprocess.Popen]:
    """Starts ``n`` processes of ``script`` (one job)."""
    coord = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    return [subprocess.Popen([sys.executable, script, coord, str(i), str(n), *map(str, args)], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(n)]


def finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str]]:
    """``(returncode, output)`` of each process; a hang kills all of them and fails the test."""
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("a multi-process run timed out (a process hung)")
        outs.append((p.returncode, out))
    return outs


def results(out: str) -> list[dict]:
    """The JSON objects a worker printed after ``RESULT ``."""
    return [json.loads(line.split("RESULT ", 1)[1]) for line in out.splitlines() if line.startswith("RESULT ")]
