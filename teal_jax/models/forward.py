"""The one cache of jitted forward passes: judges, the base LM of every evaluated run, and the inference models
(LanguageModel, TealModel logits) all get theirs here, so equal modules share one function and its compilations."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
from flax import linen as nn


@functools.lru_cache(maxsize=32)
def jitted_apply(module: nn.Module, preprocess: Callable | None = None) -> Callable:
    """The jitted forward ``(params, x) -> module.apply({'params': params}, preprocess(x))``, one per (module,
    preprocess) pair: linen modules are frozen dataclasses, so equal configs share one function and its compilations
    (a judge loaded twice, or the base LM of every run, compiles once per input shape)."""
    if preprocess is None:
        return jax.jit(lambda p, x: module.apply({"params": p}, x))
    return jax.jit(lambda p, x: module.apply({"params": p}, preprocess(x)))
