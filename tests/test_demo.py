"""The README's main job, end to end in its quick variant: every stage trains, evaluates and reports; a second run
resumes (skips every finished stage); the trained runs load back in Python."""

import json
import math
import os
import subprocess
import sys

import pytest

import teal_jax
from teal_jax import demo_report as R

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("text_lm", "image_tokenizer", "audio_codec", "teal_expert", "teal_stage1", "teal_stage2",
          "ablation_codebook", "ablation_full", "ablation_lora")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "teal_jax.demo", f"--workdir={workdir}", "--variant=quick"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return workdir, cmd, env, out.stdout


def test_every_stage_runs_and_the_report_holds_every_figure(demo):
    workdir, _, _, stdout = demo
    for s in STAGES:
        assert (workdir / s / "stage_result.json").exists(), s
        assert f"=== stage {s}" in stdout
    text = json.loads((workdir / "text_lm" / "stage_result.json").read_text())
    # 60 steps take the quick LM from ln(512) = 6.2 nats to well under 3.5 on held-out text (seen: 1.8).
    assert text["metrics"]["eval_loss"] < 3.5, text
    rows = [json.loads(line) for line in (workdir / "text_lm" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"] - 1.0

    results = json.loads((workdir / "evaluate" / "results.json").read_text())
    keys = {"caption_accuracy", "t2i_accuracy", "asr_wer", "tts_accuracy", "reasoning_image_accuracy",
            "reasoning_speech_accuracy", "text_ppl"}
    trained = {r for r in R.TEAL_RUNS if (workdir / r / "stage_result.json").exists()}
    assert {"teal_stage1", "teal_stage2", "ablation_codebook", "ablation_full", "ablation_lora"} <= trained
    assert set(results["runs"]) == trained  # every finished TEAL run is evaluated
    for run, figs in results["runs"].items():
        assert keys <= set(figs), run
        for k in keys - {"asr_wer", "text_ppl"}:
            assert 0.0 <= figs[k] <= 1.0, (run, k, figs[k])
        assert figs["asr_wer"] >= 0 and math.isfinite(figs["text_ppl"]) and figs["text_ppl"] > 1
    # The frozen runs keep the LM: their text perplexity is the base LM's, every text logit bitwise equal.
    base = results["text"]["base LM"]["ppl"]
    for run in ("teal_stage1", "ablation_codebook"):
        assert results["text"][run]["bitwise"] is True and results["text"][run]["ppl"] == base
    # Full fine-tuning moves the LM, and so does LoRA on its attention (its factors start at B = 0 and train).
    assert results["text"]["ablation_full"]["bitwise"] is False
    assert results["text"]["ablation_lora"]["bitwise"] is False

    # Guidance: chosen on validation prompts by the lead runs, borrowed from strict TEAL by the others; every
    # sampling setting is stated.
    plan = results["sampling"]
    assert plan["validation_seed"] != plan["seed"]
    for run in results["runs"]:
        g = results["guidance"][run]
        for m in ("image", "audio"):
            assert g[m]["chosen"] in plan["guidance_scales"], (run, m, g)
            if run in R.GUIDANCE_TUNED:
                best = max(g[m]["accuracy"].values())
                assert g[m]["accuracy"][f"{g[m]['chosen']:g}"] == best, (run, m, g)
            else:
                assert g[m]["from"] == "teal_stage1"
        assert results["timing"][run]["generation_s"] > 0

    report = (workdir / "report.md").read_text()
    for needle in ("## Main result", "## Sampling settings", "captioning accuracy", "ASR word error rate",
                   "text perplexity", "report/training_curves.png", "report/task_figures.png", "| teal_stage2 |",
                   "t2i_grid.png", "temperature 0.7", "guidance validation"):
        assert needle in report, needle
    assert (workdir / "report" / "training_curves.png").stat().st_size > 1000
    evals = workdir / "teal_stage1" / "eval"  # each evaluator writes under <run>/eval/<name>/step_<N>/

    def one(name):
        (found,) = (evals / name).glob("step_*")
        return found

    assert list(one("t2i").glob("t2i_*.png")) and list(one("tts").glob("*.wav"))
    assert (one("t2i") / "t2i_grid.png").exists()
    assert (one("reasoning") / "reasoning_image_grid.png").exists()
    for wav in list(one("tts").glob("*.wav")) + list(one("reasoning").glob("*.wav")):
        assert wav.with_suffix(".png").exists(), wav  # the spectrogram beside each WAV
    assert (one("caption") / "captions.tsv").exists() and (one("asr") / "asr.tsv").exists()


def test_second_run_resumes_and_models_load(demo):
    workdir, cmd, env, _ = demo
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("already trained") == len(STAGES)
    assert "training " not in again.stdout and "evaluate: up to date" in again.stdout

    lm = teal_jax.load(str(workdir / "text_lm"))
    texts = lm.generate(["three plus four is", "the"], max_new_tokens=8)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    model = teal_jax.load(str(workdir / "teal_stage1"))
    images = model.generate_image(["seven"], temperature=0.0)
    assert images.shape == (1, 32, 32, 1) and images.dtype.name == "uint8"
    assert isinstance(model.caption(images)[0], str)


def _main(workdir, mode, env, *extra):
    cmd = [sys.executable, "-m", "teal_jax.main", f"--workdir={workdir}", f"--mode={mode}", "--multihost=off", *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # ~45 s; CI covers --mode=eval/sample in test_evaluators.py / test_inference_protocol.py
def test_eval_and_sample_modes_on_every_run_kind_of_the_demo(demo):
    """``main --mode=eval|sample`` on the demo's runs, with no --config (each run's own): the LM and the two
    tokenizer runs evaluate (their loss metrics in eval/results.json); the LM and TEAL sample; the tokenizer runs
    say they have no sampler. (TEAL's --mode=eval with its evaluators: tests/test_evaluators.py.)"""
    workdir, _, env, _ = demo
    for run in ("text_lm", "image_tokenizer", "audio_codec"):
        out = _main(workdir / run, "eval", env)
        assert out.returncode == 0, (run, out.stdout[-2000:] + out.stderr[-2000:])
        results = json.loads((workdir / run / "eval" / "results.json").read_text())
        assert results["step"] > 0 and results["metrics"] and all(math.isfinite(v) for v in
                                                                  results["metrics"].values()), (run, results)
    out = _main(workdir / "text_lm", "sample", env, "--prompt=three plus four is")
    assert out.returncode == 0 and "'three plus four is' -> '" in out.stdout, out.stderr[-2000:]
    out = _main(workdir / "teal_stage1", "sample", env, "--prompt=the sum of two and three is")
    assert out.returncode == 0 and "'the sum of two and three is' -> " in out.stdout, out.stderr[-2000:]
    for run, kind in (("image_tokenizer", "image_vq"), ("audio_codec", "audio_codec")):
        out = _main(workdir / run, "sample", env)
        assert out.returncode == 1 and f"an '{kind}' run" in out.stderr and "Traceback" not in out.stderr, out.stderr
