"""Counting parameters: the one counter, used by the trainer (per optimizer group) and TEAL (per report group)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np


def _key(entry) -> str:
    return str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry))))


def count_params(params: Any, trainable: Any | None = None,
                 group_of: Callable[[tuple[str, ...]], str] | None = None) -> dict[str, tuple[int, int]]:
    """group -> (parameters, trainable parameters), groups sorted by name.

    ``params``: any pytree whose leaves have a ``shape`` (arrays or ``jax.ShapeDtypeStruct``; boxed leaves count by
    their value). ``trainable``: a matching tree of bools (default: all trainable). ``group_of``: the path's keys ->
    group name (default: the first key).
    """
    is_leaf = lambda x: hasattr(x, "shape") or hasattr(x, "unbox")  # noqa: E731
    leaves = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_leaf)[0]
    flags = jax.tree.leaves(trainable) if trainable is not None else [True] * len(leaves)
    if len(flags) != len(leaves):
        raise ValueError(f"count_params: {len(leaves)} parameters but {len(flags)} trainable flags")
    group_of = group_of or (lambda keys: keys[0])
    out: dict[str, tuple[int, int]] = {}
    for (path, leaf), t in zip(leaves, flags, strict=True):
        leaf = leaf.unbox() if hasattr(leaf, "unbox") else leaf
        n = int(np.prod(leaf.shape))
        g = group_of(tuple(_key(p) for p in path))
        total, tr = out.get(g, (0, 0))
        out[g] = (total + n, tr + (n if t else 0))
    return dict(sorted(out.items()))


def format_counts(counts: Mapping[str, tuple[int, int]]) -> str:
    """One line per group and a total: parameters, trainable, frozen."""
    rows = [*counts.items(), ("total", (sum(n for n, _ in counts.values()), sum(t for _, t in counts.values())))]
    return "\n".join(f"  {g:<22} {n:>14,} params {t:>14,} trainable {n - t:>14,} frozen" for g, (n, t) in rows)
