"""Tokenizer runs as loaded models: ``teal_jax.load`` on an ``image_vq`` / ``audio_codec`` run returns these
subclasses of :class:`~teal_jax.tokenizers.image.ImageTokenizer` / :class:`~teal_jax.tokenizers.audio.AudioTokenizer`
(every tokenizer method works as before) that also follow :class:`teal_jax.inference.protocol.Model`. A tokenizer has
no sampler: ``sample`` raises :class:`~teal_jax.inference.protocol.ModeNotSupported` naming the run kind and what to
use instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from teal_jax import checkpoint
from teal_jax.inference.protocol import ModeNotSupported
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
