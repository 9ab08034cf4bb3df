"""The one pixel rule (teal_jax.media.image) against Pillow and a float64 reference, on numpy and under jax.jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from teal_jax.media.image import convert_channels, mix_channels


def _rgba(seed=0, shape=(5, 7)):
    return np.random.default_rng(seed).integers(0, 256, (*shape, 4), dtype=np.uint8)


def test_rgb_to_gray_matches_pillow_within_one_level():
    """Pillow's 'L' is ITU-R 601 luma in fixed point: at most one level away from the rounded float rule."""
    rgb = _rgba()[..., :3]
    ours = convert_channels(rgb, 1)[..., 0].astype(int)
    pil = np.asarray(Image.fromarray(rgb, "RGB").convert("L")).astype(int)
    assert np.abs(ours - pil).max() <= 1


def test_rgba_is_composited_over_black_not_dropped():
    rgba = _rgba(1)
    ref = np.round(rgba[..., :3].astype(np.float64) * (rgba[..., 3:].astype(np.float64) / 255.0))
    np.testing.assert_array_equal(convert_channels(rgba, 3), ref.astype(np.uint8))
    gray = np.round((ref / 1.0) @ np.array([0.299, 0.587, 0.114]))  # luma of the composited colour
    assert np.abs(convert_channels(rgba, 1)[..., 0].astype(int) - gray.astype(int)).max() <= 1
    transparent = rgba.copy()
    transparent[..., 3] = 0
    assert not convert_channels(transparent, 3).any()


def test_jax_path_equals_numpy_path():
    """The tokenizer's traced conversion (float in [0, 1]) and the data pipeline's (uint8) are one rule."""
    rgba = _rgba(2)
    x = rgba.astype(np.float32) / 255.0
    for channels in (1, 3):
        traced = jax.jit(lambda a, c=channels: mix_channels(a, c))(jnp.asarray(x))
        host = convert_channels(rgba, channels).astype(np.float32) / 255.0
        np.testing.assert_allclose(np.asarray(traced), host, atol=0.5 / 255 + 1e-6)


def test_gray_to_rgb_repeats_and_errors_name_the_problem():
    g = _rgba(3)[..., :1]
    np.testing.assert_array_equal(convert_channels(g, 3), np.repeat(g, 3, -1))
    with pytest.raises(ValueError, match=r"expected \[H, W\] or \[H, W, 1\|3\|4\] pixels"):
        convert_channels(np.zeros((4, 4, 2), np.uint8), 3)
    with pytest.raises(ValueError, match="channels=4: only 1"):
        convert_channels(np.zeros((4, 4, 3), np.uint8), 4)
