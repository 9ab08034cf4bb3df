"""The demo's evaluation stage and report: held-out figures of every TEAL run, samples, ``report.md`` and plots.

Called by ``teal_jax.demo`` as its last stage (``evaluate``); it reads what the training stages left in the demo
directory and writes::

    <workdir>/report.md                 every figure, the issue's targets, the wall time of each stage
    <workdir>/report/*.png              training curves, task figures per TEAL run
    <workdir>/samples/<run>/...         generated PNGs and WAVs (captioned / transcribed examples in the report)
    <workdir>/evaluate/results.json     the raw figures (the stage's result: a re-run skips the evaluation)
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

# (figure key, label, target, higher is better)
TARGETS = (
    ("caption_accuracy", "captioning accuracy (held-out digits)", 0.95, True),
    ("t2i_accuracy", "text-to-image judged correct (digit classifier)", 0.90, True),
    ("asr_wer", "ASR word error rate (held-out voices)", 0.05, False),
    ("tts_accuracy", "TTS judged correct (spoken-word classifier)", 0.85, True),
    ("reasoning_image_accuracy", "reasoning prompts, images", 0.80, True),
    ("reasoning_speech_accuracy", "reasoning prompts, speech", 0.80, True),
)
TEAL_RUNS = ("teal_stage1", "teal_stage2", "ablation_codebook", "ablation_full")
RUN_LABELS = {"teal_stage1": "frozen, stage 1", "teal_stage2": "frozen, stage 2 (bias/norm)",
              "ablation_codebook": "frozen stage 1, codebook init", "ablation_full": "full fine-tuning"}


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
    for ax, (s, (train, evals)) in zip(axes.flat, curves.items()):
        ax.plot(*zip(*train), label="train")
        if evals:
            ax.plot(*zip(*evals), "o-", label="eval")
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

    runs = [r for r in TEAL_RUNS if r in figures]
    keys = [t for t in TARGETS if any(t[0] in figures[r] for r in runs)]
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
    ax.set_ylabel("held-out score (dashed: target)")
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


def write_report(workdir: str, variant: str, stage_results: dict[str, dict], evaluation: dict[str, Any]) -> str:
    """``<workdir>/report.md`` from the stages' results and the evaluation (see :func:`evaluate_stage`)."""
    lines = ["# teal_jax demo report", "",
             f"Variant `{variant}`; written {time.strftime('%Y-%m-%d %H:%M:%S')}. Every figure below was measured "
             "in this run on held-out data (held-out digit scans, held-out voices, held-out sum pairs).", ""]
    figures = evaluation.get("runs", {})
    main = "teal_stage2" if "teal_stage2" in figures else "teal_stage1"
    if main in figures:
        lines += [f"## Targets ({RUN_LABELS[main]})", "", "| task | measured | target | met |", "| --- | --- | --- | --- |"]
        for key, label, target, higher in TARGETS:
            if key not in figures[main]:
                continue
            v = figures[main][key]
            met = v >= target if higher else v <= target
            lines.append(f"| {label} | {_fmt(v)} | {'>=' if higher else '<='} {target} | {_fmt(bool(met))} |")
        lines.append("")
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
        lines += ["## Every TEAL run (ablations: codebook vs random init, frozen vs full fine-tuning)", "",
                  "| run | " + " | ".join(k for k, *_ in keys) + (" | " + " | ".join(extra) if extra else "") + " |",
                  "| --- " * (1 + len(keys) + len(extra)) + "|"]
        for r in TEAL_RUNS:
            if r in figures:
                vals = [_fmt(figures[r].get(k, float("nan"))) for k, *_ in keys] + [
                    _fmt(figures[r].get(k, float("nan"))) for k in extra]
                lines.append(f"| {RUN_LABELS.get(r, r)} | " + " | ".join(vals) + " |")
        lines.append("")
    for name in ("tokenizers", "classifiers"):
        if evaluation.get(name):
            lines += [f"## {name.capitalize()}", "", "| figure | value |", "| --- | --- |"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in evaluation[name].items()]
            lines.append("")
    lines += ["## Stages", "", "| stage | steps | wall time of its last run (s) | final metrics |", "| --- | --- | --- | --- |"]
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
