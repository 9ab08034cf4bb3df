"""The demo's evaluate stage: the evaluators of ``configs/teal/demo.py``'s ``config.evals`` on every finished TEAL
run, then the report (``teal_jax.demo_report``).

Called by ``teal_jax.demo`` as its last stage (``evaluate``); it reads what the training stages left in the demo
directory and writes::

    <workdir>/<run>/eval/<name>/step_<N>/  what each evaluator wrote (results.json, generated PNGs, sample grids, WAVs
                                          with their spectrograms, captions / transcripts as TSV)
    <workdir>/evaluate/results.json       the figures read from those results, chosen guidance scales with their
                                          validation figures, timings (the stage's result: a re-run skips it)
    <workdir>/report.md, report/*.png

Classifier-free guidance: the lead runs (``GUIDANCE_TUNED``) let the text_to_image / text_to_speech evaluators choose
their scales on validation prompts (training sum pairs, another seed); every other run is evaluated with strict
TEAL's chosen scales (``guidance_scale`` set), so an ablation differs from it only in what it ablates.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from typing import Any

import ml_collections

from teal_jax.demo_report import (
    ABLATIONS,
    BASELINE,
    GUIDANCE_FROM,
    GUIDANCE_TUNED,
    RUN_LABELS,
    TEAL_RUNS,
    _fmt,
    plot_task_figures,
    plot_training_curves,
    write_report,
)
from teal_jax.train.metrics import format_duration
from teal_jax.vocab import SPAN_MODALITIES

TRAIN_STAGE_NAMES = ("text_lm", "image_tokenizer", "audio_codec", *TEAL_RUNS)
# The report's figure of a run -> (evaluator name in configs/teal/demo.py's config.evals, key of its result).
FIGURES = (
    ("caption_accuracy", "caption", "accuracy"), ("caption_exact_match", "caption", "exact_match"),
    ("caption_forced_choice", "caption", "forced_choice"),
    ("t2i_likelihood_accuracy", "t2i", "likelihood_accuracy"), ("t2i_nll_true_prompt", "t2i", "nll_true"),
    ("t2i_nll_mean_prompt", "t2i", "nll_mean"),
    ("asr_wer", "asr", "wer"), ("asr_exact_match", "asr", "exact_match"),
    ("asr_wer_single_word", "asr", "wer_single_word"), ("asr_wer_multi_word", "asr", "wer_multi_word"),
    ("guidance_image", "t2i", "guidance"), ("guidance_speech", "tts", "guidance"),
    ("t2i_accuracy", "t2i", "accuracy"), ("tts_accuracy", "tts", "accuracy"),
    ("reasoning_image_accuracy", "reasoning", "image_accuracy"),
    ("reasoning_speech_accuracy", "reasoning", "speech_accuracy"), ("lm_sum_answers", "reasoning", "lm_sum_answers"),
    ("text_ppl", "text", "teal_ppl"), ("text_logits_bitwise_equal", "text", "logits_bitwise_equal"),
)


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _done_file(workdir: str, name: str) -> str:
    return os.path.join(workdir, name, "stage_result.json")


def stage_done(workdir: str, name: str, config=None) -> bool:
    """A stage is done when its result file exists and (given its config) its newest checkpoint is the final step."""
    if not os.path.exists(_done_file(workdir, name)):
        return False
    if config is None:
        return True
    return _latest_step(os.path.join(workdir, name)) == config.train.steps


def _latest_step(run_dir: str) -> int | None:
    from teal_jax.checkpoint import Checkpointer

    return Checkpointer(run_dir, async_save=False).latest_step()


def ablation_baseline_step(workdir: str) -> int | None:
    """The step at which stage 1 is evaluated again for the ablation rows: the ablations' step count when it is
    below stage 1's and stage 1 kept a checkpoint there; else None (the ablations ran stage 1's budget)."""
    from teal_jax import checkpoint

    steps = set()
    for r in ABLATIONS:
        if stage_done(workdir, r):
            with open(_done_file(workdir, r)) as f:
                steps.add(int(json.load(f).get("steps", 0)))
    if len(steps) != 1 or not stage_done(workdir, "teal_stage1"):
        return None
    (step,) = steps
    with open(_done_file(workdir, "teal_stage1")) as f:
        if step >= int(json.load(f).get("steps", 0)):
            return None
    kept = checkpoint.Checkpointer(os.path.join(workdir, "teal_stage1"), async_save=False).all_steps()
    return step if step in kept else None


def demo_evals(variant: str, workdir: str) -> ml_collections.ConfigDict:
    """``configs/teal/demo.py``'s ``config.evals`` for the demo ``variant`` ('quick' -> the 'smoke' config), with the
    digit judge kept in ``<workdir>/classifiers/digits`` (one judge for every run)."""
    evals = importlib.import_module("configs.teal.demo").get_config("smoke" if variant == "quick" else None).evals
    for section in evals.values():
        if "digit_judge_steps" in section:
            section.digit_judge_dir = os.path.join(workdir, "classifiers", "digits")
    return evals


def sampling_plan(evals: ml_collections.ConfigDict, sample: Any) -> dict[str, Any]:
    """Every sampling setting of the evaluation (stated in the report): the run config's ``sample`` settings
    (temperature, top-p, top-k, seed: what the evaluators read) and the evaluators' counts and guidance grid."""
    from teal_jax.data import templates

    sample = dict(sample or {})
    t2i, tts, reasoning = evals.t2i, evals.tts, evals.reasoning
    seed = int(sample.get("seed", 0))
    return {"temperature": float(sample.get("temperature", 0.7)), "top_p": float(sample.get("top_p", 0.9)),
            "top_k": int(sample.get("top_k", 0)), "seed": seed,
            "t2i_per_class": int(t2i.per_class), "tts_per_class": int(tts.per_class),
            "reasoning_per_pair": int(reasoning.per_pair),
            "reasoning_n": len(templates.REASONING_EVAL_PAIRS) * int(reasoning.per_pair), "text_max_new_tokens": 32,
            "guidance_scales": [float(g) for g in t2i.guidance_scales],
            "validation_per_class": int(t2i.validation_per_class),
            "validation_pairs": [list(p) for p in templates.REASONING_VALIDATION_PAIRS[: t2i.validation_pairs]],
            "validation_seed": seed + 1}


def evaluate_run(run_dir: str, evals: ml_collections.ConfigDict, *, guidance: dict[str, dict[str, Any]] | None = None,
                 step: int | None = None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Runs the ``evals`` evaluators on one TEAL run (its newest checkpoint, or ``step``) and reads their results ->
    (figures (``FIGURES``), text perplexity row, {'guidance': per modality ('image', 'audio') the validation figures
    that chose the scale, or the given ``{'chosen', 'from'}``; 'validation_s', 'generation_s', 'asr': the ASR
    result}). With ``guidance``, the generation evaluators use those scales and choose none."""
    import teal_jax
    from teal_jax.evaluate import evaluators as evaluators_lib

    step = _latest_step(run_dir) if step is None else int(step)
    model = teal_jax.load(run_dir, step)
    config = model.run_config.copy_and_resolve_references()
    config.unlock()
    config.evals = evals.copy_and_resolve_references()
    if guidance is not None:
        config.evals.t2i.guidance_scale = float(guidance["image"]["chosen"])
        config.evals.tts.guidance_scale = float(guidance["audio"]["chosen"])
    results = evaluators_lib.run_evaluators(evaluators_lib.make_evaluators(config), model, workdir=run_dir,
                                            step=step)
    figs = {key: results[name][k] for key, name, k in FIGURES if k in results.get(name, {})}
    if "text_logits_bitwise_equal" in figs:
        figs["text_logits_bitwise_equal"] = bool(figs["text_logits_bitwise_equal"])
    ppl = results["text"]
    text_row = {"ppl": ppl["teal_ppl"], "bitwise": bool(ppl["logits_bitwise_equal"]), "base_ppl": ppl["base_ppl"],
                "max_abs_logit_diff": ppl["max_abs_logit_diff"]}
    t2i, tts = results["t2i"], results["tts"]
    chosen = guidance or {"image": t2i["guidance_validation"], "audio": tts["guidance_validation"]}
    info = {"guidance": chosen, "validation_s": round(t2i["validation_s"] + tts["validation_s"], 1),
            "generation_s": round(t2i["generation_s"] + tts["generation_s"] + results["reasoning"]["generation_s"],
                                  1), "asr": results["asr"]}
    return figs, text_row, info


def _classifiers(workdir: str, evals: ml_collections.ConfigDict, run_config) -> dict[str, float]:
    """The independent judges the evaluators use (trained now where not cached: a digit-image CNN on real train
    digits; the spoken-word classifier the codec stage trained on clean train speech) and their held-out figures."""
    from teal_jax.data.speech import build_spoken_words, load_clips
    from teal_jax.evaluate import speech_classifier as sc
    from teal_jax.evaluate import teal_evaluators as te

    digit_clf = te.digit_judge(evals.t2i.digit_judge_dir, int(evals.t2i.digit_judge_steps))
    data_dir, speech_config = te.speech_data(run_config, evals.tts.get("data_dir", ""),
                                             evals.tts.get("speech_config", ""))
    speech_clf = te.speech_judge(evals.tts.get("speech_judge_dir") or sc.cache_dir(data_dir, speech_config),
                                 data_dir, speech_config, int(evals.tts.speech_judge_steps))
    test_images, test_labels = te.heldout_digits()
    test_clips = load_clips(build_spoken_words(data_dir, speech_config).as_data_source(split="test"),
                            max_samples=sc.CLIP_SAMPLES, labelled_only=True)
    return {"digit classifier accuracy, real held-out digits": digit_clf.accuracy(test_images, test_labels),
            "spoken-word classifier accuracy, real held-out voices": speech_clf.accuracy(test_clips["audio"],
                                                                                       test_clips["label"])}


def _todo(workdir: str, runs: list[str]) -> list[tuple[str, str, int | None]]:
    """(report row, run directory name, step or None = newest) of every evaluation, in order: stage 1 again at the
    ablations' step count right after stage 1 when it kept that checkpoint."""
    todo: list[tuple[str, str, int | None]] = [(r, r, None) for r in runs]
    base_step = ablation_baseline_step(workdir)
    if base_step is not None:
        todo.insert(runs.index("teal_stage1") + 1, (BASELINE, "teal_stage1", base_step))
    return todo


def _sample_files(workdir: str, run: str, step: int | None) -> tuple[dict[str, str], list[str]]:
    """The sample grids the evaluators wrote for a run at ``step`` ({title: path relative to workdir}) and the
    folders holding its WAVs."""
    step = _latest_step(os.path.join(workdir, run)) if step is None else step
    at = lambda name: os.path.join(run, "eval", name, f"step_{step}")  # noqa: E731
    grids = {}
    for title, rel in (("text-to-image, one row per prompted digit", os.path.join(at("t2i"), "t2i_grid.png")),
                       ("reasoning images, one row per answer digit",
                        os.path.join(at("reasoning"), "reasoning_image_grid.png"))):
        if os.path.exists(os.path.join(workdir, rel)):
            grids[title] = rel
    wavs = [at(d) for d in ("tts", "reasoning") if os.path.isdir(os.path.join(workdir, at(d)))]
    return grids, wavs


def _evaluate(workdir: str, variant: str, runs: list[str]) -> dict[str, Any]:
    """Every figure of the evaluate stage (what ``evaluate/results.json`` holds)."""
    from teal_jax import checkpoint

    teal_cfg = checkpoint.read_config(os.path.join(workdir, runs[0]))
    evals = demo_evals(variant, workdir)
    _say("evaluate: independent classifiers")
    evaluation = {"runs": {}, "text": {}, "classifiers": _classifiers(workdir, evals, teal_cfg),
                  "sampling": sampling_plan(evals, teal_cfg.get("sample", {})), "guidance": {}, "timing": {},
                  "notes": []}
    todo = _todo(workdir, runs)
    t_runs = time.time()
    for i, (r, run, step) in enumerate(todo):
        # ETA: the runs evaluated so far, on average (the first run also compiles: an upper bound after it).
        eta = f", eta {format_duration((time.time() - t_runs) / i * (len(todo) - i))}" if i else ""
        _say(f"evaluate: {r} ({i + 1}/{len(todo)}" + (f", step {step}" if step else "") + f"{eta})")
        source = evaluation["guidance"].get(GUIDANCE_FROM)
        given = None
        if r not in GUIDANCE_TUNED and source is not None:
            given = {m: {"chosen": source[m]["chosen"], "from": GUIDANCE_FROM} for m in SPAN_MODALITIES}
        t_run = time.time()
        figs, text_row, info = evaluate_run(os.path.join(workdir, run), evals, guidance=given, step=step)
        for m in SPAN_MODALITIES:
            g = info["guidance"][m]
            if "accuracy" in g:
                _say(f"evaluate: guidance for {m}: {g['chosen']:g} (validation accuracy per scale {g['accuracy']}, "
                     f"{g['wall_s']} s)")
        if not evaluation["notes"]:
            asr = info["asr"]
            evaluation["notes"].append(
                f"ASR is scored on the {asr['clips_fit']} of {asr['clips_total']} held-out clips that fit one "
                f"{asr['audio_seconds']:g} s audio span (training skips longer clips too).")
        evaluation["runs"][r] = figs
        evaluation["guidance"][r] = info["guidance"]
        evaluation["timing"][r] = {"validation_s": info["validation_s"], "generation_s": info["generation_s"],
                                   "total_s": round(time.time() - t_run, 1)}
        evaluation["text"].setdefault("base LM", {"ppl": text_row["base_ppl"], "bitwise": True})
        evaluation["text"][r] = text_row
        _say(f"evaluate: {r}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in figs.items()))
    if any(r == BASELINE for r, _, _ in todo):
        step = next(s for r, _, s in todo if r == BASELINE)
        evaluation["notes"].append(f"The ablations trained {step} steps; '{RUN_LABELS[BASELINE]}' is stage 1's "
                                   f"checkpoint at step {step} of its longer schedule.")
    return evaluation


def evaluate_stage(workdir: str, variant: str, stage_results: dict[str, dict]) -> dict[str, Any]:
    """The demo's ``evaluate`` stage: the evaluators of every finished TEAL run (``TEAL_RUNS``, whichever exist, in
    that order; stage 1 again at the ablations' step count when it kept that checkpoint), guidance chosen on
    validation prompts, report.md and plots.

    Skipped (its results re-read) when ``evaluate/results.json`` is newer than every TEAL run's result."""
    out_dir = os.path.join(workdir, "evaluate")
    results_path = os.path.join(out_dir, "results.json")
    runs = [r for r in TEAL_RUNS if stage_done(workdir, r)]
    if not runs:
        raise RuntimeError(f"evaluate: no finished TEAL run under {workdir} (looked for {list(TEAL_RUNS)})")
    newest = max((os.path.getmtime(_done_file(workdir, r)) for r in runs), default=0.0)
    if os.path.exists(results_path) and os.path.getmtime(results_path) > newest:
        _say(f"evaluate: up to date ({results_path}); rewriting the report only")
        with open(results_path) as f:
            evaluation = json.load(f)
    else:
        t0 = time.time()
        evaluation = _evaluate(workdir, variant, runs)
        evaluation["tokenizers"] = _tokenizer_figures(stage_results, workdir)
        evaluation["wall_s"] = round(time.time() - t0, 1)
        from teal_jax.evaluate.common import write_json

        write_json(results_path, evaluation)
    plots = {}
    stages = [s for s in ("text_lm", "image_tokenizer", "audio_codec", *TEAL_RUNS)
              if os.path.exists(os.path.join(workdir, s, "metrics.jsonl"))]
    p = plot_training_curves(workdir, stages, os.path.join(workdir, "report", "training_curves.png"))
    if p:
        plots["Training curves"] = os.path.relpath(p, workdir)
    p = plot_task_figures(evaluation.get("runs", {}), os.path.join(workdir, "report", "task_figures.png"))
    if p:
        plots["Held-out task figures"] = os.path.relpath(p, workdir)
    evaluation["plots"] = plots
    where = {r: (run, step) for r, run, step in _todo(workdir, runs)}
    evaluation["samples"] = {r: os.path.join(where.get(r, (r, None))[0], "eval") for r in evaluation.get("runs", {})}
    evaluation["grids"], evaluation["wav_dirs"] = {}, {}
    for r in evaluation.get("runs", {}):
        evaluation["grids"][r], evaluation["wav_dirs"][r] = _sample_files(workdir, *where.get(r, (r, None)))
    all_results = dict(stage_results)
    for s in TRAIN_STAGE_NAMES:
        if s not in all_results and os.path.exists(_done_file(workdir, s)):
            with open(_done_file(workdir, s)) as f:
                all_results[s] = json.load(f)
    path = write_report(workdir, variant, all_results, evaluation)
    _say(f"report: {path}")
    return {"stage": "evaluate", "report": path, "runs": evaluation.get("runs", {})}


def _tokenizer_figures(stage_results: dict[str, dict], workdir: str) -> dict[str, float]:
    """Held-out figures the tokenizer stages reported at their final evaluation."""
    out = {}
    for s, prefix in (("image_tokenizer", "image"), ("audio_codec", "audio")):
        path = os.path.join(workdir, s, "stage_result.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            m = json.load(f).get("metrics", {})
        for k, v in sorted(m.items()):
            if k.startswith("eval_heldout") or k in ("eval_psnr", "eval_ssim", "eval_usage"):
                out[f"{prefix}: {k[5:]}"] = v
    return out
