"""The scoring rules of the TEAL digit tasks: word normalisation, the caption rule, WER, per-class tables.

Definitions (``DIGITS = ("zero", ..., "nine")``):

- words(text): lowercase ``[a-z0-9']+`` tokens; a lone numeral ``0``..``9`` counts as its digit word.
- **caption correct**: the set of digit words among the caption's words is exactly ``{DIGITS[label]}`` (the right
  digit named, no other digit named; other words are free, so "a seven" and "seven" are correct, "seven or one" is
  not).
- **WER**: ``jiwer`` word error rate (substitutions + deletions + insertions over reference words, pooled over the
  corpus) of ``words(hypothesis)`` against ``words(reference)``; also the sentence exact-match rate.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from teal_jax.data.templates import DIGITS

_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    """Lowercase word tokens of ``text``; a lone numeral 0-9 becomes its digit word."""
    out = []
    for w in _WORD.findall(str(text).lower()):
        out.append(DIGITS[int(w)] if len(w) == 1 and w.isdigit() else w)
    return out


def digit_words(text: str) -> set[str]:
    """The digit words named in ``text``."""
    return {w for w in words(text) if w in DIGITS}


def caption_correct(caption: str, label: int) -> bool:
    """True iff ``caption`` names exactly one digit, the right one (see module docstring)."""
    return digit_words(caption) == {DIGITS[int(label)]}


def check_labels(labels, n: int, what: str) -> np.ndarray:
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"{what}: {n} examples but {y.shape[0]} labels")
    if np.any((y < 0) | (y > 9)):
        raise ValueError(f"{what}: labels must be digits 0..9, got {sorted(set(y.tolist()))[:10]}")
    return y


def per_class_accuracy(labels: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    return {DIGITS[d]: float(np.mean(correct[labels == d])) for d in range(10) if np.any(labels == d)}


def confusion(labels: np.ndarray, predictions: np.ndarray) -> list[list[int]]:
    m = np.zeros((10, 10), np.int64)
    np.add.at(m, (labels, predictions), 1)
    return m.tolist()


def spread(labels: np.ndarray, k: int) -> np.ndarray:
    """Indices of at most ``k`` examples taken round-robin over the labels (first of each label, then second, ...),
    sorted: the samples written as files cover every asked digit even when the prompts are digit-major."""
    y = np.asarray(labels).reshape(-1)
    rank = np.zeros(len(y), np.int64)  # how many earlier examples share the label
    for d in np.unique(y):
        idx = np.nonzero(y == d)[0]
        rank[idx] = np.arange(len(idx))
    order = np.lexsort((np.arange(len(y)), rank))
    return np.sort(order[: max(0, int(k))])


def write_tsv(path: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("\t".join(header) + "\n")
        for r in rows:
            f.write("\t".join(str(v).replace("\t", " ").replace("\n", " ") for v in r) + "\n")



def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, Any]:
    """Corpus WER with jiwer over :func:`words`-normalised texts -> {'wer', 'substitutions', 'deletions',
    'insertions', 'reference_words', 'exact_match', 'n'}. An empty reference is an error (WER is undefined)."""
    import jiwer

    refs, hyps = list(references), list(hypotheses)
    if len(refs) != len(hyps):
        raise ValueError(f"word_error_rate: {len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise ValueError("word_error_rate: no references")
    refs = [" ".join(words(r)) for r in refs]
    hyps = [" ".join(words(h)) for h in hyps]
    empty = [i for i, r in enumerate(refs) if not r]
    if empty:
        raise ValueError(f"word_error_rate: references {empty[:5]} have no words")
    out = jiwer.process_words(refs, hyps)
    n_ref = out.substitutions + out.deletions + out.hits
    return {"wer": float(out.wer), "substitutions": int(out.substitutions), "deletions": int(out.deletions),
            "insertions": int(out.insertions), "reference_words": int(n_ref),
            "exact_match": float(np.mean([r == h for r, h in zip(refs, hyps, strict=True)])), "n": len(refs)}

