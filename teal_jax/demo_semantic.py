"""The input-tokenizer comparison on the demo (docs/semantic_tokenizers.md): which tokens should a frozen LM read?

  python -m teal_jax.demo_semantic --workdir=runs/demo     # after `python -m teal_jax.demo` (or its first 3 stages)

Needs the demo's ``text_lm``, ``image_tokenizer`` and ``audio_codec`` stages. Then, under ``<workdir>/semantic/``,
each step skipped when it has finished (re-running resumes):

1. k-means input tokenizers (``teal_jax.train.kmeans_fit``): ``image_kmeans_<k>`` over the image tokenizer's
   encoder latents (configs/image/digits_kmeans.py) and ``audio_kmeans_<k>`` over MFCC frames of the TEAL runs' own
   speech (configs/audio/speech_kmeans.py on spoken words 'medium'), for every ``--audio_ks``.
2. TEAL runs, frozen LM (stage 1), understanding tasks only (caption + asr), the same steps, batch and seed
   (configs/teal/demo.py:understanding): ``reconstruction`` (the VQ / codec codes read the condition, as in the
   demo), ``semantic_a<k>`` (the k-means codes as separate input tokenizers, image k = ``--image_k``),
   ``continuous`` (the same encoders' features unquantised through a learned projection: the LLaVA /
   LLaMA-Adapter-style baseline).
3. The ``caption`` and ``asr`` evaluators on each run's final checkpoint; ``report.md`` and ``results.json``.
4. A diagnostic beside them: linear probes (``teal_jax.evaluate.probe``) from each condition's tokens / features
   to the digit label (held-out digits; spoken digits of held-out voices), so a gap between conditions can be
   placed in the tokens (the probe fails too) or in the LM reading them (the probe succeeds).
   ``--seeds=0,1,2`` repeats every run with other seeds (the runs' ``config.seed``: initialisation and the task
   stream's draws) and reports the mean and spread.

The demo's own ``report.md`` (``python -m teal_jax.demo``, its evaluate stage) shows this comparison when
``<workdir>/semantic/results.json`` exists; this command re-renders it at the end when the demo has been evaluated.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import ml_collections

from teal_jax.demo import _config
from teal_jax.demo_evaluate import _say


def _write(path: str, payload: dict[str, Any]) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(path + ".tmp", path)


def _once(path: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The record of a finished step (``path``, JSON) or, the first time, ``compute()`` written there: what makes
    re-running the command resume."""
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    record = compute()
    _write(path, record)
    return record


def fit_kmeans(demo: str, out: str, modality: str, k: int) -> dict[str, Any]:
    """Fits (or finds) one k-means input tokenizer -> its record ``{'workdir', 'k', 'usage', 'perplexity', ...}``."""
    from teal_jax.train import kmeans_fit

    name = f"{modality}_kmeans_{k}"
    run = os.path.join(out, name)

    def fit() -> dict[str, Any]:
        if modality == "image":
            c = _config("configs.image.digits_kmeans", f"checkpoint={os.path.join(demo, 'image_tokenizer')},k={k}")
            c.data.image_source.data_dir = os.path.join(demo, "data")
        else:
            c = _config("configs.audio.speech_kmeans", f"k={k}")
            c.data.audio_source.data_dir = os.path.join(demo, "data")
            c.data.audio_source.config = "medium"  # the TEAL runs' speech (configs/teal/demo.py)
        _say(f"=== k-means {name}: {c.train.steps} steps -> {run}")
        t0 = time.time()
        _, metrics = kmeans_fit.fit_from_config(c, run, data_dir=os.path.join(demo, "data"))
        last = metrics[-1] if metrics else {}
        return {"workdir": run, "k": k, "wall_s": round(time.time() - t0, 1),
                **{m: float(last[m]) for m in ("usage", "total_usage", "perplexity", "inertia") if m in last}}

    return _once(os.path.join(out, f"{name}.json"), fit)


def teal_config(demo: str, kind: str, *, image_in: str = "", audio_in: str = "", image_k: int = 256,
                audio_k: int = 256, steps: int = 0, seed: int = 0) -> ml_collections.ConfigDict:
    """configs/teal/demo.py:understanding with the demo's paths and the input kind ('reconstruction' | 'semantic' |
    'continuous')."""
    from teal_jax import demo as demo_lib

    arg = "understanding" + {"reconstruction": "", "semantic": f",semantic,image_k={image_k},audio_k={audio_k}",
                             "continuous": ",continuous"}[kind]
    c = demo_lib.teal_config("default", demo, arg)  # the demo's paths; its token datasets are shared
    if kind != "reconstruction":
        c.data.image_in_tokenizer, c.data.audio_in_tokenizer = image_in, audio_in
    if steps:
        c.train.steps = c.train.eval_every = c.train.checkpoint_every = int(steps)
    c.seed = int(seed)
    return c


def train_and_evaluate(name: str, config: ml_collections.ConfigDict, out: str) -> dict[str, Any]:
    """Trains one TEAL run (resumable) and runs its caption and asr evaluators -> ``{'figures', 'wall_s', ...}``."""
    import teal_jax
    from teal_jax.evaluate import evaluators as evaluators_lib
    from teal_jax.train import trainer

    run = os.path.join(out, name)

    def train_and_eval() -> dict[str, Any]:
        _say(f"=== {name}: {config.train.steps} steps -> {run}")
        t0 = time.time()
        metrics = trainer.train(config, run)
        wall = round(time.time() - t0, 1)
        t0 = time.time()
        model = teal_jax.load(run)
        results = evaluators_lib.run_evaluators(evaluators_lib.make_evaluators(model.run_config), model,
                                                workdir=run, step=int(config.train.steps))
        cap, asr = results["caption"], results["asr"]
        _say(f"{name}: caption {cap['accuracy']:.3f} (forced choice {cap.get('forced_choice', float('nan')):.3f}), "
             f"ASR WER {asr['wer']:.3f}")
        return {"run": run, "steps": int(config.train.steps), "seed": int(config.seed), "train_wall_s": wall,
                "eval_wall_s": round(time.time() - t0, 1), "final_loss": float(metrics.get("loss", float("nan"))),
                "figures": {"caption_accuracy": cap["accuracy"], "caption_forced_choice": cap.get("forced_choice"),
                            "caption_exact_match": cap["exact_match"], "asr_wer": asr["wer"],
                            "asr_exact_match": asr.get("exact_match")}}

    return _once(os.path.join(out, f"{name}.json"), train_and_eval)


FIGURE_KEYS = ("caption_accuracy", "caption_forced_choice", "asr_wer", "asr_exact_match")
CONDITIONS = {"reconstruction": "image VQ codes (64) / codec level-1 codes (64)",
              "semantic": "k-means codes: image {image_k} / audio {audio_k}",
              "continuous": "encoder latents (64-d) / MFCC frames (195-d), projected"}


def _group(name: str) -> str:
    """Run name -> its condition (seeds collapsed): 'reconstruction_s1' -> 'reconstruction'."""
    return name.rsplit("_s", 1)[0] if "_s" in name and name.rsplit("_s", 1)[1].isdigit() else name


def comparison_lines(results: dict[str, Any]) -> list[str]:
    """Markdown tables of a ``results.json`` (the demo report's section and ``report.md``): per condition the mean
    (and the spread over seeds, min-max, when there are several) of each figure, then the k-means fits."""
    import numpy as np

    groups: dict[str, list[dict]] = {}
    for name, r in results["runs"].items():
        groups.setdefault(_group(name), []).append(r)
    lines = ["| run | condition read through | seeds | caption accuracy | caption forced choice | ASR WER | "
             "ASR exact match | train s |", "|---|---|---|---|---|---|---|---|"]
    for name, rs in groups.items():
        if name.startswith("semantic_i"):
            image_k, audio_k = name[len("semantic_i"):].split("_a")
            how = CONDITIONS["semantic"].format(image_k=image_k, audio_k=audio_k)
        else:
            how = CONDITIONS.get(name, name)
        cells = []
        for key in FIGURE_KEYS:
            vals = np.asarray([r["figures"][key] for r in rs if r["figures"].get(key) is not None], float)
            if not len(vals):
                cells.append("")
            elif len(vals) == 1:
                cells.append(f"{vals[0]:.3f}")
            else:
                cells.append(f"{vals.mean():.3f} ({vals.min():.3f}-{vals.max():.3f})")
        seeds = ",".join(str(r.get("seed", 0)) for r in rs)
        wall = np.mean([r["train_wall_s"] for r in rs])
        lines.append(f"| {name} | {how} | {seeds} | " + " | ".join(cells) + f" | {wall:.0f} |")
    lines += ["", "k-means fits (share of the k codes used over the whole fit; perplexity of the code distribution in "
              "the fit's last batch):", "", "| tokenizer | k | codes used | perplexity | fit s |",
              "|---|---|---|---|---|"]
    for name, k in results["kmeans"].items():
        usage = f"{k['total_usage']:.3f}" if "total_usage" in k else ""
        ppl = f"{k['perplexity']:.1f}" if "perplexity" in k else ""
        lines.append(f"| {name} | {k['k']} | {usage} | {ppl} | {k.get('wall_s', 0):.0f} |")
    probes = results.get("probes") or {}
    if probes:
        lines += ["", "Diagnostic: linear probes (logistic regression, `teal_jax/evaluate/probe.py`) from each "
                  "condition's inputs to the digit, no LM involved (held-out digits; held-out voices' spoken digits):",
                  "", "| condition | image probe accuracy | audio probe accuracy (spoken digits) | chance (image / "
                  "audio) |", "|---|---|---|---|"]
        for name, p in probes.items():
            lines.append(f"| {name} | {p['image']['accuracy']:.3f} | {p['audio']['accuracy']:.3f} | "
                         f"{p['image']['chance']:.3f} / {p['audio']['chance']:.3f} |")
    return lines


def probe_condition(name: str, config: ml_collections.ConfigDict, out: str) -> dict[str, Any]:
    """Linear probes of one condition's image and audio inputs (the token datasets its run trained on)."""
    from teal_jax.data.teal.prepare import prepare_task_data
    from teal_jax.data.teal.token_dataset import token_source
    from teal_jax.evaluate import probe
    from teal_jax.models.teal import TealConfig

    def probes() -> dict[str, Any]:
        vocab = TealConfig.from_config(config).vocab
        prepared = prepare_task_data(config, None, vocab, verbose=False)
        record: dict[str, Any] = {}
        for m in ("image", "audio"):
            manifest = prepared.get(f"{m}_in") or prepared[m]
            tok = manifest["tokenizer"]
            k = 0 if tok.get("features") else int(tok["codebook_size"])
            keep = vocab.audio_levels_used if (m == "audio" and manifest is prepared[m]) else 0
            record[m] = probe.probe_records(token_source(manifest, "train"), token_source(manifest, "test"),
                                            num_codes=k, keep_levels=keep)
        _say(f"probe {name}: image {record['image']['accuracy']:.3f}, audio {record['audio']['accuracy']:.3f}")
        return record

    return _once(os.path.join(out, f"probe_{name}.json"), probes)


def report(out: str, kmeans: dict[str, dict], runs: dict[str, dict], probes: dict[str, dict] | None = None) -> str:
    """``report.md`` and ``results.json``: the three-way comparison and the audio k ablation."""
    results = {"kmeans": kmeans, "runs": runs, "probes": probes or {}}
    steps = sorted({r["steps"] for r in runs.values()})
    lines = ["# Input tokenizers on the demo: reconstruction vs semantic vs continuous", "",
             f"Frozen text LM (stage 1), understanding tasks only (caption + asr), {'/'.join(map(str, steps))} steps "
             "each, same batch; held-out digits (captioning: greedy generation; forced choice over the ten digit "
             "words) and held-out voices (ASR WER, greedy). Written by `python -m teal_jax.demo_semantic`.", "",
             *comparison_lines(results)]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    _write(os.path.join(out, "results.json"), results)
    return text


def run(demo: str, *, audio_ks: list[int], image_k: int = 256, steps: int = 0, seeds: tuple[int, ...] = (0,)) -> str:
    for stage in ("text_lm", "image_tokenizer", "audio_codec"):
        if not os.path.isfile(os.path.join(demo, stage, "stage_result.json")):
            raise RuntimeError(f"{demo}/{stage} is missing: run `python -m teal_jax.demo --workdir={demo} "
                               "--stages=text_lm,image_tokenizer,audio_codec` first")
    out = os.path.join(demo, "semantic")
    os.makedirs(out, exist_ok=True)
    kmeans = {f"image_kmeans_{image_k}": fit_kmeans(demo, out, "image", image_k)}
    for k in audio_ks:
        kmeans[f"audio_kmeans_{k}"] = fit_kmeans(demo, out, "audio", k)
    image_in = kmeans[f"image_kmeans_{image_k}"]["workdir"]
    base_k = 256 if 256 in audio_ks else audio_ks[0]
    audio_in = {k: kmeans[f"audio_kmeans_{k}"]["workdir"] for k in audio_ks}
    # (run name, input kind, audio k): the three-way comparison, then the audio vocabulary-size ablation
    comparison = [("reconstruction", "reconstruction", base_k), (f"semantic_i{image_k}_a{base_k}", "semantic", base_k),
                  ("continuous", "continuous", base_k)]
    ablation = [(f"semantic_i{image_k}_a{k}", "semantic", k) for k in audio_ks if k != base_k]

    def config(kind: str, k: int, seed: int = 0) -> ml_collections.ConfigDict:
        return teal_config(demo, kind, image_in=image_in, audio_in=audio_in[k], image_k=image_k, audio_k=k,
                           steps=steps, seed=seed)

    runs: dict[str, dict] = {}
    for group in (comparison, ablation):
        for seed in seeds:
            tag = "" if seed == 0 else f"_s{seed}"
            for name, kind, k in group:
                runs[name + tag] = train_and_evaluate(name + tag, config(kind, k, seed), out)
    probes = {name: probe_condition(name, config(kind, k), out) for name, kind, k in comparison}
    text = report(out, kmeans, runs, probes)
    _say(text)
    if os.path.isfile(os.path.join(demo, "evaluate", "results.json")):  # the demo's report gains the section
        from teal_jax import demo_evaluate

        demo_evaluate.evaluate_stage(demo, "default", {})
    return text


def main(argv) -> None:
    from absl import app, flags, logging

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    run(os.path.abspath(f.workdir), audio_ks=[int(k) for k in f.audio_ks], image_k=int(f.image_k), steps=f.steps,
        seeds=tuple(int(s) for s in f.seeds))


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("workdir", "runs/demo", "The demo's run directory (its text_lm, image_tokenizer, "
                        "audio_codec stages must have finished).")
    flags.DEFINE_list("audio_ks", ["64", "256", "1024"], "Codes of the audio k-means tokenizers (the ablation).")
    flags.DEFINE_integer("image_k", 256, "Codes of the image k-means tokenizer.")
    flags.DEFINE_integer("steps", 0, "TEAL steps per run (0: configs/teal/demo.py:understanding's).")
    flags.DEFINE_list("seeds", ["0"], "Seeds of the three-way comparison (each condition trains once per seed).")
    app.run(main)
