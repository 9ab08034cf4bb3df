"""Digits tfds builder (array_record, PNG), the grain image pipeline, and the adapter for standard tfds datasets."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from teal_jax.data.digits import HELD_OUT, build_digits, digits_split_indices, upscale_digit
from teal_jax.data.image_pipeline import make_image_iterator, tfds_image_source
from teal_jax.media.image import center_crop_resize, convert_channels


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("digits"))
    builder = build_digits(d, image_size=16)
    return d, builder


def test_digits_splits_are_fixed_and_disjoint(digits):
    from sklearn.datasets import load_digits

    d, builder = digits
    assert builder.info.file_format.value == "array_record"
    test = tfds.data_source("digits_images/16px", split="test", data_dir=d)
    train = tfds.data_source("digits_images/16px", split="train", data_dir=d)
    assert len(test) == HELD_OUT and len(train) == 1797 - HELD_OUT
    test_idx = {int(test[i]["index"]) for i in range(len(test))}
    train_idx = {int(train[i]["index"]) for i in range(len(train))}
    assert not test_idx & train_idx and len(test_idx | train_idx) == 1797
    raw = load_digits()
    r = test[3]
    assert r["image"].shape == (16, 16, 1) and r["image"].dtype == np.uint8
    np.testing.assert_array_equal(r["image"][..., 0], upscale_digit(raw.images[r["index"]], 16))  # PNG is lossless
    assert r["label"] == raw.target[r["index"]]
    # the held-out set is the seeded permutation's head, whatever machine builds it
    assert test_idx == set(digits_split_indices()["test"].tolist())
    assert set(digits_split_indices()["test"].tolist()) == set(np.random.default_rng(0).permutation(1797)[:HELD_OUT])


def test_pipeline_batches_resume_and_host_shards(digits):
    d, _ = digits
    src = tfds.data_source("digits_images/16px", split="train", data_dir=d)
    it = make_image_iterator(src, batch_size=8, image_size=16, channels=1, train=True, seed=3)
    b = next(it)
    assert b["image"].shape == (8, 16, 16, 1) and b["image"].dtype == np.uint8 and b["label"].shape == (8,)
    state = it.get_state()
    nxt = [next(it)["image"] for _ in range(2)]
    it.set_state(state)
    for want in nxt:
        np.testing.assert_array_equal(next(it)["image"], want)
    # eval: one ordered pass; two hosts read disjoint halves
    test = tfds.data_source("digits_images/16px", split="test", data_dir=d)
    seen = []
    for p in range(2):
        ev = make_image_iterator(test, batch_size=16, image_size=16, channels=1, train=False, process_index=p,
                                 process_count=2)
        batches = list(ev)
        assert len(batches) == HELD_OUT // 2 // 16
        seen.append(np.concatenate([x["image"] for x in batches]).reshape(-1, 256))
    rows0 = {r.tobytes() for r in seen[0]}
    assert not any(r.tobytes() in rows0 for r in seen[1])
    with pytest.raises(ValueError, match="fewer than batch_size"):
        make_image_iterator(test, batch_size=512, image_size=16, channels=1, train=False)


def test_tfds_adapter_with_mock_data():
    with tfds.testing.mock_data(num_examples=12):
        src = tfds_image_source("cifar10", "train")
        it = make_image_iterator(src, batch_size=4, image_size=16, channels=3, train=True)
        b = next(it)
        assert b["image"].shape == (4, 16, 16, 3) and b["image"].dtype == np.uint8
        assert b["label"].dtype == np.int32 and ((b["label"] >= 0) & (b["label"] < 10)).all()
        gray = make_image_iterator(src, batch_size=4, image_size=8, channels=1, train=False)
        assert next(gray)["image"].shape == (4, 8, 8, 1)
        with pytest.raises(ValueError, match="no field 'jpeg'"):
            next(make_image_iterator(src, batch_size=4, image_size=8, channels=3, train=False, image_key="jpeg"))


def test_channel_conversion_and_resize():
    rgb = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    gray = convert_channels(rgb, 1)
    ref = np.round(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114)
    np.testing.assert_array_equal(gray[..., 0], ref.astype(np.uint8))
    np.testing.assert_array_equal(convert_channels(gray, 3), np.repeat(gray, 3, -1))
    rgba = np.concatenate([rgb, np.zeros((6, 10, 1), np.uint8)], -1)
    assert convert_channels(rgba, 3).max() == 0  # fully transparent over black
    out = center_crop_resize(rgb, 4)
    assert out.shape == (4, 4, 3)
    with pytest.raises(ValueError, match="shape"):
        convert_channels(np.zeros((4, 4, 2), np.uint8), 3)
