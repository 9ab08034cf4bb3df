"""Pixels: the one conversion rule between image layouts, and resizing (numpy + Pillow, no I/O in models).

* :func:`convert_channels`: ``[H, W]`` / ``[H, W, 1|3|4]`` -> ``[H, W, 1|3]``; RGBA is composited over black,
  RGB -> gray is ITU-R 601 luma (Pillow's 'L'), gray -> RGB repeats.
* :func:`center_crop_resize`: central square crop, then bicubic resize.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def convert_channels(image: np.ndarray, channels: int, *, name: str = "image") -> np.ndarray:
    """uint8 ``[H, W]`` / ``[H, W, 1|3|4]`` -> ``[H, W, channels]`` (channels 1 or 3).

    RGB -> gray uses ITU-R 601 luma (Pillow's 'L'); gray -> RGB repeats; RGBA drops alpha (composited on black).
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{name}: expected [H, W] or [H, W, 1|3|4] pixels, got shape {img.shape}")
    if channels not in (1, 3):
        raise ValueError(f"channels={channels}: only 1 (grayscale) and 3 (RGB) models are supported")
    if img.shape[-1] == 4:
        alpha = img[..., 3:4].astype(np.float32) / 255.0
        img = np.round(img[..., :3].astype(np.float32) * alpha).astype(img.dtype)
    c = img.shape[-1]
    if c == channels:
        return img
    if channels == 3:  # gray -> RGB
        return np.repeat(img, 3, axis=-1)
    luma = img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114
    return np.round(luma)[..., None].astype(img.dtype) if img.dtype == np.uint8 else luma[..., None]


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
