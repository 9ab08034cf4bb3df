"""Image reconstruction metrics (PSNR, SSIM), codebook statistics and a sample grid.

SSIM follows Wang et al. 2004 with the standard Gaussian window (11x11, sigma 1.5), K1 = 0.01, K2 = 0.03, over the
'valid' region (as tf.image.ssim / the reference MATLAB code), averaged over positions and channels::

    SSIM = ((2 mu_x mu_y + C1)(2 s_xy + C2)) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)),  Ci = (Ki L)^2

where mu, s^2, s_xy are Gaussian-weighted local means, variances and covariance and L is the data range.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

Array = jax.Array


def psnr(x: Array, y: Array, data_range: float = 1.0) -> Array:
    """Per-image PSNR in dB for ``[batch, H, W, C]`` images: ``10 log10(L^2 / mean((x - y)^2))``."""
    mse = jnp.mean((jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32)) ** 2, axis=(1, 2, 3))
    return 10.0 * jnp.log10(data_range**2 / jnp.maximum(mse, 1e-10))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1-D Gaussian taps (the 2-D window is their outer product)."""
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: Array, y: Array, data_range: float = 1.0, size: int = 11, sigma: float = 1.5) -> Array:
    """Per-image SSIM for ``[batch, H, W, C]`` images (H, W >= ``size``); see the module docstring."""
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    if x.shape[1] < size or x.shape[2] < size:
        raise ValueError(f"SSIM needs images of at least {size}x{size}, got {x.shape[1:3]}")
    g = jnp.asarray(gaussian_window(size, sigma), jnp.float32)
    c = x.shape[-1]

    def blur(a):  # separable 'valid' Gaussian filter, per channel (depthwise)
        a = jax.lax.conv_general_dilated(
            a, jnp.tile(g.reshape(size, 1, 1, 1), (1, 1, 1, c)), (1, 1), "VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c,
            precision=jax.lax.Precision.HIGHEST)
        return jax.lax.conv_general_dilated(
            a, jnp.tile(g.reshape(1, size, 1, 1), (1, 1, 1, c)), (1, 1), "VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c,
            precision=jax.lax.Precision.HIGHEST)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx**2
    syy = blur(y * y) - my**2
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return jnp.mean(s, axis=(1, 2, 3))


def codebook_stats(counts: np.ndarray) -> dict[str, float]:
    """``counts [K]`` (how often each code occurred over a split) -> usage fraction and perplexity exp(H)."""
    counts = np.asarray(counts, np.float64)
    p = counts / max(counts.sum(), 1.0)
    nz = p[p > 0]
    return {"usage": float(np.mean(counts > 0)), "perplexity": float(np.exp(-np.sum(nz * np.log(nz))))}


def to_uint8(images: Array | np.ndarray) -> np.ndarray:
    """float images in [-1, 1] -> uint8 [0, 255] (rounded, clipped)."""
    x = np.asarray(images, np.float32)
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def save_grid_png(originals: np.ndarray, reconstructions: np.ndarray, path: str, max_images: int = 16) -> str:
    """Writes a 2-row grid (originals above reconstructions) of uint8 ``[batch, H, W, C]`` images to ``path``."""
    a = np.asarray(originals)[:max_images]
    b = np.asarray(reconstructions)[:max_images]
    if a.shape != b.shape or a.ndim != 4 or a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"grid needs two uint8 [batch, H, W, C] arrays of one shape, got {a.shape}/{a.dtype} "
                         f"and {b.shape}/{b.dtype}")
    n, h, w, c = a.shape
    pad = 2
    grid = np.full((2 * h + 3 * pad, n * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        x0 = pad + i * (w + pad)
        grid[pad : pad + h, x0 : x0 + w] = a[i]
        grid[2 * pad + h : 2 * pad + 2 * h, x0 : x0 + w] = b[i]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)
    return path
