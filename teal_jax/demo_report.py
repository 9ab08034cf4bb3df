"""The demo's evaluation stage and report: held-out figures of every TEAL run, samples, ``report.md`` and plots.

Called by ``teal_jax.demo`` as its last stage (``evaluate``); it reads what the training stages left in the demo
directory and writes::

    <workdir>/report.md                 the lead runs first (teal_expert, then strict TEAL, each against its own
                                        targets), every sampling setting, every run, the wall time of each stage
    <workdir>/report/*.png              training curves, task figures per TEAL run
    <workdir>/samples/<run>/...         generated PNGs, sample grids (one row per prompted digit), WAVs with their
                                        spectrograms, captions / transcripts (TSV)
    <workdir>/evaluate/results.json     the raw figures, chosen guidance scales with their validation figures, timings
                                        (the stage's result: a re-run skips the evaluation)

Classifier-free guidance is chosen per modality on validation prompts (training sum pairs, another seed) before the
held-out figures are measured once with it (``evaluate_run``; ``teal_eval.choose_guidance``).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import numpy as np


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
    from teal_jax.checkpoint import Checkpointer

    return Checkpointer(os.path.join(workdir, name), async_save=False).latest_step() == config.train.steps


# (figure key, label, target, higher is better). A boolean target is met when the figure is True.
TARGETS = (
    ("caption_accuracy", "captioning accuracy (held-out digits)", 0.95, True),
    ("t2i_accuracy", "text-to-image judged correct (digit classifier)", 0.90, True),
    ("asr_wer", "ASR word error rate (held-out voices)", 0.05, False),
    ("tts_accuracy", "TTS judged correct (spoken-word classifier)", 0.85, True),
    ("reasoning_image_accuracy", "reasoning prompts, images", 0.80, True),
    ("reasoning_speech_accuracy", "reasoning prompts, speech", 0.80, True),
    ("text_logits_bitwise_equal", "frozen text logits bitwise equal to the base LM's", True, True),
)
# Each lead run's own targets: the frozen LM with modality-expert attention weights is held to the full set; strict
# TEAL (stage 1: only new rows, heads and span positions train) to captioning and text-to-image.
RUN_TARGETS = {
    "teal_expert": TARGETS,
    "teal_stage1": (("caption_accuracy", "captioning accuracy (held-out digits)", 0.85, True),
                    ("t2i_accuracy", "text-to-image judged correct (digit classifier)", 0.60, True)),
}
# Every TEAL run the evaluate stage looks for, in evaluation order; whichever have finished are evaluated.
TEAL_RUNS = ("teal_expert", "teal_stage1", "teal_stage2", "ablation_codebook", "ablation_full")
LEAD_RUNS = ("teal_expert", "teal_stage1")  # each gets its own section with its targets, in this order
# Stage 1's checkpoint at the ablations' (shorter) budget: the fair baseline of the ablation rows.
BASELINE = "teal_stage1_at_ablation_steps"
RUN_LABELS = {"teal_expert": "frozen LM + modality-expert attention", "teal_stage1": "strict TEAL (frozen, stage 1)",
              "teal_stage2": "frozen, stage 2 (bias/norm)", BASELINE: "frozen stage 1 at the ablations' step count",
              "ablation_codebook": "frozen stage 1, codebook init", "ablation_full": "full fine-tuning"}
RUN_DESCRIPTIONS = {
    "teal_expert": "The text LM stays frozen (its text logits are checked bitwise against the base LM); image and "
                   "audio positions use their own, trained attention weights (modality experts), text positions the "
                   "LM's.",
    "teal_stage1": "TEAL's stage 1 as the paper states it: the text LM frozen; only the new non-text parameters "
                   "train (embedding rows, output heads, and the learned span positions where the config has them).",
}
REPORT_RUNS = ("teal_expert", "teal_stage1", BASELINE, "teal_stage2", "ablation_full", "ablation_codebook")
# Classifier-free guidance: these runs choose their scales on the validation set; every other run uses strict TEAL's
# (an ablation then differs from it in what it ablates only), or chooses its own when strict TEAL was not evaluated.
GUIDANCE_TUNED = ("teal_expert", "teal_stage1")
GUIDANCE_FROM = "teal_stage1"


def ablation_baseline_step(workdir: str) -> int | None:
    """The step at which stage 1 is evaluated again for the ablation rows: the ablations' step count when it is
    below stage 1's and stage 1 kept a checkpoint there; else None (the ablations ran stage 1's budget)."""
    from teal_jax import checkpoint

    steps = set()
    for r in ("ablation_codebook", "ablation_full"):
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


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def plot_training_curves(workdir: str, stages: list[str], path: str) -> str | None:
    """One panel per stage: train loss (and eval loss where logged) against the step, from ``metrics.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    curves = {}
    for s in stages:
        rows = _read_jsonl(os.path.join(workdir, s, "metrics.jsonl"))
        train = [(r["step"], r["loss"]) for r in rows if r.get("split") == "train" and "loss" in r]
        evals = [(r["step"], r["loss"]) for r in rows if r.get("split") == "eval" and "loss" in r]
        if train:
            curves[s] = (train, evals)
    if not curves:
        return None
    cols = min(3, len(curves))
    rows_n = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.2 * rows_n), squeeze=False)
    for ax, (s, (train, evals)) in zip(axes.flat, curves.items(), strict=False):
        ax.plot(*zip(*train, strict=True), label="train")
        if evals:
            ax.plot(*zip(*evals, strict=True), "o-", label="eval")
        ax.set_title(s)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_task_figures(figures: dict[str, dict[str, float]], path: str) -> str | None:
    """Grouped bars: each task figure (accuracies; 1 - WER) per TEAL run, with the target drawn as a tick."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    runs = [r for r in REPORT_RUNS if r in figures]
    keys = [t for t in TARGETS if not isinstance(t[2], bool) and any(t[0] in figures[r] for r in runs)]
    if not runs or not keys:
        return None
    fig, ax = plt.subplots(figsize=(1.6 * len(keys) + 2, 3.6))
    width = 0.8 / len(runs)
    for i, r in enumerate(runs):
        vals = []
        for key, _, _, higher in keys:
            v = figures[r].get(key, float("nan"))
            vals.append(v if higher else 1.0 - v)
        ax.bar([k + i * width for k in range(len(keys))], vals, width, label=RUN_LABELS.get(r, r))
    for k, (_, _, target, higher) in enumerate(keys):
        t = target if higher else 1.0 - target
        ax.plot([k - width / 2, k + 0.8 - width / 2], [t, t], "k--", lw=1)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(keys))])
    ax.set_xticklabels([key.replace("_accuracy", "").replace("asr_wer", "asr (1-WER)") for key, *_ in keys],
                       fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("held-out score (dashed: full target)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _target_text(target: Any, higher: bool) -> str:
    if isinstance(target, bool):
        return "yes" if target else "no"
    return f"{'>=' if higher else '<='} {target}"


def _met(value: Any, target: Any, higher: bool) -> bool:
    if isinstance(target, bool):
        return bool(value) == target
    return value >= target if higher else value <= target


def _compare(a: dict[str, Any], b: dict[str, Any]) -> str:
    """'captioning accuracy 0.44 -> 0.54; ...' over the task figures both rows have."""
    return "; ".join(f"{label.split(' (')[0]} {_fmt(a[k])} -> {_fmt(b[k])}" for k, label, _, _ in TARGETS
                     if k in a and k in b)


def missed_targets_section(figures: dict[str, dict[str, Any]], main: str,
                           targets: tuple | None = None) -> list[str]:
    """Report lines for the targets ``main`` misses (``targets``, default ``RUN_TARGETS[main]`` or the full
    ``TARGETS``): each missed figure, then what the run's own figures say about why (conditioning by likelihood;
    frozen vs full fine-tuning at the same step count; strict TEAL vs modality experts). Empty when all are met."""
    row = figures.get(main, {})
    targets = RUN_TARGETS.get(main, TARGETS) if targets is None else targets
    missed = [(label, row[key], target, higher) for key, label, target, higher in targets
              if key in row and not _met(row[key], target, higher)]
    if not missed:
        return []
    lines = [f"### Where targets are missed ({RUN_LABELS.get(main, main)}), and what limits them", ""]
    lines += [f"- {label}: {_fmt(v)} (target {_target_text(t, higher)})" for label, v, t, higher in missed]
    lines.append("- Chance for the ten-digit tasks (captioning, text-to-image, TTS, reasoning) is 0.1.")
    if {"t2i_nll_true_prompt", "t2i_nll_mean_prompt"} <= set(row):
        gap = row["t2i_nll_mean_prompt"] - row["t2i_nll_true_prompt"]
        lines.append(
            f"- Does the image depend on the prompt? Held-out images' code NLL under their own prompt "
            f"{_fmt(row['t2i_nll_true_prompt'])} nats vs {_fmt(row['t2i_nll_mean_prompt'])} averaged over the ten "
            f"digit prompts ({_fmt(gap)} nats apart); the prompt of lowest NLL is the right digit for "
            f"{_fmt(row.get('t2i_likelihood_accuracy', float('nan')))} of them. "
            + ("Near chance: the model's image codes barely depend on the text, so sampled images cannot be judged "
               "correct much more often than chance, whatever the sampler."
               if row.get("t2i_likelihood_accuracy", 1.0) <= 0.2 else
               "Above chance: the prompt shapes the image likelihood; sampling does not yet turn it into images the "
               "classifier reads."))
    if "asr_wer_multi_word" in row and not _met(row.get("asr_wer", 0.0), 0.05, False):
        lines.append(
            f"- Where the ASR errors are: WER {_fmt(row['asr_wer_single_word'])} on one-word transcripts vs "
            f"{_fmt(row['asr_wer_multi_word'])} on longer ones. A transcript's first word is predicted at the `<eoa>` "
            "position (a non-text position: modality experts where the run has them); every later word at a text "
            "position, which runs through the frozen LM's own weights and must find the audio through its frozen "
            "queries.")
    if "lm_sum_answers" in row and not all(
            _met(row.get(k, 1.0), 0.80, True) for k in ("reasoning_image_accuracy", "reasoning_speech_accuracy")):
        lines.append(
            f"- Reasoning: the text LM's own greedy answer after each held-out sum question is right for "
            f"{_fmt(row['lm_sum_answers'])} of them, while the generated images / speech are judged right for "
            f"{_fmt(row.get('reasoning_image_accuracy', float('nan')))} / "
            f"{_fmt(row.get('reasoning_speech_accuracy', float('nan')))}: where the LM knows the answer, what is "
            "missing is the span reading the answer off the LM's state at 'is'.")
    if main == "teal_expert" and "teal_stage1" in figures:
        lines.append(f"- Strict TEAL on the same data ({RUN_LABELS['teal_stage1']} -> {RUN_LABELS['teal_expert']}): "
                     + _compare(figures["teal_stage1"], row) + ". The difference is what the modality-expert "
                     "attention weights add (step counts: the Stages table).")
    elif main == "teal_stage1" and "teal_expert" in figures:
        lines.append(f"- With modality-expert attention weights ({RUN_LABELS['teal_stage1']} -> "
                     f"{RUN_LABELS['teal_expert']}): " + _compare(row, figures["teal_expert"])
                     + " (step counts: the Stages table).")
    frozen, full = figures.get(BASELINE) or figures.get("teal_stage1"), figures.get("ablation_full")
    if frozen and full:
        which = RUN_LABELS[BASELINE] if BASELINE in figures else RUN_LABELS["teal_stage1"]
        lines.append(f"- Frozen vs full fine-tuning on the same data ({which} -> full fine-tuning): "
                     + _compare(frozen, full) + ". What unfreezing gains at equal steps is the part of the gap that "
                     "keeping this small LM frozen costs.")
    lines += ["- The frozen LM here is the small text LM this demo trains in minutes; TEAL's results are for 7B-scale "
              "frozen LMs. docs/teal.md ('Fidelity work', 'What limits it') has the experiments and single-task "
              "diagnostics on the same pipeline.", ""]
    return lines


def _targets_table(row: dict[str, Any], targets: tuple) -> list[str]:
    """Every task figure of ``row``: measured, the run's target where it has one, met."""
    own = {t[0]: t for t in targets}
    lines = ["| task | measured | target | met |", "| --- | --- | --- | --- |"]
    for key, label, _, _ in TARGETS:
        if key not in row:
            continue
        if key in own:
            _, _, target, higher = own[key]
            lines.append(f"| {label} | {_fmt(row[key])} | {_target_text(target, higher)} | "
                         f"{_fmt(_met(row[key], target, higher))} |")
        else:
            lines.append(f"| {label} | {_fmt(row[key])} | | |")
    return lines + [""]


def _run_samples(run: str, evaluation: dict[str, Any], *, embed: bool) -> list[str]:
    """The sample grids of one run (embedded or linked) and where its WAVs and spectrograms are."""
    grids = evaluation.get("grids", {}).get(run, {})
    lines = []
    for title, rel in grids.items():
        lines += [f"{title}:", "", f"![{run}: {title}]({rel})", ""] if embed else [f"- {title}: [{rel}]({rel})"]
    wav_dirs = evaluation.get("wav_dirs", {}).get(run, [])
    if wav_dirs:
        lines.append(("" if embed else "- ") + "Generated speech: " + ", ".join(f"`{d}/`" for d in wav_dirs)
                     + " (each WAV with its spectrogram beside it: same name, `.png`).")
        lines.append("")
    return lines


def _sampling_section(evaluation: dict[str, Any]) -> list[str]:
    """Every sampling setting of the held-out figures, and the validation figures that chose each guidance scale."""
    s = evaluation.get("sampling", {})
    if not s:
        return []
    lines = ["## Sampling settings", "",
             f"- Images and speech (text-to-image, TTS, reasoning): temperature {_fmt(s.get('temperature'))}, top-p "
             f"{_fmt(s.get('top_p'))}, top-k {_fmt(s.get('top_k'))} (0 = off), held-out seed {s.get('seed')}; the "
             "sampler is constrained to one span of exactly the image's / clip's token count.",
             f"- Held-out samples per run: text-to-image {s.get('t2i_per_class')} per digit "
             f"({10 * int(s.get('t2i_per_class', 0))}), TTS {s.get('tts_per_class')} per digit, reasoning "
             f"{s.get('reasoning_per_pair')} per held-out sum pair ({s.get('reasoning_n')} per modality).",
             f"- Captions and transcripts: greedy, at most {s.get('text_max_new_tokens', 32)} new tokens.",
             f"- Classifier-free guidance: each modality's scale is chosen from {s.get('guidance_scales')} by judged "
             f"accuracy on a validation set ({s.get('validation_per_class')} prompts per digit + one sum question for "
             f"each of {len(s.get('validation_pairs', []))} training pairs: "
             + ", ".join(f"{a}+{b}" for a, b in s.get("validation_pairs", []))
             + f"; no held-out pair; these prompts are training prompts sampled afresh, so their figures choose the "
             "scale and are not results), sampled with seed "
             f"{s.get('validation_seed')} (the held-out figures use seed {s.get('seed')}); ties go to the smaller "
             "scale. Runs not tuned use strict TEAL's scales. The held-out figures are measured once, with the "
             "chosen scale.", ""]
    guidance = evaluation.get("guidance", {})
    if guidance:
        lines += ["| run | modality | chosen scale | validation accuracy per scale (digit prompts / sum questions) |",
                  "| --- | --- | --- | --- |"]
        for r in REPORT_RUNS:
            for m, name in (("image", "images"), ("audio", "speech")):
                g = guidance.get(r, {}).get(m)
                if not g:
                    continue
                if "accuracy" in g:
                    nan = float("nan")
                    per = "; ".join(f"{k}: {_fmt(v)} ({_fmt(g.get('digit_accuracy', {}).get(k, nan))} / "
                                    f"{_fmt(g.get('reasoning_accuracy', {}).get(k, nan))})"
                                    for k, v in g["accuracy"].items())
                    per += f"; n = {g.get('n')}"
                else:
                    per = f"{RUN_LABELS.get(g.get('from'), g.get('from'))}'s"
                lines.append(f"| {RUN_LABELS.get(r, r)} | {name} | {_fmt(g['chosen'])} | {per} |")
        lines.append("")
    timing = evaluation.get("timing", {})
    if timing:
        val = sum(t.get("validation_s", 0.0) for t in timing.values())
        gen = sum(t.get("generation_s", 0.0) for t in timing.values())
        lines += [f"Time: guidance validation {val:.0f} s and held-out generation {gen:.0f} s of the evaluation's "
                  f"{_fmt(evaluation.get('wall_s', float('nan')))} s (per run: "
                  + ", ".join(f"{r} {t.get('validation_s', 0.0):.0f} + {t.get('generation_s', 0.0):.0f} s"
                              for r, t in timing.items()) + ").", ""]
    return lines


def write_report(workdir: str, variant: str, stage_results: dict[str, dict], evaluation: dict[str, Any]) -> str:
    """``<workdir>/report.md`` from the stages' results and the evaluation (see :func:`evaluate_stage`): the lead
    runs first (modality experts, then strict TEAL), each with its targets, sample grids and what limits it; then the
    sampling settings, the frozen LM's text behaviour, every run side by side (ablations at equal steps), the
    tokenizers, classifiers, stages and plots."""
    lines = ["# teal_jax demo report", "",
             f"Variant `{variant}`; written {time.strftime('%Y-%m-%d %H:%M:%S')}. Every figure below was measured "
             "in this run on held-out data (held-out digit scans, held-out voices, held-out sum pairs).", ""]
    figures = evaluation.get("runs", {})
    leads = [r for r in LEAD_RUNS if r in figures] or [r for r in REPORT_RUNS if r in figures][:1]
    for i, r in enumerate(leads):
        if i == 0:
            lines += [f"## Main result: {RUN_LABELS.get(r, r)} (`{r}`)", ""]
        else:
            lines += [f"## {'Strict TEAL: the frozen LM, stage 1' if r == 'teal_stage1' else RUN_LABELS.get(r, r)} "
                      f"(`{r}`)", ""]
        if r in RUN_DESCRIPTIONS:
            lines += [RUN_DESCRIPTIONS[r], ""]
        lines += _targets_table(figures[r], RUN_TARGETS.get(r, TARGETS))
        lines += _run_samples(r, evaluation, embed=True)
        lines += missed_targets_section(figures, r)
    lines += _sampling_section(evaluation)
    text = evaluation.get("text", {})
    if text:
        lines += ["## The frozen LM's text behaviour", "",
                  "Held-out text perplexity of the base LM and of each TEAL run over the text rows (same documents, "
                  "same tokens); `bitwise` says whether every text logit of the TEAL model equals the base LM's.", "",
                  "| model | text perplexity | text logits bitwise equal to the base LM |", "| --- | --- | --- |"]
        for name, row in text.items():
            lines.append(f"| {RUN_LABELS.get(name, name)} | {_fmt(row.get('ppl'))} | {_fmt(row.get('bitwise', ''))} |")
        lines.append("")
    if figures:
        keys = [t for t in TARGETS if any(t[0] in f for f in figures.values())]
        extra = sorted({k for f in figures.values() for k in f} - {t[0] for t in TARGETS})
        lines += ["## Every TEAL run (ablations at equal steps: stage 2, full fine-tuning, codebook init against "
                  "stage 1 at their step count)", "",
                  "| run | " + " | ".join(k for k, *_ in keys) + (" | " + " | ".join(extra) if extra else "") + " |",
                  "| --- " * (1 + len(keys) + len(extra)) + "|"]
        for r in [r for r in REPORT_RUNS if r in figures] + sorted(set(figures) - set(REPORT_RUNS)):
            vals = [_fmt(figures[r].get(k, float("nan"))) for k, *_ in keys] + [
                _fmt(figures[r].get(k, float("nan"))) for k in extra]
            lines.append(f"| {RUN_LABELS.get(r, r)} | " + " | ".join(vals) + " |")
        lines.append("")
        others = [(r, [x for x in _run_samples(r, evaluation, embed=False) if x]) for r in REPORT_RUNS
                  if r in figures and r not in leads]
        others = [(r, links) for r, links in others if links]
        if others:
            lines += ["Sample grids and speech of the other runs:", ""]
            for r, links in others:
                lines += [f"- {RUN_LABELS.get(r, r)}:"] + ["  " + x for x in links]
            lines.append("")
    for name in ("tokenizers", "classifiers"):
        if evaluation.get(name):
            lines += [f"## {name.capitalize()}", "", "| figure | value |", "| --- | --- |"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in evaluation[name].items()]
            lines.append("")
    lines += ["## Stages", "", "| stage | steps | wall time of its last run (s) | final metrics |",
              "| --- | --- | --- | --- |"]
    for s, r in stage_results.items():
        if s == "evaluate":
            continue
        m = r.get("metrics", {})
        keep = {k: v for k, v in m.items() if k in ("loss", "eval_loss") or k.startswith("eval_heldout")
                or k.startswith("eval_accuracy")}
        lines.append(f"| {s} | {r.get('steps', '')} | {r.get('wall_s', '')} | "
                     + ", ".join(f"{k} {_fmt(v)}" for k, v in sorted(keep.items())[:8]) + " |")
    if "wall_s" in evaluation:
        lines.append(f"| evaluate | | {evaluation['wall_s']} | |")
    lines.append("")
    for title, rel in evaluation.get("plots", {}).items():
        lines += [f"## {title}", "", f"![{title}]({rel})", ""]
    for title, rel in evaluation.get("samples", {}).items():
        lines.append(f"- {title}: `{rel}`")
    notes = evaluation.get("notes", [])
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    path = os.path.join(workdir, "report.md")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


# ---- the evaluate stage -------------------------------------------------------------------------------------------
def _heldout_text(workdir: str, limit: int) -> list[str]:
    """Held-out documents of the text LM's corpus (its 'eval' split), in corpus order."""
    import tensorflow_datasets as tfds

    from teal_jax import checkpoint
    from teal_jax.data import lm as lm_data

    cfg = checkpoint.read_config(os.path.join(workdir, "text_lm"))
    paths = lm_data.prepare_lm_data(cfg.data, os.path.join(workdir, "text_lm"), verbose=False)
    source = tfds.data_source(paths["dataset"], data_dir=paths["tfds_dir"], split="eval")
    texts = []
    for i in range(min(limit, len(source))):
        t = source[i]["text"]
        texts.append(t.decode("utf-8") if isinstance(t, bytes) else str(t))
    return texts


def _heldout_speech(workdir: str, speech_config: str, max_samples: int) -> dict[str, Any]:
    """Held-out-voice clips of the demo speech (int16 at 16 kHz), start-aligned and padded to ``max_samples``;
    ``fits`` marks the clips no longer than that (the ones TEAL was trained to transcribe)."""
    from teal_jax.data.speech import build_spoken_words, load_clips

    builder = build_spoken_words(os.path.join(workdir, "data"), speech_config)
    source = builder.as_data_source(split="test")
    clips = load_clips(source, max_samples=max_samples)
    full = load_clips(source, max_samples=10 * max_samples)  # true lengths
    clips["fits"] = full["length"] <= max_samples
    return clips


def _classifiers(workdir: str, variant: str, speech_config: str) -> tuple[Any, Any, dict[str, float]]:
    """The independent judges: a digit-image CNN trained on real train digits, and the spoken-word classifier the
    codec stage trained on clean train speech of ``spoken_words/<speech_config>`` (same cache directory,
    ``speech_classifier.cache_dir``, so the same weights)."""
    from teal_jax.data.speech import build_spoken_words, load_clips
    from teal_jax.evaluate import digit_classifier as dc
    from teal_jax.evaluate import speech_classifier as sc

    quick = variant == "quick"
    images, labels = dc.load_digit_arrays("train")
    digit_clf = dc.train_or_load(os.path.join(workdir, "classifiers", "digits"), images, labels,
                                 steps=150 if quick else 1000)
    test_images, test_labels = dc.load_digit_arrays("test")
    builder = build_spoken_words(os.path.join(workdir, "data"), speech_config)
    train_clips = load_clips(builder.as_data_source(split="train"), max_samples=sc.CLIP_SAMPLES, labelled_only=True)
    speech_clf = sc.train_or_load(sc.cache_dir(os.path.join(workdir, "data"), speech_config), train_clips["audio"],
                                  train_clips["label"], steps=50 if quick else 500)
    test_clips = load_clips(builder.as_data_source(split="test"), max_samples=sc.CLIP_SAMPLES, labelled_only=True)
    figures = {"digit classifier accuracy, real held-out digits": digit_clf.accuracy(test_images, test_labels),
               "spoken-word classifier accuracy, real held-out voices": speech_clf.accuracy(test_clips["audio"],
                                                                                          test_clips["label"])}
    return digit_clf, speech_clf, figures


def generation_plan(quick: bool, sample: Any) -> dict[str, Any]:
    """Every sampling setting of the evaluation (stated in the report): the run config's ``sample`` settings
    (temperature, top-p, top-k, seed; ``guidance_scales``, default ``teal_eval.GUIDANCE_SCALES``) and the sample
    counts. The guidance validation set has as many prompts as the
    held-out reasoning set of one modality (quick: 10 digit prompts + 5 sum questions; default: 30 + 30), so the
    validation, text-to-image, TTS and reasoning calls all run batches of one shape: one compilation per guidance
    scale and modality."""
    from teal_jax.data import templates
    from teal_jax.evaluate import teal_eval

    sample = dict(sample or {})
    per_pair = 1 if quick else 4
    reasoning_n = len(templates.REASONING_EVAL_PAIRS) * per_pair
    v_per_class = 1 if quick else 3
    v_pairs = templates.REASONING_VALIDATION_PAIRS[: reasoning_n - 10 * v_per_class]
    seed = int(sample.get("seed", 0))
    return {"temperature": float(sample.get("temperature", 0.7)), "top_p": float(sample.get("top_p", 0.9)),
            "top_k": int(sample.get("top_k", 0)), "seed": seed,
            "t2i_per_class": 2 if quick else 10, "tts_per_class": 2 if quick else 10, "reasoning_per_pair": per_pair,
            "reasoning_n": reasoning_n, "text_max_new_tokens": 32,
            "guidance_scales": [float(g) for g in sample.get("guidance_scales", teal_eval.GUIDANCE_SCALES)],
            "validation_per_class": v_per_class,
            "validation_pairs": [list(p) for p in v_pairs], "validation_seed": seed + 1}


def evaluate_run(run_dir: str, *, digit_clf, speech_clf, images: np.ndarray, labels: np.ndarray,
                 speech: dict[str, Any], texts: list[str], sample_dir: str, quick: bool, plan: dict[str, Any],
                 guidance: dict[str, dict[str, Any]] | None = None, step: int | None = None
                 ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Every held-out figure of one TEAL run (its newest checkpoint, or ``step``) -> (figures, text perplexity row,
    {'guidance': per modality ('image', 'audio') the :func:`teal_eval.choose_guidance` result or the given
    ``{'chosen', 'from'}``, 'validation_s', 'generation_s'}). Without ``guidance`` the run chooses its scales on the
    validation set first (``plan``: :func:`generation_plan`)."""
    import teal_jax
    from teal_jax.evaluate import teal_eval

    model = teal_jax.load(run_dir, step)
    figs: dict[str, Any] = {}
    cap = teal_eval.caption_accuracy(model, images, labels, sample_dir=os.path.join(sample_dir, "caption"))
    figs["caption_accuracy"], figs["caption_exact_match"] = cap["accuracy"], cap["exact_match"]
    # conditioning measured by likelihood: sensitive where sampling is at chance (teal_eval's definitions)
    figs["caption_forced_choice"] = teal_eval.caption_forced_choice(model, images, labels)["accuracy"]
    lik = teal_eval.t2i_likelihood_accuracy(model, images[: 20 if quick else 100], labels[: 20 if quick else 100])
    figs["t2i_likelihood_accuracy"] = lik["accuracy"]
    figs["t2i_nll_true_prompt"], figs["t2i_nll_mean_prompt"] = lik["nll_true"], lik["nll_mean"]
    fits = np.nonzero(speech["fits"])[0]
    asr = teal_eval.asr_wer(model, speech["audio"][fits].astype(np.float32) / 32768.0,
                            [speech["text"][i] for i in fits], 16000, sample_dir=os.path.join(sample_dir, "asr"))
    figs["asr_wer"], figs["asr_exact_match"] = asr["wer"], asr["exact_match"]
    for k in ("wer_single_word", "wer_multi_word"):  # asr_wer splits the WER by reference length
        if k in asr:
            figs[f"asr_{k}"] = asr[k]

    # Generation: every call in batches of one shape (see generation_plan).
    model.max_batch = int(plan["reasoning_n"])
    gen = {k: plan[k] for k in ("temperature", "top_p", "top_k")}
    seed = int(plan["seed"])
    t0 = time.time()
    if guidance is None:
        guidance = {}
        for m, judge in (("image", digit_clf), ("audio", speech_clf)):
            g = teal_eval.choose_guidance(model, judge, m, scales=plan["guidance_scales"],
                                          seed=int(plan["validation_seed"]), heldout_seed=seed,
                                          per_class=int(plan["validation_per_class"]),
                                          pairs=[tuple(p) for p in plan["validation_pairs"]], **gen)
            guidance[m] = g
            _say(f"evaluate: guidance for {m}: {g['chosen']:g} (validation accuracy per scale {g['accuracy']}, "
                 f"{g['wall_s']} s)")
    validation_s = time.time() - t0
    gi, ga = float(guidance["image"]["chosen"]), float(guidance["audio"]["chosen"])
    figs["guidance_image"], figs["guidance_speech"] = gi, ga
    t1 = time.time()
    t2i = teal_eval.text_to_image_accuracy(model, digit_clf, per_class=int(plan["t2i_per_class"]),
                                           sample_dir=os.path.join(sample_dir, "t2i"), guidance_scale=gi, seed=seed,
                                           **gen)
    figs["t2i_accuracy"] = t2i["accuracy"]
    tts = teal_eval.tts_accuracy(model, speech_clf, per_class=int(plan["tts_per_class"]),
                                 sample_dir=os.path.join(sample_dir, "tts"), guidance_scale=ga, seed=seed, **gen)
    figs["tts_accuracy"] = tts["accuracy"]
    per_pair = int(plan["reasoning_per_pair"])
    ri = teal_eval.reasoning_image_accuracy(model, digit_clf, per_pair=per_pair,
                                            sample_dir=os.path.join(sample_dir, "reasoning_image"),
                                            guidance_scale=gi, seed=seed, **gen)
    figs["reasoning_image_accuracy"] = ri["accuracy"]
    rs = teal_eval.reasoning_speech_accuracy(model, speech_clf, per_pair=per_pair,
                                             sample_dir=os.path.join(sample_dir, "reasoning_speech"),
                                             guidance_scale=ga, seed=seed, **gen)
    figs["reasoning_speech_accuracy"] = rs["accuracy"]
    if hasattr(model, "generate_text"):  # does the text LM itself know the held-out sums? (diagnosis only)
        figs["lm_sum_answers"] = teal_eval.lm_sum_answers(model)["accuracy"]
    generation_s = time.time() - t1
    ppl = teal_eval.text_perplexity(model, texts)
    figs["text_ppl"] = ppl["teal_ppl"]
    figs["text_logits_bitwise_equal"] = bool(ppl["logits_bitwise_equal"])
    text_row = {"ppl": ppl["teal_ppl"], "bitwise": bool(ppl["logits_bitwise_equal"]),
                "base_ppl": ppl["base_ppl"], "max_abs_logit_diff": ppl["max_abs_logit_diff"]}
    details = {"t2i_confusion": t2i["confusion"], "tts_confusion": tts["confusion"], "asr": asr,
               "caption_per_class": cap["per_class"], "reasoning_image_confusion": ri["confusion"],
               "reasoning_speech_confusion": rs["confusion"], "guidance": guidance}
    with open(os.path.join(sample_dir, "details.json"), "w") as f:
        json.dump(details, f, indent=1)
    info = {"guidance": guidance, "validation_s": round(validation_s, 1), "generation_s": round(generation_s, 1)}
    return figs, text_row, info


def _sample_files(workdir: str, run: str) -> tuple[dict[str, str], list[str]]:
    """The sample grids of a run that exist ({title: path relative to workdir}) and its WAV folders."""
    base = os.path.join("samples", run)
    grids = {}
    for title, rel in (("text-to-image, one row per prompted digit", os.path.join(base, "t2i", "t2i_grid.png")),
                       ("reasoning images, one row per answer digit",
                        os.path.join(base, "reasoning_image", "reasoning_image_grid.png"))):
        if os.path.exists(os.path.join(workdir, rel)):
            grids[title] = rel
    wavs = [os.path.join(base, d) for d in ("tts", "reasoning_speech")
            if os.path.isdir(os.path.join(workdir, base, d))]
    return grids, wavs


def evaluate_stage(workdir: str, variant: str, stage_results: dict[str, dict]) -> dict[str, Any]:
    """The demo's ``evaluate`` stage: figures of every finished TEAL run (``TEAL_RUNS``, whichever exist, in that
    order; stage 1 again at the ablations' step count when it kept that checkpoint), guidance chosen on validation
    prompts, samples, report.md and plots.

    Skipped (its results re-read) when ``evaluate/results.json`` is newer than every TEAL run's result."""
    out_dir = os.path.join(workdir, "evaluate")
    results_path = os.path.join(out_dir, "results.json")
    runs = [r for r in TEAL_RUNS if stage_done(workdir, r)]
    if not runs:
        raise RuntimeError(f"evaluate: no finished TEAL run under {workdir} (looked for {list(TEAL_RUNS)})")
    newest = max((os.path.getmtime(_done_file(workdir, r)) for r in runs), default=0.0)
    quick = variant == "quick"
    if os.path.exists(results_path) and os.path.getmtime(results_path) > newest:
        _say(f"evaluate: up to date ({results_path}); rewriting the report only")
        with open(results_path) as f:
            evaluation = json.load(f)
    else:
        t0 = time.time()
        from teal_jax import checkpoint
        from teal_jax.evaluate import digit_classifier as dc

        teal_cfg = checkpoint.read_config(os.path.join(workdir, runs[0]))
        # the TEAL runs' speech (its held-out split is the same 4 unseen voices for every builder config)
        speech_config = teal_cfg.data.get("audio_source", {}).get("config") or ("tiny" if quick else "medium")
        _say("evaluate: independent classifiers")
        digit_clf, speech_clf, clf_figs = _classifiers(workdir, variant, speech_config)
        images, labels = dc.load_digit_arrays("test")
        if quick:
            images, labels = images[:20], labels[:20]
        speech = _heldout_speech(workdir, speech_config, int(round(float(teal_cfg.data.audio_seconds) * 16000)))
        texts = _heldout_text(workdir, 40 if quick else 200)
        plan = generation_plan(quick, teal_cfg.get("sample", {}))
        evaluation = {"runs": {}, "text": {}, "classifiers": clf_figs, "sampling": plan, "guidance": {},
                      "timing": {}, "notes": [
                          f"ASR is scored on the {int(speech['fits'].sum())} of {len(speech['fits'])} held-out clips "
                          f"that fit one {teal_cfg.data.audio_seconds:g} s audio span (training skips longer clips "
                          "too)."]}
        base_step = ablation_baseline_step(workdir)
        todo = [(r, r, None) for r in runs]
        if base_step is not None:
            todo.insert(runs.index("teal_stage1") + 1, (BASELINE, "teal_stage1", base_step))
            evaluation["notes"].append(f"The ablations trained {base_step} steps; '{RUN_LABELS[BASELINE]}' is stage "
                                       f"1's checkpoint at step {base_step} of its longer schedule.")
        for r, run, step in todo:
            _say(f"evaluate: {r}" + (f" (step {step})" if step else ""))
            source = evaluation["guidance"].get(GUIDANCE_FROM)
            given = None
            if r not in GUIDANCE_TUNED and source is not None:
                given = {m: {"chosen": source[m]["chosen"], "from": GUIDANCE_FROM} for m in ("image", "audio")}
            t_run = time.time()
            figs, text_row, info = evaluate_run(os.path.join(workdir, run), digit_clf=digit_clf,
                                                speech_clf=speech_clf, images=images, labels=labels, speech=speech,
                                                texts=texts, sample_dir=os.path.join(workdir, "samples", r),
                                                quick=quick, plan=plan, guidance=given, step=step)
            evaluation["runs"][r] = figs
            evaluation["guidance"][r] = info["guidance"]
            evaluation["timing"][r] = {"validation_s": info["validation_s"], "generation_s": info["generation_s"],
                                       "total_s": round(time.time() - t_run, 1)}
            evaluation["text"].setdefault("base LM", {"ppl": text_row["base_ppl"], "bitwise": True})
            evaluation["text"][r] = text_row
            _say(f"evaluate: {r}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in figs.items()))
        evaluation["tokenizers"] = _tokenizer_figures(stage_results, workdir)
        evaluation["wall_s"] = round(time.time() - t0, 1)
        os.makedirs(out_dir, exist_ok=True)
        with open(results_path + ".tmp", "w") as f:
            json.dump(evaluation, f, indent=1)
        os.replace(results_path + ".tmp", results_path)
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
    evaluation["samples"] = {r: os.path.join("samples", r) for r in evaluation.get("runs", {})}
    evaluation["grids"], evaluation["wav_dirs"] = {}, {}
    for r in evaluation.get("runs", {}):
        evaluation["grids"][r], evaluation["wav_dirs"][r] = _sample_files(workdir, r)
    all_results = dict(stage_results)
    for s in TRAIN_STAGE_NAMES:
        if s not in all_results and os.path.exists(_done_file(workdir, s)):
            with open(_done_file(workdir, s)) as f:
                all_results[s] = json.load(f)
    path = write_report(workdir, variant, all_results, evaluation)
    _say(f"report: {path}")
    return {"stage": "evaluate", "report": path, "runs": evaluation.get("runs", {})}


TRAIN_STAGE_NAMES = ("text_lm", "image_tokenizer", "audio_codec", *TEAL_RUNS)


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
