"""The command line never answers a typo with a traceback: a mistyped --config key (with ml_collections' "did you
mean"), a badly typed value, an unknown config variant (with parse_variants' suggestion) and a read-only mode on a
missing run each print one clear line and exit non-zero, and nothing is created in the workdir."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "teal_jax.main", "--multihost=off", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args,expected", [
    (["--config=configs/lm/tiny.py", "--config.train.stpes=3"], 'stpes Did you mean "steps"'),
    (["--config=configs/lm/tiny.py", "--config.train.steps=abc"], "--config.train.steps=abc: invalid literal"),
    (["--config=configs/teal/demo.py:expret"], "unknown variant 'expret'; did you mean 'expert'?"),
    (["--config=configs/lm/nope.py"], "--config=configs/lm/nope.py"),
])
def test_config_typos_are_one_line_errors(tmp_path, args, expected):
    out = _main(*args, f"--workdir={tmp_path / 'run'}")
    assert out.returncode == 2, out.stderr
    assert expected in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mode", ["eval", "sample"])
def test_read_only_modes_on_a_missing_run_create_nothing(tmp_path, mode):
    out = _main("--config=configs/lm/tiny.py", f"--workdir={tmp_path / 'run'}", f"--mode={mode}")
    assert out.returncode == 1 and "no checkpoint under" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()
    out = _main(f"--workdir={tmp_path / 'run'}", f"--mode={mode}")  # no --config: the run's own
    assert out.returncode == 1 and "no checkpoint under" in out.stderr and not (tmp_path / "run").exists()
