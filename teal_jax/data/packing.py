"""Sequence packing: variable-length token sequences -> fixed-length rows with segment ids and positions.

A thin wrapper over grain's own packers (checkpointable iterator state comes with them):

- ``'concat'`` (``grain.experimental.ConcatThenSplitIterDataset``): concatenate documents and cut every ``seq_len``
  tokens. No padding except at the very end of a finite stream. A document that crosses a row boundary is split;
  its continuation becomes a new segment in the next row with positions restarting at 0 (so the first token of a
  continuation is never a loss target for a token in another row). Best for LM pretraining.
- ``'first_fit'`` (``grain.experimental.FirstFitPackIterDataset``): place whole sequences into ``num_bins`` open rows,
  first fit; pad the rest. A sequence longer than ``seq_len`` is first cut into ``seq_len`` pieces (each its own
  segment). Best for task examples (TEAL templates) that should not be cut at a row boundary.

- ``pack_drawn_examples`` (the TEAL task streams, :mod:`teal_jax.data.teal`): whole examples drawn one at a time
  and placed left to right; a row is closed (padded) once ``max_tries`` draws did not fit its remaining space.
  Stateless: a batch is a pure function of what the draw function returns (e.g. from a generator seeded per batch).

Input elements of the grain packers: dicts with ``'tokens'`` (int ``[n]``) and optionally ``'loss_mask'`` (float
``[n]``, per-token loss weights, e.g. 0 on a prompt and 1 on its target; all ones when absent) and any other
per-token 1-D features listed in ``extra_features`` (e.g. TEAL's modality ids). Output rows (numpy, each
``[seq_len]``)::

    tokens       int32    ids; pad_id where segment_ids == 0
    segment_ids  int32    1, 2, ... per packed sequence in the row; 0 = padding
    positions    int32    position inside its sequence, restarting at 0 for each segment; 0 on padding
    loss_mask    float32  the input weights, passed through; 0 on padding
    <extra>      as given, 0 on padding
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grain
import grain.experimental as gx
import numpy as np

PACKING_METHODS = ("concat", "first_fit")


class _Prepare(grain.transforms.Map):
    """Validates one element, casts dtypes and adds an all-ones loss_mask when there is none."""

    def __init__(self, features: Sequence[str]):
        self.features = tuple(features)

    def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
        if "tokens" not in element:
            raise ValueError(f"packing: element has no 'tokens' (keys: {sorted(element)})")
        tokens = np.asarray(element["tokens"], np.int32)
        if tokens.ndim != 1:
            raise ValueError(f"packing: 'tokens' must be 1-D, got shape {tokens.shape}")
        out = {"tokens": tokens}
        mask = element.get("loss_mask")
        out["loss_mask"] = np.ones(tokens.shape, np.float32) if mask is None else np.asarray(mask, np.float32)
        for key in self.features:
            if key in ("tokens", "loss_mask"):
                continue
            if key not in element:
                raise ValueError(f"packing: element has no {key!r} (keys: {sorted(element)})")
            out[key] = np.asarray(element[key])
        for key, value in out.items():
            if value.shape != tokens.shape:
                raise ValueError(f"packing: {key!r} has shape {value.shape}, 'tokens' has {tokens.shape}")
        return out


class _SplitLong(gx.FlatMapTransform):
    """Cuts a sequence longer than seq_len into consecutive pieces of at most seq_len tokens."""

    def __init__(self, seq_len: int, max_pieces: int):
        self.seq_len = seq_len
        self.max_fan_out = max_pieces

    def flat_map(self, element: dict[str, np.ndarray]):
        n = len(element["tokens"])
        if n > self.seq_len * self.max_fan_out:
            raise ValueError(f"packing: a sequence of {n} tokens needs more than max_pieces={self.max_fan_out} "
                             f"rows of seq_len={self.seq_len}")
        return [{k: v[start : start + self.seq_len] for k, v in element.items()} for start in range(0, n, self.seq_len)]


class _Rename(grain.transforms.Map):
    """grain names its outputs '<feature>_segment_ids'/'<feature>_positions': keep one pair, from 'tokens'."""

    def __init__(self, features: Sequence[str]):
        self.features = tuple(features)

    def map(self, row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {
            "tokens": row["tokens"].astype(np.int32),
            "segment_ids": row["tokens_segment_ids"].astype(np.int32),
            "positions": row["tokens_positions"].astype(np.int32),
            "loss_mask": row["loss_mask"].astype(np.float32),
        }
        for key in self.features:
            out.setdefault(key, row[key])
        return out


def pack_dataset(
    ds: grain.IterDataset,
    seq_len: int,
    *,
    method: str = "concat",
    extra_features: Sequence[str] = (),
    num_bins: int = 16,
    seed: int = 0,
    max_pieces: int = 1024,
) -> grain.IterDataset:
    """Packs ``ds`` (elements as in the module docstring) into rows of ``seq_len``; returns an ``IterDataset``.

    ``num_bins``/``seed`` are for ``'first_fit'`` (rows open at once; the order the finished bins are emitted in is
    shuffled with ``seed``). ``max_pieces`` bounds how many rows one sequence may be cut into under 'first_fit'.
    """
    if method not in PACKING_METHODS:
        raise ValueError(f"packing method {method!r}: choose one of {PACKING_METHODS}")
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len} must be >= 2")
    features = ("tokens", "loss_mask", *[f for f in extra_features if f not in ("tokens", "loss_mask")])
    ds = ds.map(_Prepare(features)).filter(lambda e: len(e["tokens"]) > 0)
    lengths = {k: seq_len for k in features}
    if method == "concat":
        ds = gx.ConcatThenSplitIterDataset(ds, length_struct=lengths)
    else:
        ds = gx.FlatMapIterDataset(ds, _SplitLong(seq_len, max_pieces))
        ds = gx.FirstFitPackIterDataset(ds, length_struct=lengths, num_packing_bins=num_bins, seed=seed,
                                        shuffle_bins=True)
    return ds.map(_Rename(features))


def pack_examples(examples: Iterable[dict[str, Any]], seq_len: int, **kwargs) -> dict[str, np.ndarray]:
    """Packs a finite list of examples at once: ``{key: [rows, seq_len]}`` (see :func:`pack_dataset`)."""
    examples = list(examples)
    if not examples:
        raise ValueError("pack_examples: no examples")
    rows = list(pack_dataset(grain.MapDataset.source(examples).to_iter_dataset(), seq_len, **kwargs))
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def unpack_row(row: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The inverse view of one packed row: its segments in order, each ``{key: [segment_len]}`` (padding dropped).

    Handy for tests and for inspecting batches; works on any row with ``segment_ids``.
    """
    seg = np.asarray(row["segment_ids"])
    out = []
    for s in np.unique(seg[seg > 0]):
        idx = np.nonzero(seg == s)[0]
        out.append({k: np.asarray(v)[idx] for k, v in row.items() if k != "segment_ids"})
    return out


Draw = Callable[[], tuple[Sequence[int], Sequence[float], dict[str, Any]]]  # () -> (tokens, loss_mask, info)


def pack_drawn_examples(draw: Draw, batch_size: int, row_len: int, *, max_tries: int,
                        example_weights: bool = False) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """``batch_size`` rows of ``row_len`` tokens filled with whole examples from ``draw()``.

    Each row takes drawn examples left to right until it is full or, in all, ``max_tries`` draws did not fit its
    remaining space (a draw that does not fit is dropped); the rest is padding. Returns ``(batch, placed)``: ``batch``
    holds ``tokens`` int32, ``loss_mask`` float32, ``segment_ids`` int32 (1, 2, ... per example; 0 on padding),
    ``positions`` int32 (restarting at 0 per example), all ``[batch_size, row_len]``, and with ``example_weights``
    ``loss_weight`` float32 (each example's mask / its sum, so each example weighs 1 in all); ``placed`` is one dict
    per placed example: ``row``, ``segment`` and the draw's ``info``. An example longer than ``row_len`` never fits:
    callers cut or reject those before drawing.
    """
    shape = (batch_size, row_len)
    out = {"tokens": np.zeros(shape, np.int32), "loss_mask": np.zeros(shape, np.float32),
           "segment_ids": np.zeros(shape, np.int32), "positions": np.zeros(shape, np.int32)}
    if example_weights:
        out["loss_weight"] = np.zeros(shape, np.float32)
    placed = []
    for b in range(batch_size):
        pos, seg, misses = 0, 1, 0
        while pos < row_len and misses < max_tries:
            toks, mask, info = draw()
            if pos + len(toks) > row_len:
                misses += 1
                continue
            sl = slice(pos, pos + len(toks))
            out["tokens"][b, sl], out["loss_mask"][b, sl] = toks, mask
            out["segment_ids"][b, sl], out["positions"][b, sl] = seg, np.arange(len(toks))
            if example_weights:
                m = np.asarray(mask, np.float32)
                out["loss_weight"][b, sl] = m / max(float(m.sum()), 1.0)
            placed.append({"row": b, "segment": seg, **info})
            pos, seg = pos + len(toks), seg + 1
    return out, placed
