"""The demo's report: ``report.md`` and plots from the figures of the evaluate stage (``teal_jax.demo_evaluate``).

``write_report`` lays out what the evaluate stage measured: the lead runs first (teal_expert, then strict TEAL, each
against its own targets), every sampling setting, every run, the wall time of each stage; the plots go to
``<workdir>/report/*.png``. This module holds the report's vocabulary too: the runs, their labels, the targets.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

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
ABLATIONS = ("ablation_codebook", "ablation_full", "ablation_lora")  # trained ABLATION_STEPS (teal_jax/demo.py)
TEAL_RUNS = ("teal_expert", "teal_stage1", "teal_stage2", *ABLATIONS)
LEAD_RUNS = ("teal_expert", "teal_stage1")  # each gets its own section with its targets, in this order
# Stage 1's checkpoint at the ablations' (shorter) budget: the fair baseline of the ablation rows.
BASELINE = "teal_stage1_at_ablation_steps"
RUN_LABELS = {"teal_expert": "frozen LM + modality-expert attention", "teal_stage1": "strict TEAL (frozen, stage 1)",
              "teal_stage2": "frozen, stage 2 (bias/norm)", BASELINE: "frozen stage 1 at the ablations' step count",
              "ablation_codebook": "frozen stage 1, codebook init", "ablation_full": "full fine-tuning",
              "ablation_lora": "stage 1 + LoRA on the LM's attention"}
RUN_DESCRIPTIONS = {
    "teal_expert": "The text LM stays frozen (its text logits are checked bitwise against the base LM); image and "
                   "audio positions use their own, trained attention weights (modality experts), text positions the "
                   "LM's.",
    "teal_stage1": "TEAL's stage 1 as the paper states it: the text LM frozen; only the new non-text parameters "
                   "train (embedding rows, output heads, and the learned span positions where the config has them).",
}
REPORT_RUNS = ("teal_expert", "teal_stage1", BASELINE, "teal_stage2", "ablation_full", "ablation_lora",
               "ablation_codebook")
# Classifier-free guidance: these runs choose their scales on the validation set; every other run uses strict TEAL's
# (an ablation then differs from it in what it ablates only), or chooses its own when strict TEAL was not evaluated.
GUIDANCE_TUNED = ("teal_expert", "teal_stage1")
GUIDANCE_FROM = "teal_stage1"


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
            f"- Reasoning: the text LM's own greedy answer after each held-out sum question is right for a "
            f"fraction {_fmt(row['lm_sum_answers'])} of them, while the generated images / speech are judged right for "
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
    if frozen and figures.get("ablation_lora"):
        which = RUN_LABELS[BASELINE] if BASELINE in figures else RUN_LABELS["teal_stage1"]
        lines.append(f"- LoRA on the frozen LM's attention ({which} -> {RUN_LABELS['ablation_lora']}): "
                     + _compare(frozen, figures["ablation_lora"]) + ". LoRA changes the LM's text behaviour (the "
                     "text table), which the modality experts do not.")
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
        lines += ["## Every TEAL run (ablations at equal steps: stage 2, full fine-tuning, LoRA, codebook init against "
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
    semantic = os.path.join(workdir, "semantic", "results.json")
    if os.path.isfile(semantic):  # python -m teal_jax.demo_semantic (docs/semantic_tokenizers.md)
        from teal_jax.demo_semantic import comparison_lines

        with open(semantic) as f:
            lines += ["## Input tokenizers: reconstruction vs semantic vs continuous", "",
                      "Frozen LM, caption + asr only, same steps (`python -m teal_jax.demo_semantic`; "
                      "`semantic/report.md`):", "", *comparison_lines(json.load(f)), ""]
    notes = evaluation.get("notes", [])
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    path = os.path.join(workdir, "report.md")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path
