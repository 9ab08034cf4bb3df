"""Command-line entry point: train, evaluate or sample any config.

  python -m teal_jax.main --config=configs/lm/tiny.py --workdir=runs/lm --mode=train
  python -m teal_jax.main --config=configs/lm/tiny.py --workdir=runs/lm --mode=sample --prompt="three plus"
  python -m teal_jax.main --config=configs/lm/tiny.py:synthetic --config.train.steps=10 --workdir=/tmp/x
  python -m teal_jax.main --workdir=runs/demo/teal_stage1 --mode=eval      # no --config: the run's own
  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python -m teal_jax.main \
      --config=configs/lm/tinyllama_1b.py:synthetic --workdir=/tmp/c --mode=compile --target=h100  # will it fit?

``--config.a.b=v`` overrides any field; an unknown field or a value of the wrong type stops before any work starts.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a configs/**.py file (optionally ':variant').",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, samples.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample", "compile"],
                  "What to do. compile: compile the train step for the mesh and print per-device memory.")
flags.DEFINE_string("target", None, "--mode=compile: the device to check the fit against (v5e, v5p, h100, h200, "
                    "... or bytes such as 24G).")
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
    from teal_jax import paths

    config = FLAGS.config
    if FLAGS.mode not in ("train", "compile") and not paths.isdir(paths.join(paths.resolve(FLAGS.workdir),
                                                                             "checkpoints")):
        # read-only modes never create anything: a missing run is an error before any folder is made
        sys.exit(f"--mode={FLAGS.mode}: no checkpoint under {paths.resolve(FLAGS.workdir)} (train first, or check "
                 "--workdir)")
    if config is None:  # eval / sample on a saved run: the config it was trained with
        if FLAGS.mode in ("train", "compile"):
            raise app.UsageError(f"--config is required for --mode={FLAGS.mode} (eval and sample read the run's own)")
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
    elif FLAGS.mode == "compile":
        from teal_jax.train import memory

        report = memory.compile_report(config, FLAGS.workdir, FLAGS.target)
        print(memory.format_report(report), flush=True)
        if not report.get("fits", True):
            sys.exit(3)
    elif FLAGS.mode == "eval":
        from teal_jax.train import trainer

        trainer.evaluate(config, FLAGS.workdir)
    else:
        # Every run kind through the one protocol (teal_jax/inference/protocol.py): text is printed, image/speech
        # outputs (a TEAL config's sample.task) are written under <workdir>/samples/ and their paths printed.
        import teal_jax
        from teal_jax.inference.protocol import ModeNotSupported

        model = teal_jax.load(FLAGS.workdir)
        prompts = FLAGS.prompt or list(config.sample.prompts)
        settings = {k: v for k, v in config.sample.items() if k != "prompts"}
        from teal_jax import paths

        # PNG/WAV writers need a local folder: a gs:// workdir's samples are written locally, then copied to it.
        out_dir, local = paths.join(FLAGS.workdir, "samples"), paths.local_cache_dir(FLAGS.workdir, "samples")
        try:
            outputs = model.sample(prompts, out_dir=local, **settings)
        except ModeNotSupported as e:
            sys.exit(f"--mode=sample: {e}")
        if local != paths.resolve(out_dir):
            paths.copy_tree(local, out_dir)
            outputs = [paths.join(out_dir, os.path.relpath(o, local)) if isinstance(o, str) and o.startswith(local)
                       else o for o in outputs]
        for prompt, out in zip(prompts, outputs, strict=True):
            print(f"{prompt!r} -> {out!r}", flush=True)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with config errors (a missing file, an unknown variant, a mistyped ``--config.a.b`` key, a
    value of the wrong type) printed as one line and exit status 2 instead of a traceback."""
    try:
        rest = FLAGS(argv)
        if FLAGS["config"].present:
            list(FLAGS.config.keys())  # ml_collections loads a config file lazily: surface its errors here
        return rest
    except OSError as e:  # a config file that cannot be loaded
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        sys.stderr.write(f"invalid config ({' '.join(a for a in argv[1:] if a.startswith('--config'))}): "
                         f"{lines[-1]}\n")
        sys.exit(2)
    except flags.Error as e:
        msg = str(e)
        if "Traceback (most recent call last)" in msg:  # a config file's own error: its first and last lines
            lines = [line for line in msg.splitlines() if line.strip()]
            msg = f"{lines[0]} {lines[-1]}"
        sys.stderr.write(f"{msg}\nPass --helpfull to see every flag.\n")
        sys.exit(2)
    except (AttributeError, KeyError, ValueError, TypeError, FileNotFoundError, ImportError) as e:
        msg = str(e.args[0]) if e.args else str(e)
        if len(msg) > 1 and msg[0] == msg[-1] and msg[0] in "'\"":  # ml_collections quotes its KeyError text
            msg = msg[1:-1].encode().decode("unicode_escape")
        msg = " ".join(line.strip().strip("'") for line in msg.splitlines() if line.strip())
        overrides = [a for a in argv[1:] if a.startswith("--config")]
        sys.stderr.write(f"invalid config ({' '.join(overrides) or 'no --config'}): {type(e).__name__}: {msg}\n")
        sys.exit(2)


def run() -> None:
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
