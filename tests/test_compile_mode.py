"""--mode=compile: the train step compiled ahead of time for a mesh of fake CPU devices; the per-device table and the
fit verdict. Parameter and optimizer bytes are checked against the parameter count and the mesh (exact); the
temporaries are XLA's figure (only checked to be positive)."""

import os
import subprocess
import sys

import pytest
from _tiny import tiny_lm_config

from teal_jax.train import memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_per_device_bytes_follow_the_mesh(tmp_path, devices):
    dp = memory.compile_report(tiny_lm_config(mesh=(8, 1, 1)), str(tmp_path / "dp"), "h100")
    fsdp = memory.compile_report(tiny_lm_config(mesh=(1, 8, 1)), str(tmp_path / "fsdp"), "1M")
    n_params = 2 * 256 * 32 + 2 * (4 * 32 * 32 + 3 * 32 * 64 + 2 * 32) + 32  # embed + head, 2 layers, final norm
    assert dp["parameters"] == 4 * n_params  # replicated: every device holds all float32 parameters
    assert dp["optimizer_state"] >= 2 * dp["parameters"]  # Adam's two moments (+ counters)
    assert fsdp["parameters"] < dp["parameters"] / 4  # FSDP splits the large matrices over 8 devices
    for r in (dp, fsdp):
        assert r["arguments"] >= r["parameters"] + r["optimizer_state"] + r["batch"] and r["temporaries"] > 0
        assert r["total"] == r["arguments"] + r["temporaries"] + r["code"]
    assert dp["fits"] and not fsdp["fits"]
    table = memory.format_report(dp)
    assert "optimizer state" in table and "fits h100 (80.000 GiB per device" in table


def test_targets_and_the_command_line(tmp_path):
    assert memory.target_bytes("v5e") == 16 << 30 and memory.target_bytes("24G") == 24 << 30
    with pytest.raises(ValueError, match="--target='h1000': name one of"):
        memory.target_bytes("h1000")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-m", "teal_jax.main", "--config=configs/lm/tiny.py:synthetic",
                          f"--workdir={tmp_path}", "--mode=compile", "--target=1K", "--config.mesh.shape=(2,4,1)",
                          "--multihost=off"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 3 and "does NOT fit 1K" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
