"""Unified vocabulary: layout, exact round trips (property-style, random codes), rejection of bad ids."""

import jax.numpy as jnp
import numpy as np
import pytest

from teal_jax import vocab as V


def _vocab(**kw):
    base = dict(text_size=1000, image_codebook_size=512, audio_codebook_size=64, audio_num_levels=4)
    base.update(kw)
    return V.UnifiedVocab(**base)


def test_layout_offsets_and_padding():
    v = _vocab()
    assert v.special_offset == 1000
    assert v.image_offset == 1000 + len(V.DEFAULT_SPECIALS)
    assert v.audio_offset == v.image_offset + 512
    assert v.used_size == v.audio_offset + 4 * 64
    assert v.size % 128 == 0 and v.used_size <= v.size < v.used_size + 128
    assert v.boi == 1000 and v.eoi == 1001 and v.boa == 1002 and v.eoa == 1003
    # Masks partition the id space.
    masks = np.stack([v.modality_mask(m) for m in (V.TEXT, V.SPECIAL, V.IMAGE, V.AUDIO, V.PADDING)])
    np.testing.assert_array_equal(masks.sum(0), np.ones(v.size))
    assert masks[V.PADDING].sum() == v.size - v.used_size
    fl = _vocab(audio_scheme="first_levels", audio_keep_levels=2)
    assert fl.used_size == fl.audio_offset + 2 * 64


@pytest.mark.parametrize("seed", range(5))
def test_image_round_trip_random(seed):
    rng = np.random.default_rng(seed)
    v = _vocab(image_codebook_size=int(rng.integers(1, 3000)), text_size=int(rng.integers(1, 5000)))
    h, w = (int(x) for x in rng.integers(1, 9, 2))
    codes = rng.integers(0, v.image_codebook_size, (3, h, w))
    ids = v.image_to_unified(codes)
    assert ids.shape == (3, h * w) and ids.dtype == np.int32
    assert (v.modality_of(ids) == V.IMAGE).all()
    np.testing.assert_array_equal(ids[1], codes[1].reshape(-1) + v.image_offset)  # row-major
    np.testing.assert_array_equal(v.unified_to_image(ids, h, w), codes)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("scheme", ["interleave", "first_levels"])
def test_audio_round_trip_random(seed, scheme):
    rng = np.random.default_rng(seed)
    L = int(rng.integers(1, 6))
    keep = int(rng.integers(1, L + 1))
    v = _vocab(audio_codebook_size=int(rng.integers(2, 300)), audio_num_levels=L, audio_scheme=scheme,
               audio_keep_levels=keep)
    n = L if scheme == "interleave" else keep
    frames = int(rng.integers(1, 20))
    codes = rng.integers(0, v.audio_codebook_size, (frames, L))
    ids = v.audio_to_unified(codes)
    assert ids.shape == (frames * n,)
    # Frame-major order: position t holds level t % n of frame t // n, in its own id range.
    t = np.arange(frames * n)
    np.testing.assert_array_equal(v.audio_level_of(ids), t % n)
    np.testing.assert_array_equal(ids, v.audio_offset + (t % n) * v.audio_codebook_size + codes[t // n, t % n])
    np.testing.assert_array_equal(v.unified_to_audio(ids), codes[:, :n])
    assert (v.modality_of(ids) == V.AUDIO).all()
    # Batched too.
    batch = rng.integers(0, v.audio_codebook_size, (2, frames, L))
    np.testing.assert_array_equal(v.unified_to_audio(v.audio_to_unified(batch)), batch[..., :n])


def test_modality_of_matches_jax_and_ranges():
    v = _vocab()
    ids = np.arange(v.size)
    got = v.modality_of(ids)
    np.testing.assert_array_equal(np.asarray(v.modality_of_jax(jnp.asarray(ids))), got)
    for m, (lo, hi) in v.ranges().items():
        assert (got[lo:hi] == m).all()


def test_rejects_out_of_range():
    v = _vocab()
    with pytest.raises(ValueError, match="outside"):
        v.image_to_unified(np.array([[0, 512]]))
    with pytest.raises(ValueError, match="outside"):
        v.image_to_unified(np.array([[-1, 0]]))
    with pytest.raises(ValueError, match="image id range"):
        v.unified_to_image(np.array([5, v.image_offset]), 1, 2)
    with pytest.raises(ValueError, match="expected"):
        v.unified_to_image(np.arange(3) + v.image_offset, 2, 2)
    with pytest.raises(ValueError, match="outside"):
        v.modality_of(np.array([v.size]))
    with pytest.raises(ValueError, match="integer"):
        v.modality_of(np.array([1.0]))
    with pytest.raises(ValueError, match="needs vocab.audio_num_levels"):
        v.audio_to_unified(np.zeros((3, 2), int))
    ids = v.audio_to_unified(np.zeros((3, 4), int))
    with pytest.raises(ValueError, match="level t % kept_levels"):
        v.unified_to_audio(ids[1:5])  # starts at level 1: wrong level order
    with pytest.raises(ValueError, match="multiple"):
        v.unified_to_audio(ids[:5])
    with pytest.raises(ValueError, match="audio_scheme"):
        _vocab(audio_scheme="bogus")
    with pytest.raises(ValueError, match="audio_keep_levels"):
        _vocab(audio_scheme="first_levels", audio_keep_levels=5)
    with pytest.raises(ValueError, match="lacks"):
        _vocab(specials=("<boi>", "<eoi>"))
    with pytest.raises(ValueError, match="unknown special"):
        v.special_id("<nope>")
    with pytest.raises(ValueError, match="unknown fields"):
        V.UnifiedVocab.from_config({"text_size": 3, "image_codebook_size": 2, "bogus": 1})
