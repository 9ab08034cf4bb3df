"""Shape buckets for the tokenizers' compiled calls, so that new batch sizes and clip lengths reuse a compiled
program instead of tracing and compiling a new one.

A batch of ``n`` runs padded to the next power of two (:func:`batch_bucket`), at most ``max_batch``; a bigger batch
runs in pieces of ``max_batch`` rows, the last piece padded the same way (:func:`batch_pieces`). A length is padded
to a multiple of a bucket (:func:`round_up`). The caller slices the padding off the result: rows are independent,
so the real rows' outputs do not depend on the padding rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def batch_bucket(n: int, max_batch: int) -> int:
    """The padded size of a batch of ``n <= max_batch`` rows: the next power of two, capped at ``max_batch``."""
    if n < 1 or max_batch < 1:
        raise ValueError(f"batch_bucket: need n >= 1 and max_batch >= 1, got n={n}, max_batch={max_batch}")
    return min(1 << (n - 1).bit_length(), max_batch)


def batch_pieces(n: int, max_batch: int) -> list[tuple[int, int, int]]:
    """``(start, stop, padded_rows)`` of each piece of a batch of ``n`` rows."""
    return [(s, min(s + max_batch, n), batch_bucket(min(max_batch, n - s), max_batch))
            for s in range(0, n, max_batch)]


def round_up(n: int, multiple: int, cap: int | None = None) -> int:
    """``n`` rounded up to a multiple of ``multiple`` (no rounding when ``multiple <= 0``), at most ``cap``
    (but never below ``n``)."""
    out = n if multiple <= 0 else -(-n // multiple) * multiple
    return out if cap is None else max(n, min(out, cap))


def pad_axis(x, size: int, axis: int):
    """Zero-pads numpy or jax ``x`` along ``axis`` to ``size`` (numpy stays on the host)."""
    extra = size - x.shape[axis]
    if extra < 0:
        raise ValueError(f"pad_axis: axis {axis} has {x.shape[axis]} > {size} entries")
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return np.pad(x, widths) if isinstance(x, np.ndarray) else jnp.pad(x, widths)


def spans_devices(x) -> bool:
    """Whether ``x`` is a jax array laid out over more than one device (its batch layout is the caller's: such
    inputs are not re-bucketed)."""
    return isinstance(x, jax.Array) and len(x.sharding.device_set) > 1


def concat(pieces: list, axis: int):
    return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=axis)
