"""The README's main job in miniature: the tiny LM trains on the generated corpus, then loads and samples text."""

import json
import os
import subprocess
import sys

import teal_jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_text_stage_trains_resumes_and_samples(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "teal_jax.demo", f"--workdir={tmp_path}", "--variant=quick", "--stages=text_lm"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[demo] sample: 'three plus four is' -> " in out.stdout
    result = json.loads((tmp_path / "text_lm" / "stage_result.json").read_text())
    # 60 steps take the quick LM from ln(512) = 6.2 nats to well under 3.5 on held-out text (seen: 1.8).
    assert result["metrics"]["eval_loss"] < 3.5, result
    rows = [json.loads(line) for line in (tmp_path / "text_lm" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"] - 1.0

    # A second run finds the finished stage and does not train again.
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "already trained" in again.stdout and "training lm" not in again.stdout

    lm = teal_jax.load(str(tmp_path / "text_lm"))
    texts = lm.generate(["three plus four is", "the"], max_new_tokens=8)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    ids = lm.generate([[lm.tokenizer.bos_id, 5, 6]], max_new_tokens=4)
    assert len(ids[0]) == 4
