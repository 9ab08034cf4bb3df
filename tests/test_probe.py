"""teal_jax/evaluate/probe.py: one-hot code features and the linear probe (scikit-learn's logistic regression)."""

import numpy as np
import pytest

from teal_jax.evaluate import probe


def test_code_features_are_one_hot_per_position():
    codes = np.asarray([[0, 2], [1, 1]])
    x = probe.code_features(codes, 3).toarray()
    np.testing.assert_array_equal(x, [[1, 0, 0, 0, 0, 1], [0, 1, 0, 0, 1, 0]])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        probe.code_features(np.asarray([[3]]), 3)
    with pytest.raises(ValueError, match="integer"):
        probe.code_features(np.zeros((2, 2), np.float32), 3)


def test_probe_reads_a_label_where_there_is_one_and_not_where_there_is_none():
    """A code at one position equals the label: accuracy 1. Codes independent of the label: about chance (10
    classes, 400 held-out records: within 0.1 of the majority share)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 1400)
    codes = rng.integers(0, 16, (1400, 6))
    informative = codes.copy()
    informative[:, 3] = y
    recs = lambda c: [{"codes": c[i], "label": y[i]} for i in range(len(y))]  # noqa: E731
    good = probe.probe_records(recs(informative)[:1000], recs(informative)[1000:], num_codes=16)
    assert good["accuracy"] == 1.0 and good["n_train"] == 1000 and good["n_test"] == 400
    noise = probe.probe_records(recs(codes)[:1000], recs(codes)[1000:], num_codes=16)
    assert abs(noise["accuracy"] - noise["chance"]) < 0.1
    feats = rng.normal(size=(1400, 10, 2)).astype(np.float32)
    feats[np.arange(1400), y, 0] += 4.0  # continuous: the label is which position's first feature is high
    dense = probe.probe_records(recs(feats)[:1000], recs(feats)[1000:])
    assert dense["accuracy"] > 0.95


def test_unlabelled_records_are_left_out_and_levels_are_cut():
    rng = np.random.default_rng(1)
    y = np.tile(np.arange(4), 50)
    codes = rng.integers(0, 8, (200, 5, 3))
    codes[:, 2, 0] = y  # the label sits in level 0; levels 1, 2 are noise
    labels = np.where(np.arange(200) % 10 == 0, -1, y)
    recs = [{"codes": codes[i], "label": labels[i]} for i in range(200)]
    out = probe.probe_records(recs[:150], recs[150:], num_codes=8, keep_levels=1)
    assert out["accuracy"] == 1.0 and out["n_train"] == 135 and out["n_test"] == 45
    with pytest.raises(ValueError, match="one class"):
        probe.linear_probe(np.zeros((3, 2)), np.zeros(3, int), np.zeros((1, 2)), np.zeros(1, int))
