"""Fits a semantic tokenizer's k-means codebook (``objective='kmeans_tokenizer'``) over its config's data source.

  python -m teal_jax.train.kmeans_fit --config=configs/audio/whisper_kmeans.py:checkpoint=/ckpt/whisper-small \\
      --workdir=/runs/whisper_kmeans
  python -m teal_jax.train.kmeans_fit --config=configs/image/clip_kmeans.py:checkpoint=/ckpt/clip-vit-b16 ...
  python -m teal_jax.train.kmeans_fit --config=configs/audio/speech_kmeans.py:k=256 ...    # demo scale: MFCC frames
  python -m teal_jax.train.kmeans_fit --config=configs/image/digits_kmeans.py:checkpoint=runs/demo/image_tokenizer ...

The tokenizer comes from ``config.tokenizer`` (``teal_jax.tokenizers.kmeans.tokenizer_from_config``), the rows from
the train split of ``config.data.audio_source`` / ``image_source`` (the sources TEAL data pre-tokenizes: spoken words,
digits, any tfds dataset). Batch ``i`` is a function of ``i`` alone (epoch ``e`` visits the split in the order of a
permutation seeded by ``(config.seed, e)``; each process takes its own slice of the batch), so an interrupted fit
resumes exactly; a second call with the same workdir resumes from its newest verified checkpoint. Audio clips are
start-aligned and cut or zero-padded to ``config.kmeans.seconds`` (their real length masks the padding frames out);
images are center-cropped and resized to the encoder's size. Not a trainer objective: k-means has no gradients, so
it keeps its own small loop (``fit_kmeans``) and the trainer is untouched.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from teal_jax.data import templates as templates_lib
from teal_jax.data.teal import sources as sources_lib
from teal_jax.data.teal.config import source_dict
from teal_jax.tokenizers import kmeans as kmeans_lib

_MODALITY = {"whisper": "audio", "clip": "image", "mfcc": "audio", "vqgan": "image"}


def make_batches(config: ml_collections.ConfigDict, tokenizer: Any, *, data_dir: str | None = None,
                 sources: Mapping[str, Sequence] | None = None) -> Callable[[int], Any]:
    """``batch(i)`` for :func:`~teal_jax.tokenizers.kmeans.fit_kmeans`: this process's rows of batch ``i``."""
    modality = _MODALITY[tokenizer.kind]
    src = source_dict(config.data.get(f"{modality}_source"), modality)
    if sources is None:
        size = tokenizer.config.image_size if modality == "image" else 32
        sources = sources_lib.open_sources(src, modality, data_dir=data_dir, image_size=size)
    train = sources["train"]
    n = len(train)
    batch_size, procs = int(config.train.batch_size), jax.process_count()
    if n == 0:
        raise ValueError(f"config.data.{modality}_source: the train split is empty")
    if batch_size % procs:
        raise ValueError(f"config.train.batch_size={batch_size} does not divide over {procs} processes")
    local = batch_size // procs
    first = jax.process_index() * local
    seed = int(config.seed)
    perms: dict[int, np.ndarray] = {}

    def record(g: int) -> dict:
        epoch = g // n
        if epoch not in perms:
            perms.clear()
            perms[epoch] = np.random.default_rng((seed, epoch)).permutation(n)
        return train[int(perms[epoch][g % n])]

    if modality == "audio":
        from teal_jax.data.speech import RecordAdapter

        rate = tokenizer.sample_rate
        _, samples = templates_lib.audio_span(float(config.kmeans.seconds), rate, tokenizer.config.hop_length)
        source_rate = 16000 if src["kind"] == "spoken_words" else int(src["source_rate"])
        adapter = RecordAdapter(audio_key=src["audio_key"], text_key=None, label_key=None, source_rate=source_rate,
                                sample_rate=rate)

        def batch(i: int):
            x = np.zeros((local, samples), np.float32)
            lengths = np.zeros((local,), np.int32)
            for j in range(local):
                clip = adapter.map(record(i * batch_size + first + j))["audio"][:samples]
                x[j, : len(clip)] = clip.astype(np.float32) / 32768.0
                lengths[j] = max(len(clip), 1)
            return x, lengths

        return batch

    from teal_jax.media.image import center_crop_resize, convert_channels

    size, channels = tokenizer.config.image_size, tokenizer.config.in_channels

    def batch(i: int):
        out = np.zeros((local, size, size, channels), np.uint8)
        for j in range(local):
            g = i * batch_size + first + j
            img = sources_lib.field(record(g), src["image_key"], "config.data.image_source.image_key")
            img = convert_channels(np.asarray(img), channels, name=f"train record at draw {g}")
            out[j] = center_crop_resize(img.astype(np.uint8), size)
        return out

    return batch


def fit_from_config(config: ml_collections.ConfigDict, workdir: str, *, data_dir: str | None = None,
                    sources: Mapping[str, Sequence] | None = None, log: Callable[[str], None] = print):
    """Builds the tokenizer and its batches from ``config`` and fits (or resumes fitting) the codebook in
    ``workdir``. Returns ``(tokenizer with its codebook, per-step metrics of this call)``."""
    from teal_jax.parallel import sharding

    if config.get("objective") != "kmeans_tokenizer":
        raise ValueError(f"config.objective={config.get('objective')!r}: kmeans_fit runs 'kmeans_tokenizer' configs")
    tokenizer = kmeans_lib.tokenizer_from_config(config.tokenizer)
    if data_dir is None:  # where built-in sources (digits, spoken words) are built when the config names no dir
        data_dir = os.path.join(workdir, "data")
    batches = make_batches(config, tokenizer, data_dir=data_dir, sources=sources)
    mesh = sharding.make_mesh(config.mesh.shape)
    return kmeans_lib.fit_kmeans(
        tokenizer, batches, steps=int(config.train.steps), workdir=workdir, config=config, seed=int(config.seed),
        init_batches=int(config.kmeans.init_batches), checkpoint_every=int(config.train.checkpoint_every),
        mesh=mesh, log=log, log_every=int(config.train.log_every))


def main(argv) -> None:
    from absl import app, flags, logging

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    from teal_jax.parallel import distributed

    distributed.initialize("auto")
    fit_from_config(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "A kmeans_tokenizer config (configs/audio/whisper_kmeans.py, "
                                    "configs/image/clip_kmeans.py, configs/audio/speech_kmeans.py, "
                                    "configs/image/digits_kmeans.py), optionally ':variant'.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Run directory: checkpoints (resumed when present).")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
