"""The one-command demo: every stage of TEAL on data made on this machine, resumable stage by stage.

  python -m teal_jax.demo --workdir=runs/demo                 # the default demo (<= 30 min on 2 CPU cores)
  python -m teal_jax.demo --workdir=/tmp/q --variant=quick    # minutes: what CI runs end to end

Stages, in order (each trains through the one trainer into ``<workdir>/<stage>/`` and is skipped when it has
finished, so re-running the command resumes where it stopped, mid-stage from the newest checkpoint):
  text_lm            a small Llama-shaped LM on the generated English corpus (its SentencePiece model first)
  image_tokenizer    the coarse image tokenizer on scikit-learn's handwritten digits (digits_tiny.py:coarse,
                     4 x 4 codes over 64)
  audio_codec        the neural audio codec on espeak-ng speech (speech_tiny.py:coarse, 50 frames/s)
  teal_expert        the frozen LM with modality experts: its own attention/MLP weights at image/audio positions,
                     text untouched (configs/teal/demo.py:expert): the main result
  teal_stage1        strict TEAL with the text LM frozen: non-text rows, heads, span positions (configs/teal/demo.py)
  teal_stage2        + bias/norm tuning, starting from stage 1 (configs/teal/demo.py:stage2)
  ablation_codebook  stage 1 with codebook-initialised non-text embeddings (the paper's ablation)
  ablation_full      stage 1's data with full fine-tuning (frozen vs not)
  ablation_lora      stage 1 plus LoRA on the LM's attention projections (it changes the text behaviour); the
                     ablations train ABLATION_STEPS and are compared with stage 1's own checkpoint at that step
  evaluate           the evaluators of configs/teal/demo.py's ``config.evals`` on every TEAL run (samples, PNG/WAV,
                     under ``<run>/eval/``), then ``<workdir>/report.md`` + plots (teal_jax/demo_evaluate.py)

The shared data (digits, speech) is built once under ``<workdir>/data``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from collections.abc import Callable

import ml_collections
import numpy as np
from absl import app, flags, logging

from teal_jax.demo_evaluate import _done_file, _say, stage_done
from teal_jax.vocab import SPAN_MODALITIES

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """The demo's command line; defined only when it runs as a program, so that importing this module (tests read
    its stage configs) never clashes with teal_jax.main's flags of the same names."""
    flags.DEFINE_string("workdir", "runs/demo", "Where every stage writes its run directory and the report.")
    flags.DEFINE_enum("variant", "default", ["default", "quick"], "'quick' shrinks every stage to run in minutes.")
    flags.DEFINE_list("stages", None, "Run only these stages (default: all, in order).")


def _config(module: str, arg: str | None = None) -> ml_collections.ConfigDict:
    return importlib.import_module(module).get_config(arg)


# ---- stage configs: (variant, demo workdir) -> config ---------------------------------------------------------------
def text_lm_config(variant: str, workdir: str) -> ml_collections.ConfigDict:
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


def image_tokenizer_config(variant: str, workdir: str) -> ml_collections.ConfigDict:
    c = _config("configs.image.digits_tiny", "coarse,smoke" if variant == "quick" else "coarse")
    c.data.data_dir = os.path.join(workdir, "data")
    return c


def audio_codec_config(variant: str, workdir: str) -> ml_collections.ConfigDict:
    c = _config("configs.audio.speech_tiny", "coarse,smoke" if variant == "quick" else "coarse")
    c.data.data_dir = os.path.join(workdir, "data")
    if variant != "quick":  # the TEAL stages' speech (configs/teal/demo.py), so the codec and its judge see it too
        c.data.config = "medium"
    return c


def teal_config(variant: str, workdir: str, teal_variant: str) -> ml_collections.ConfigDict:
    """configs/teal/demo.py:``teal_variant`` (quick variant: plus ``smoke``) with the demo's paths under ``workdir``:
    base LM, tokenizers, data and the shared token dir."""
    arg = ",".join(v for v in (teal_variant, "smoke" if variant == "quick" else "") if v)
    c = _config("configs.teal.demo", arg)
    data_dir = os.path.join(workdir, "data")
    c.model.base_lm_workdir = os.path.join(workdir, "text_lm")
    c.data.image_tokenizer = os.path.join(workdir, "image_tokenizer")
    c.data.audio_tokenizer = os.path.join(workdir, "audio_codec")
    c.data.image_source.data_dir = data_dir
    c.data.audio_source.data_dir = data_dir
    c.data.tokens_dir = os.path.join(workdir, "tokens")  # shared by every TEAL run: tokenized once
    return c


def teal_stage1_config(variant: str, workdir: str) -> ml_collections.ConfigDict:
    c = teal_config(variant, workdir, "")
    if variant != "quick":  # keep the checkpoint at the ablations' step count: the evaluate stage compares them
        c.train.checkpoint_every = ABLATION_STEPS
        c.train.keep_checkpoints = max(c.train.keep_checkpoints, -(-c.train.steps // ABLATION_STEPS))
    return c


def teal_expert_config(variant: str, workdir: str) -> ml_collections.ConfigDict:
    return teal_config(variant, workdir, "expert")


def teal_stage2_config(variant: str, workdir: str) -> ml_collections.ConfigDict:
    c = teal_config(variant, workdir, "stage2")
    c.model.base_lm_workdir = os.path.join(workdir, "teal_stage1")  # every TEAL parameter from stage 1
    return c


# The ablations' training budget (default variant): a third of stage 1's, within the demo's 30 minutes. The evaluate
# stage compares them with stage 1's checkpoint at the same step (``teal_stage1@<steps>``).
ABLATION_STEPS = 200


def _ablation_budget(c: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
    if variant != "quick":
        c.train.steps = c.train.eval_every = c.train.checkpoint_every = ABLATION_STEPS
    return c


def ablation_codebook_config(variant: str, workdir: str) -> ml_collections.ConfigDict:
    c = teal_config(variant, workdir, "codebook")
    c.model.image_codebook = os.path.join(workdir, "codebooks", "image.npy")
    c.model.audio_codebook = os.path.join(workdir, "codebooks", "audio.npy")
    return _ablation_budget(c, variant)


def ablation_full_config(variant: str, workdir: str) -> ml_collections.ConfigDict:
    return _ablation_budget(teal_config(variant, workdir, "full"), variant)


def ablation_lora_config(variant: str, workdir: str) -> ml_collections.ConfigDict:
    return _ablation_budget(teal_config(variant, workdir, "lora"), variant)


TRAIN_STAGES: dict[str, Callable[[str, str], ml_collections.ConfigDict]] = {
    "text_lm": text_lm_config,
    "image_tokenizer": image_tokenizer_config,
    "audio_codec": audio_codec_config,
    "teal_expert": teal_expert_config,
    "teal_stage1": teal_stage1_config,
    "teal_stage2": teal_stage2_config,
    "ablation_codebook": ablation_codebook_config,
    "ablation_full": ablation_full_config,
    "ablation_lora": ablation_lora_config,
}
STAGE_ORDER = (*TRAIN_STAGES, "evaluate")
# What a stage needs to have finished first.
REQUIRES = {
    "teal_expert": ("text_lm", "image_tokenizer", "audio_codec"),
    "teal_stage1": ("text_lm", "image_tokenizer", "audio_codec"),
    "teal_stage2": ("teal_stage1",),
    "ablation_codebook": ("text_lm", "image_tokenizer", "audio_codec"),
    "ablation_full": ("text_lm", "image_tokenizer", "audio_codec"),
    "ablation_lora": ("text_lm", "image_tokenizer", "audio_codec"),
    "evaluate": ("teal_expert", "teal_stage1"),
}


def write_codebooks(workdir: str) -> None:
    """The tokenizers' code vectors as .npy for the codebook-init ablation (written once)."""
    out = os.path.join(workdir, "codebooks")
    paths = {m: os.path.join(out, f"{m}.npy") for m in SPAN_MODALITIES}
    if all(os.path.exists(p) for p in paths.values()):
        return
    from teal_jax.tokenizers.audio import AudioTokenizer
    from teal_jax.tokenizers.image import ImageTokenizer

    os.makedirs(out, exist_ok=True)
    arrays = {"image": ImageTokenizer.from_checkpoint(os.path.join(workdir, "image_tokenizer")).code_vectors(),
              "audio": AudioTokenizer.from_checkpoint(os.path.join(workdir, "audio_codec")).code_vectors()}
    for m, a in arrays.items():
        tmp = paths[m] + ".tmp.npy"
        np.save(tmp, a)
        os.replace(tmp, paths[m])  # a killed run leaves no half-written file under the final name


def run_stage(name: str, workdir: str, variant: str) -> dict:
    from teal_jax.train import trainer

    missing = [r for r in REQUIRES.get(name, ()) if not stage_done(workdir, r)]
    if missing:
        raise RuntimeError(f"stage {name} needs {missing} to have finished first (run them, or all stages)")
    config = TRAIN_STAGES[name](variant, workdir)
    stage_dir = os.path.join(workdir, name)
    if stage_done(workdir, name, config):
        _say(f"{name}: already trained ({_done_file(workdir, name)}); skipping")
        with open(_done_file(workdir, name)) as f:
            return json.load(f)
    if name == "ablation_codebook":
        write_codebooks(workdir)
    _say(f"=== stage {name}: {config.objective}, {config.train.steps} steps -> {stage_dir}")
    t0 = time.time()
    metrics = trainer.train(config, stage_dir)
    result = {"stage": name, "wall_s": round(time.time() - t0, 1), "steps": config.train.steps,
              "metrics": {k: float(v) for k, v in metrics.items()}}
    tmp = _done_file(workdir, name) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, _done_file(workdir, name))
    _say(f"{name}: done in {result['wall_s']} s")
    return result


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    # Absolute: the runs record paths to each other (base LM, tokenizers), and must load from any directory.
    workdir = os.path.abspath(FLAGS.workdir)
    os.makedirs(workdir, exist_ok=True)
    stages = FLAGS.stages or list(STAGE_ORDER)
    unknown = [s for s in stages if s not in STAGE_ORDER]
    if unknown:
        sys.exit(f"unknown stage(s) {unknown}; known: {list(STAGE_ORDER)}")
    t0 = time.time()
    results = {}
    for s in [s for s in STAGE_ORDER if s in stages]:
        if s == "evaluate":
            from teal_jax import demo_evaluate

            missing = [r for r in REQUIRES["evaluate"] if not stage_done(workdir, r)]
            if missing:
                raise RuntimeError(f"stage evaluate needs {missing} to have finished first")
            results[s] = demo_evaluate.evaluate_stage(workdir, FLAGS.variant, results)
        else:
            results[s] = run_stage(s, workdir, FLAGS.variant)
    if stages == ["text_lm"] or "evaluate" not in stages:
        if "text_lm" in stages:
            import teal_jax

            lm = teal_jax.load(os.path.join(workdir, "text_lm"))
            prompts = ["three plus four is", "the red"]
            for p, out in zip(prompts, lm.generate(prompts, max_new_tokens=16), strict=True):
                _say(f"sample: {p!r} -> {out!r}")
    _say(f"all requested stages finished in {time.time() - t0:.0f} s (this run)")


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    _define_flags()
    app.run(main)
