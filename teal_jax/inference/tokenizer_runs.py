"""Tokenizer runs as loaded models: ``teal_jax.load`` on an ``image_vq`` / ``audio_codec`` run returns these
subclasses of :class:`~teal_jax.tokenizers.image.ImageTokenizer` / :class:`~teal_jax.tokenizers.audio.AudioTokenizer`
(every tokenizer method works as before) that also follow :class:`teal_jax.inference.protocol.Model`; on a
``kmeans_tokenizer`` run (``teal_jax.train.kmeans_fit``) it returns the fitted semantic tokenizer as a subclass of its
own class (:mod:`teal_jax.tokenizers.kmeans`, :mod:`teal_jax.tokenizers.semantic_demo`). A tokenizer has no sampler:
``sample`` raises :class:`~teal_jax.inference.protocol.ModeNotSupported` naming the run kind and what to use instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from teal_jax import checkpoint
from teal_jax.inference.protocol import ModeNotSupported
from teal_jax.tokenizers import kmeans as kmeans_lib
from teal_jax.tokenizers.audio import AudioTokenizer
from teal_jax.tokenizers.image import ImageTokenizer


class _TokenizerRun:
    """Mixin: ``kind``, ``run_config``, ``workdir`` and a ``sample`` that explains why there is none."""

    kind = what = instead = ""
    run_config = None
    workdir = None

    @classmethod
    def from_checkpoint(cls, workdir: str, step: int | None = None, **kwargs):
        """The tokenizer of the newest (or ``step``) checkpoint, with the run's config and workdir attached."""
        tok = super().from_checkpoint(workdir, step, **kwargs)
        tok.run_config, tok.workdir = checkpoint.read_config(workdir, step), workdir
        return tok

    def sample(self, prompts: Sequence[str], *, out_dir: str | None = None, **settings) -> list:
        raise ModeNotSupported(f"{self.workdir or 'this run'}: an {self.kind!r} run (a {self.what}) has no sampler: "
                               f"{self.instead}")


class ImageTokenizerRun(_TokenizerRun, ImageTokenizer):
    kind, what = "image_vq", "image tokenizer"
    instead = ("use its encode(images) / decode(codes), or sample images from a TEAL run whose "
               "config.data.image_tokenizer names this workdir (--config.sample.task=image)")


class AudioTokenizerRun(_TokenizerRun, AudioTokenizer):
    kind, what = "audio_codec", "audio codec"
    instead = ("use its encode(waveforms, rate) / decode(codes), or sample speech from a TEAL run whose "
               "config.data.audio_tokenizer names this workdir (--config.sample.task=speech)")


_KMEANS_RUN_CLASSES: dict[type, type] = {}


def _kmeans_sample(self, prompts: Sequence[str], *, out_dir: str | None = None, **settings) -> list:
    raise ModeNotSupported(f"{self.workdir or 'this run'}: a 'kmeans_tokenizer' run (a semantic input tokenizer: "
                           "encoder features + k-means) is input-only and has no sampler: use its encode(...) to turn "
                           "images or speech into input codes (or pre-tokenize a dataset with it); its codes cannot be "
                           "decoded, so generate with a TEAL run and a reconstruction tokenizer")


class KMeansTokenizerRun:
    """``teal_jax.load`` of a ``kmeans_tokenizer`` run: the fitted semantic tokenizer (Whisper / CLIP / MFCC / VQ
    latents + k-means), as an instance of a subclass of its own tokenizer class that follows the protocol. Input-only:
    no sampler and no decoder."""

    kind = "kmeans_tokenizer"

    @classmethod
    def from_checkpoint(cls, workdir: str, step: int | None = None):
        tok = kmeans_lib.from_checkpoint(workdir, step)
        base = type(tok)
        if base not in _KMEANS_RUN_CLASSES:
            attrs = {"kind": cls.kind, "sample": _kmeans_sample, "run_config": None, "workdir": None}
            _KMEANS_RUN_CLASSES[base] = type(f"{base.__name__}Run", (base,), attrs)
        run = _KMEANS_RUN_CLASSES[base](tok.config, tok.encoder_params, tok.codebook, **tok._kwargs())
        run.run_config, run.workdir = checkpoint.read_config(workdir, step), workdir
        return run
