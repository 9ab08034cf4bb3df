"""The one protocol every loaded run follows (what ``teal_jax.load(workdir)`` returns and ``main --mode=sample``
uses).

    kind        'lm' | 'teal' | 'image_vq' | 'audio_codec': what the run trained (``config.objective``)
    run_config  the run's ConfigDict (None for a model built in memory)
    workdir     the run directory it was loaded from (None for a model built in memory)
    sample(prompts, *, out_dir=None, **settings) -> list
                one output per prompt string: text for text outputs; files (PNG/WAV) written into ``out_dir`` for
                image/speech outputs (their paths are returned). ``settings`` are ``config.sample``'s fields
                (max_new_tokens, temperature, top_k, top_p, seed, and per kind: guidance_scale, task); an unknown
                setting is a TypeError. A run kind without a sampler raises :class:`ModeNotSupported`.

The run's ConfigDict is ``run_config`` (not ``config``): ``TealModel.config`` has always been the model's
``TealConfig``, which evaluation reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

Kind = Literal["lm", "teal", "image_vq", "audio_codec"]
KINDS: tuple[str, ...] = ("lm", "teal", "image_vq", "audio_codec")
SAMPLE_SETTINGS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")


class ModeNotSupported(NotImplementedError):
    """A mode that does not apply to a run kind (e.g. sampling from an image tokenizer); the message names the kind
    and what to use instead."""


@runtime_checkable
class Model(Protocol):
    kind: str
    run_config: Any
    workdir: str | None

    def sample(self, prompts: Sequence[str], *, out_dir: str | None = None, **settings) -> list:
        ...


def check_settings(kind: str, settings: dict, allowed: Sequence[str]) -> None:
    """TypeError naming the first setting ``kind``'s ``sample`` does not take."""
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise TypeError(f"{kind} sample(): unknown setting(s) {unknown}; known: {sorted(allowed)}")


def require_prompts(prompts: Sequence[str], what: str) -> list[str]:
    """``prompts`` as a non-empty list of strings; TypeError/ValueError naming ``what`` otherwise."""
    if isinstance(prompts, str):
        raise TypeError(f"{what}: pass a list of strings, not one string ({prompts[:30]!r})")
    prompts = list(prompts)
    if not prompts:
        raise ValueError(f"{what}: empty list of texts")
    bad = [i for i, t in enumerate(prompts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"{what}: texts[{bad[0]}] is {type(prompts[bad[0]]).__name__}, expected str")
    return prompts
