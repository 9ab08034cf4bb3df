"""Pixels: the one conversion rule between image layouts, and resizing (numpy + Pillow, no I/O in models).

* :func:`mix_channels`: the rule itself, on ``[..., 1|3|4]`` float pixels (numpy or traced jax): RGBA is composited
  over black, RGB -> gray is ITU-R 601 luma (Pillow's 'L'), gray -> RGB repeats.
* :func:`convert_channels`: that rule for one uint8 ``[H, W]`` / ``[H, W, 1|3|4]`` image (rounded back to uint8).
* :func:`center_crop_resize`: central square crop, then bicubic resize.
* :func:`check_pixels`: the one check of an image array given to a tokenizer or model (dtype, finite, range).
* :func:`read_image`: an image file -> uint8 ``[H, W, 1|3|4]``, every Pillow mode converted by rule or rejected.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from PIL import Image, UnidentifiedImageError

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


def check_pixels(images, *, name: str = "images") -> None:
    """uint8 (any value) or float in [0, 1] with no NaN/Inf; anything else is a ValueError naming ``name``.
    Arrays already on a device (``jax.Array``) are trusted: checking them would force a transfer."""
    if not isinstance(images, np.ndarray):
        return
    if images.dtype == np.uint8:
        return
    if images.dtype.kind != "f":
        raise ValueError(f"{name}: pixels must be uint8 in [0, 255] or float in [0, 1], got dtype {images.dtype} "
                         "(convert 16-bit images with teal_jax.media.image.read_image or scale them yourself)")
    finite = np.isfinite(images)
    if not finite.all():
        raise ValueError(f"{name}: {int(images.size - np.count_nonzero(finite))} NaN/Inf pixel value(s)")
    if images.size:
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"{name}: float pixels must lie in [0, 1]; got values in [{lo:.3g}, {hi:.3g}]")


_TO_RGB = ("CMYK", "YCbCr", "LAB", "HSV", "RGBX")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def read_image(path) -> np.ndarray:
    """An image file -> uint8 ``[H, W, 1|3|4]`` (gray, RGB or RGBA): the one reader of every tokenizer and model.

    Modes: L / RGB / RGBA as stored; 1-bit -> L (0 or 255); LA -> RGBA (gray repeated; alpha kept for
    compositing); P (palette) -> RGBA when it has transparency, else RGB; CMYK / YCbCr / LAB / HSV -> RGB; 16-bit
    gray (I;16*, and 32-bit I holding 16-bit values) -> L scaled by 255/65535 (not clipped); 16-bit RGB(A) PNGs,
    which Pillow opens as 8-bit, arrive as RGB(A). Float (F) images and anything else are rejected by name; a
    missing, truncated or non-image file is a ValueError naming it.
    """
    name = str(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("L", "RGB", "RGBA"):
                arr = np.asarray(im)
            elif mode == "1":
                arr = np.asarray(im.convert("L"))
            elif mode in ("LA", "PA") or (mode == "P" and "transparency" in im.info):
                arr = np.asarray(im.convert("RGBA"))
            elif mode == "P" or mode in _TO_RGB:
                arr = np.asarray(im.convert("RGB"))
            elif mode in _SIXTEEN_BIT or mode == "I":
                raw = np.asarray(im).astype(np.int64)
                if raw.size and (raw.min() < 0 or raw.max() > 65535):
                    raise ValueError(f"{name}: {mode} image with values in [{raw.min()}, {raw.max()}], outside "
                                     "16-bit [0, 65535]")
                arr = np.round(raw * (255.0 / 65535.0)).astype(np.uint8)
            else:
                raise ValueError(f"{name}: image mode {mode!r} is not supported (float or unusual images: convert "
                                 "to 8-bit gray, RGB or RGBA first)")
    except FileNotFoundError:
        raise ValueError(f"{name}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{name}: not a readable image file ({e})") from None
    arr = np.asarray(arr, np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr
