"""Command-line entry point: train, evaluate or sample any config.

  python -m teal_jax.main --config=configs/lm/tiny.py --workdir=runs/lm --mode=train
  python -m teal_jax.main --config=configs/lm/tiny.py --workdir=runs/lm --mode=sample --prompt="three plus"
  python -m teal_jax.main --config=configs/lm/tiny.py:synthetic --config.train.steps=10 --workdir=/tmp/x
  python -m teal_jax.main --workdir=runs/demo/teal_stage1 --mode=eval      # no --config: the run's own

``--config.a.b=v`` overrides any field; an unknown field or a value of the wrong type stops before any work starts.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a configs/**.py file (optionally ':variant').",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, samples.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample"], "What to do.")
flags.DEFINE_multi_string("prompt", None, "Prompt(s) for --mode=sample (default: config.sample.prompts).")
flags.DEFINE_enum("multihost", "auto", ["auto", "off", "force"],
                  "jax.distributed initialisation: auto-detect clusters / TEAL_* env vars, never, or always.")
flags.DEFINE_bool("verbose", False, "Show library INFO logs (orbax, absl).")
flags.mark_flags_as_required(["workdir"])


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.verbose:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
    from teal_jax.parallel import distributed

    distributed.initialize(FLAGS.multihost)
    from teal_jax import config as config_lib

    config = FLAGS.config
    if config is None:  # eval / sample on a saved run: the config it was trained with
        if FLAGS.mode == "train":
            raise app.UsageError("--config is required for --mode=train (eval and sample read the run's own)")
        from teal_jax import checkpoint

        try:
            config = checkpoint.read_config(FLAGS.workdir)
        except (FileNotFoundError, checkpoint.CheckpointIntegrityError) as e:
            sys.exit(f"--mode={FLAGS.mode}: {e}")
    try:
        config_lib.validate(config)
    except ValueError as e:
        sys.exit(f"invalid config {FLAGS['config'].value if hasattr(FLAGS['config'], 'value') else ''}: {e}")
    if FLAGS.mode == "train":
        from teal_jax.train import trainer

        trainer.train(config, FLAGS.workdir)
    elif FLAGS.mode == "eval":
        from teal_jax.train import trainer

        trainer.evaluate(config, FLAGS.workdir)
    else:
        # Every run kind through the one protocol (teal_jax/inference/protocol.py): text is printed, image/speech
        # outputs (a TEAL config's sample.task) are written under <workdir>/samples/ and their paths printed.
        import os

        import teal_jax
        from teal_jax.inference.protocol import ModeNotSupported

        model = teal_jax.load(FLAGS.workdir)
        prompts = FLAGS.prompt or list(config.sample.prompts)
        settings = {k: v for k, v in config.sample.items() if k != "prompts"}
        try:
            outputs = model.sample(prompts, out_dir=os.path.join(FLAGS.workdir, "samples"), **settings)
        except ModeNotSupported as e:
            sys.exit(f"--mode=sample: {e}")
        for prompt, out in zip(prompts, outputs, strict=True):
            print(f"{prompt!r} -> {out!r}", flush=True)


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
