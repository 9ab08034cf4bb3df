"""Packing properties for both methods: nothing lost or duplicated, positions restart, padding masked, long
documents split, per-token weights and extra features carried; exact resumption of the packed stream; the draw packer
of the TEAL task streams."""

import json

import grain
import numpy as np
import pytest

from teal_jax.data.packing import pack_dataset, pack_drawn_examples, pack_examples, unpack_row

SEQ = 16


def _docs(n=40, seed=0, max_len=45):
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        length = int(rng.integers(1, max_len))  # some longer than SEQ: they must be split
        docs.append({
            "tokens": rng.integers(4, 1000, length).astype(np.int32),
            "loss_mask": rng.integers(0, 3, length).astype(np.float32) / 2,  # weights 0, 0.5, 1
            "modality": np.full(length, i % 3 + 1, np.int32),
        })
    return docs


def _rows(out):
    return [{k: v[r] for k, v in out.items()} for r in range(len(out["tokens"]))]


def _check_row_invariants(row):
    seg, pos = row["segment_ids"], row["positions"]
    assert row["tokens"].dtype == np.int32 and seg.dtype == np.int32 and pos.dtype == np.int32
    assert row["loss_mask"].dtype == np.float32
    real = seg > 0
    # Padding only at the end of a row, and fully neutral.
    assert not np.any(real[1:] & ~real[:-1])
    assert np.all(row["tokens"][~real] == 0) and np.all(row["loss_mask"][~real] == 0)
    assert np.all(pos[~real] == 0) and np.all(row["modality"][~real] == 0)
    # Segment ids count 1, 2, ... without gaps; positions restart at 0 and count up inside each segment.
    ids = seg[real]
    assert ids[0] == 1 and np.all(np.diff(ids) >= 0) and np.all(np.diff(ids) <= 1)
    for s in np.unique(ids):
        assert np.array_equal(pos[seg == s], np.arange(np.sum(seg == s)))


def test_concat_loses_and_duplicates_nothing_and_keeps_order():
    docs = _docs()
    out = pack_examples(docs, SEQ, method="concat", extra_features=("modality",))
    assert set(out) == {"tokens", "segment_ids", "positions", "loss_mask", "modality"}
    assert out["tokens"].shape[1] == SEQ
    rows = _rows(out)
    for row in rows:
        _check_row_invariants(row)
    # Only the last row of a finite stream may have padding.
    assert all(np.all(r["segment_ids"] > 0) for r in rows[:-1])
    pieces = [seg for row in rows for seg in unpack_row(row)]
    for key in ("tokens", "loss_mask", "modality"):
        assert np.array_equal(np.concatenate([p[key] for p in pieces]), np.concatenate([d[key] for d in docs])), key
    # Every piece lies inside one document: pieces tile each document in order.
    it = iter(pieces)
    for doc in docs:
        covered = 0
        while covered < len(doc["tokens"]):
            piece = next(it)
            n = len(piece["tokens"])
            assert np.array_equal(piece["tokens"], doc["tokens"][covered : covered + n])
            assert np.all(piece["modality"] == doc["modality"][0])
            covered += n
        assert covered == len(doc["tokens"])
    assert next(it, None) is None


def test_first_fit_keeps_documents_whole_unless_longer_than_a_row():
    docs = _docs(seed=1)
    out = pack_examples(docs, SEQ, method="first_fit", extra_features=("modality",), num_bins=4, seed=3)
    rows = _rows(out)
    for row in rows:
        _check_row_invariants(row)
    got = sorted(tuple(p["tokens"].tolist()) + tuple(p["loss_mask"].tolist()) for row in rows
                 for p in unpack_row(row))
    # Expected pieces: each document cut into consecutive SEQ-long chunks (the last one shorter).
    want = sorted(tuple(d["tokens"][s : s + SEQ].tolist()) + tuple(d["loss_mask"][s : s + SEQ].tolist())
                  for d in docs for s in range(0, len(d["tokens"]), SEQ))
    assert got == want
    assert any(len(d["tokens"]) > SEQ for d in docs)  # the split path was exercised
    assert sum(int(np.sum(r["segment_ids"] > 0)) for r in rows) == sum(len(d["tokens"]) for d in docs)


def test_loss_mask_defaults_to_ones_and_empty_docs_are_skipped():
    out = pack_examples([{"tokens": [5, 6, 7]}, {"tokens": []}, {"tokens": [8, 9]}], 8)
    assert out["tokens"].tolist() == [[5, 6, 7, 8, 9, 0, 0, 0]]
    assert out["segment_ids"].tolist() == [[1, 1, 1, 2, 2, 0, 0, 0]]
    assert out["positions"].tolist() == [[0, 1, 2, 0, 1, 0, 0, 0]]
    assert out["loss_mask"].tolist() == [[1, 1, 1, 1, 1, 0, 0, 0]]


def test_bad_elements_are_clear_errors():
    with pytest.raises(ValueError, match=r"'loss_mask' has shape \(2,\), 'tokens' has \(3,\)"):
        pack_examples([{"tokens": [1, 2, 3], "loss_mask": [1.0, 0.0]}], 8)
    with pytest.raises(ValueError, match=r"element has no 'tokens'"):
        pack_examples([{"ids": [1]}], 8)
    with pytest.raises(ValueError, match=r"element has no 'modality'"):
        pack_examples([{"tokens": [1]}], 8, extra_features=("modality",))
    with pytest.raises(ValueError, match="packing method 'greedy'"):
        pack_examples([{"tokens": [1]}], 8, method="greedy")
    with pytest.raises(ValueError, match="needs more than max_pieces=2"):
        pack_examples([{"tokens": list(range(40))}], 8, method="first_fit", max_pieces=2)


@pytest.mark.parametrize("method", ["concat", "first_fit"])
def test_packed_stream_resumes_exactly(method):
    docs = _docs(n=25, seed=2)

    def make():
        ds = grain.MapDataset.source(docs).shuffle(seed=7).repeat(None).to_iter_dataset()
        return iter(pack_dataset(ds, SEQ, method=method, num_bins=3, seed=1).batch(4))

    it = make()
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # must survive JSON (as in a checkpoint)
    expected = [next(it) for _ in range(6)]
    resumed = make()
    resumed.set_state(state)
    for a, b in zip(expected, [next(resumed) for _ in range(6)], strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_pack_drawn_examples_places_whole_draws_and_closes_a_row_after_max_tries():
    """Rows take draws left to right; a draw that does not fit is dropped and counts as a miss; a row closes when
    full or after max_tries misses; 'example' weights make every placed example's weights sum to 1."""
    lengths = iter([5, 6, 4, 3, 9, 2, 7, 1, 8, 8, 8, 8, 8, 8])
    drawn = []

    def draw():
        n = next(lengths)
        drawn.append(n)
        return list(range(10, 10 + n)), [0.0] + [1.0] * (n - 1), {"n": n}

    out, placed = pack_drawn_examples(draw, 2, 12, max_tries=2, example_weights=True)
    # row 0: 5 + 6 (11), 4 misses, 3 misses -> closed; row 1: 9 + 2 (11), 7 misses, 1 fits (12) -> full
    assert drawn == [5, 6, 4, 3, 9, 2, 7, 1]
    assert [(p["row"], p["segment"], p["n"]) for p in placed] == [(0, 1, 5), (0, 2, 6), (1, 1, 9), (1, 2, 2),
                                                                    (1, 3, 1)]
    assert out["segment_ids"][0].tolist() == [1] * 5 + [2] * 6 + [0]
    assert out["positions"][1].tolist() == list(range(9)) + [0, 1, 0]
    for key in ("tokens", "loss_mask", "loss_weight"):
        assert out[key][0, 11] == 0  # padding
    for p in placed:
        sel = out["segment_ids"][p["row"]] == p["segment"]
        np.testing.assert_allclose(out["loss_weight"][p["row"], sel].sum(), 1.0 if p["n"] > 1 else 0.0)
        np.testing.assert_array_equal(out["loss_weight"][p["row"], sel], out["loss_mask"][p["row"], sel] /
                                      max(1.0, out["loss_mask"][p["row"], sel].sum()))
    one, _ = pack_drawn_examples(lambda: ([7, 7, 7], [1.0] * 3, {}), 1, 8, max_tries=1)
    assert one["segment_ids"].tolist() == [[1, 1, 1, 2, 2, 2, 0, 0]] and "loss_weight" not in one
