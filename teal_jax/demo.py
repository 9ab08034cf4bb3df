"""The one-command demo: every stage of TEAL on data made on this machine, resumable stage by stage.

  python -m teal_jax.demo --workdir=runs/demo            # the default demo
  python -m teal_jax.demo --workdir=/tmp/q --variant=quick   # minutes: what CI runs end to end

Stages (each trains through the one trainer into ``<workdir>/<stage>/`` and is skipped when its final checkpoint
exists, so re-running the command resumes where it stopped):
  text_lm          a small Llama-shaped LM on the generated English corpus (SentencePiece tokenizer trained first)
  image_tokenizer  the VQ image tokenizer on scikit-learn's handwritten digits (configs/image/digits_tiny.py)
  audio_codec      the neural audio codec on espeak-ng speech (configs/audio/speech_tiny.py)
A markdown report with every stage's figures and wall time is written to ``<workdir>/report.md``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from collections.abc import Callable

import ml_collections
from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/demo", "Where every stage writes its run directory and the report.")
flags.DEFINE_enum("variant", "default", ["default", "quick"], "'quick' shrinks every stage to run in minutes.")
flags.DEFINE_list("stages", None, "Run only these stages (default: all available).")


def _config(module: str, arg: str | None = None) -> ml_collections.ConfigDict:
    return importlib.import_module(module).get_config(arg)


def text_lm_config(variant: str) -> ml_collections.ConfigDict:
    c = _config("configs.lm.tiny")
    if variant == "quick":
        c.data.num_docs = 2000
        c.data.vocab_size = c.model.vocab_size = 512
        c.model.num_layers = 2
        c.train.steps = 60
        c.train.eval_every = 30
        c.train.checkpoint_every = 30
        c.train.log_every = 10
    return c


def image_tokenizer_config(variant: str) -> ml_collections.ConfigDict:
    return _config("configs.image.digits_tiny", "quick" if variant == "quick" else None)


def audio_codec_config(variant: str) -> ml_collections.ConfigDict:
    return _config("configs.audio.speech_tiny", "quick" if variant == "quick" else None)


STAGES: dict[str, Callable[[str], ml_collections.ConfigDict]] = {
    "text_lm": text_lm_config,
    "image_tokenizer": image_tokenizer_config,
    "audio_codec": audio_codec_config,
}


def available_stages() -> list[str]:
    """Stages whose config module exists in this checkout."""
    names = []
    for name, fn in STAGES.items():
        try:
            fn("quick")
        except ModuleNotFoundError:
            continue
        names.append(name)
    return names


def run_stage(name: str, workdir: str, variant: str) -> dict:
    from teal_jax.checkpoint import Checkpointer
    from teal_jax.train import trainer

    config = STAGES[name](variant)
    stage_dir = os.path.join(workdir, name)
    done_file = os.path.join(stage_dir, "stage_result.json")
    if os.path.exists(done_file):
        ckpt = Checkpointer(stage_dir, async_save=False)
        if ckpt.latest_step() == config.train.steps:
            print(f"[demo] {name}: already trained ({done_file}); skipping", flush=True)
            with open(done_file) as f:
                return json.load(f)
    print(f"[demo] === stage {name}: {config.objective}, {config.train.steps} steps -> {stage_dir}", flush=True)
    t0 = time.time()
    metrics = trainer.train(config, stage_dir)
    result = {"stage": name, "wall_s": round(time.time() - t0, 1), "steps": config.train.steps,
              "metrics": {k: float(v) for k, v in metrics.items()}}
    with open(done_file, "w") as f:
        json.dump(result, f, indent=1)
    return result


def write_report(workdir: str, results: list[dict]) -> str:
    lines = ["# teal_jax demo report", ""]
    for r in results:
        lines += [f"## {r['stage']}", "", f"- steps: {r['steps']}, wall time of the last run: {r['wall_s']} s", ""]
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4g} |" for k, v in sorted(r["metrics"].items())]
        lines.append("")
    path = os.path.join(workdir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    os.makedirs(FLAGS.workdir, exist_ok=True)
    stages = FLAGS.stages or available_stages()
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        sys.exit(f"unknown stage(s) {unknown}; known: {list(STAGES)}")
    results = [run_stage(s, FLAGS.workdir, FLAGS.variant) for s in stages]
    path = write_report(FLAGS.workdir, results)
    if "text_lm" in stages:
        import teal_jax

        lm = teal_jax.load(os.path.join(FLAGS.workdir, "text_lm"))
        prompts = ["three plus four is", "the red"]
        for p, out in zip(prompts, lm.generate(prompts, max_new_tokens=16), strict=True):
            print(f"[demo] sample: {p!r} -> {out!r}", flush=True)
    print(f"[demo] report: {path}", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    app.run(main)
