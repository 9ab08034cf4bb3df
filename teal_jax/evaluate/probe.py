"""Linear probes: how much of a label a condition's tokens carry, before any LM reads them.

A diagnostic of the input-tokenizer comparison (``teal_jax.demo_semantic``): when a frozen LM captions or transcribes
worse from one tokenization than from another, the probe tells whether the information is missing from the tokens
themselves (the probe fails too) or the LM does not extract it (the probe succeeds). Discrete codes are one-hot per
position (``[n, k]`` -> ``n * k`` sparse features: which code sits where), continuous features are flattened and
standardised; a multinomial logistic regression (scikit-learn, L2, ``C``) is fitted on the train records and scored
on the held-out ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def code_features(codes: np.ndarray, num_codes: int):
    """int ``[N, n]`` codes in [0, num_codes) -> scipy CSR ``[N, n * num_codes]`` one-hot per position."""
    from scipy import sparse

    c = np.asarray(codes)
    if c.ndim != 2 or c.dtype.kind not in "iu":
        raise ValueError(f"code_features: expected integer codes [N, n], got {c.dtype} {c.shape}")
    if c.size and (c.min() < 0 or c.max() >= num_codes):
        raise ValueError(f"code_features: codes must lie in [0, {num_codes}), got [{c.min()}, {c.max()}]")
    n_rows, n = c.shape
    cols = (np.arange(n)[None, :] * num_codes + c).reshape(-1)
    rows = np.repeat(np.arange(n_rows), n)
    return sparse.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(n_rows, n * num_codes))


def linear_probe(train_x, train_y: np.ndarray, test_x, test_y: np.ndarray, *, c: float = 1.0,
                 max_iter: int = 500, seed: int = 0) -> dict[str, Any]:
    """Held-out accuracy of a logistic regression from features (dense ``[N, D]`` or scipy sparse) to integer
    labels -> ``{'accuracy', 'chance' (the majority class share of the held-out labels), 'n_train', 'n_test'}``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    ytr, yte = np.asarray(train_y), np.asarray(test_y)
    if len(ytr) != train_x.shape[0] or len(yte) != test_x.shape[0]:
        raise ValueError(f"linear_probe: {train_x.shape[0]} / {test_x.shape[0]} feature rows but {len(ytr)} / "
                         f"{len(yte)} labels")
    if len(np.unique(ytr)) < 2:
        raise ValueError("linear_probe: the train labels hold one class only")
    if not hasattr(train_x, "tocsr"):  # dense continuous features: standardise with the train statistics
        scaler = StandardScaler().fit(train_x)
        train_x, test_x = scaler.transform(train_x), scaler.transform(test_x)
    clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
    clf.fit(train_x, ytr)
    acc = float((clf.predict(test_x) == yte).mean())
    _, counts = np.unique(yte, return_counts=True)
    return {"accuracy": acc, "chance": float(counts.max() / len(yte)), "n_train": int(len(ytr)),
            "n_test": int(len(yte))}


def probe_records(train: Sequence[dict[str, Any]], test: Sequence[dict[str, Any]], *, num_codes: int = 0,
                  max_train: int = 2000, seed: int = 0, keep_levels: int = 0) -> dict[str, Any]:
    """A probe over two splits of token records (``{'codes', 'label'}``; records with label < 0 are left out):
    ``num_codes > 0``: integer codes (one-hot), else continuous features. At most ``max_train`` train records (a
    seeded random subset) keep the fit fast."""

    def load(records, limit):
        idx = np.arange(len(records))
        if limit and len(idx) > limit:
            idx = np.sort(np.random.default_rng(seed).choice(idx, limit, replace=False))
        recs = [records[int(i)] for i in idx]
        recs = [r for r in recs if int(r["label"]) >= 0]
        x = np.stack([np.asarray(r["codes"]) for r in recs])
        if keep_levels:
            x = x[..., :keep_levels]
        x = x.reshape(len(x), x.shape[1], -1)
        return x, np.asarray([int(r["label"]) for r in recs])

    xtr, ytr = load(train, max_train)
    xte, yte = load(test, 0)
    if num_codes:
        ftr = code_features(xtr.reshape(len(xtr), -1), num_codes)
        fte = code_features(xte.reshape(len(xte), -1), num_codes)
    else:
        ftr, fte = xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1)
    return linear_probe(ftr, ytr, fte, yte, seed=seed)
