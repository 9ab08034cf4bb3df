"""What every evaluation module shares: the one cache of jitted forward passes, and atomic JSON writes."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Any

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


def write_json(path: str, value: Any) -> str:
    """Writes ``value`` as indented JSON through a temporary file and a rename (a reader never sees half a file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)
    return path
