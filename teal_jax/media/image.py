"""Pixels: the one conversion rule between image layouts, and resizing (numpy + Pillow, no I/O in models).

* :func:`mix_channels`: the rule itself, on ``[..., 1|3|4]`` float pixels (numpy or traced jax): RGBA is composited
  over black, RGB -> gray is ITU-R 601 luma (Pillow's 'L'), gray -> RGB repeats.
* :func:`convert_channels`: that rule for one uint8 ``[H, W]`` / ``[H, W, 1|3|4]`` image (rounded back to uint8).
* :func:`center_crop_resize`: central square crop, then bicubic resize.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from PIL import Image

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601


def mix_channels(x, channels: int, *, scale: float = 1.0):
    """``[..., 1|3|4]`` pixels in [0, ``scale``] -> ``[..., channels]`` (1 or 3), same array library (numpy, or jax
    under tracing). RGBA: colour times alpha / scale (composited over black); RGB -> gray: ITU-R 601 luma; gray ->
    RGB: repeated."""
    if channels not in (1, 3):
        raise ValueError(f"channels={channels}: only 1 (grayscale) and 3 (RGB) models are supported")
    if x.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected 1, 3 or 4 channels, got shape {x.shape}")
    xp = np if isinstance(x, np.ndarray) else jnp
    if x.shape[-1] == 4:
        x = x[..., :3] * (x[..., 3:] / scale)
    if x.shape[-1] == channels:
        return x
    if channels == 3:
        return xp.repeat(x, 3, axis=-1)
    return x[..., 0:1] * LUMA[0] + x[..., 1:2] * LUMA[1] + x[..., 2:3] * LUMA[2]


def convert_channels(image: np.ndarray, channels: int, *, name: str = "image") -> np.ndarray:
    """uint8 ``[H, W]`` / ``[H, W, 1|3|4]`` -> ``[H, W, channels]`` (channels 1 or 3).

    :func:`mix_channels` on the pixel values; uint8 results are rounded back to uint8.
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{name}: expected [H, W] or [H, W, 1|3|4] pixels, got shape {img.shape}")
    if channels not in (1, 3):
        raise ValueError(f"channels={channels}: only 1 (grayscale) and 3 (RGB) models are supported")
    if img.shape[-1] == channels:
        return img
    uint8 = img.dtype == np.uint8
    out = mix_channels(img.astype(np.float64) if uint8 else img, channels, scale=255.0 if uint8 else 1.0)
    return np.round(out).astype(np.uint8) if uint8 else out


def center_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[H, W, C]`` -> ``[size, size, C]``: central square crop, then bicubic resize (no-op if equal)."""
    h, w, c = image.shape
    if (h, w) == (size, size):
        return image
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = image[top : top + s, left : left + s]
    pil = Image.fromarray(crop[..., 0] if c == 1 else crop)
    out = np.asarray(pil.resize((size, size), Image.BICUBIC), np.uint8)
    return out[..., None] if c == 1 else out
