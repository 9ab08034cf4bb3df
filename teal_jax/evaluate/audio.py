"""Audio metrics and spectral features (jax; traceable, differentiable where they are losses).

* :func:`stft_magnitude`: ``[batch, samples] -> [batch, frames, n_fft//2+1]``; centred frames (reflect padding),
  periodic Hann window; magnitude ``sqrt(re^2 + im^2 + eps)`` because ``jnp.abs`` of a complex value has a NaN
  gradient at 0.
* :func:`mel_filterbank`: HTK mel scale ``m = 2595 log10(1 + f/700)``, triangular filters on ``n_mels + 2`` equally
  spaced mel points, optional Slaney area normalisation (``2 / (f_hi - f_lo)``).
* :func:`log_mel`, :func:`mel_distance` (mean |log mel| difference, several scales), :func:`stft_distance`
  (multi-resolution spectral convergence + log-magnitude L1), :func:`si_snr` (scale-invariant SNR in dB),
  :func:`codebook_usage` (fraction of codes used per RVQ level).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np

from teal_jax.models.audio_layers import centered_stft

Array = jax.Array


def hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


@lru_cache(maxsize=64)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None,
                   slaney_norm: bool = True) -> np.ndarray:
    """float32 ``[n_fft//2 + 1, n_mels]`` triangular filters (see module docstring)."""
    f_max = sample_rate / 2 if f_max is None else f_max
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    pts = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lo, mid, hi = pts[:-2], pts[1:-1], pts[2:]
    up = (freqs[:, None] - lo[None]) / (mid - lo)[None]
    down = (hi[None] - freqs[:, None]) / (hi - mid)[None]
    fb = np.maximum(0.0, np.minimum(up, down))
    if slaney_norm:
        fb = fb * (2.0 / (hi - lo))[None]
    return fb.astype(np.float32)


def stft_magnitude(x: Array, n_fft: int, hop: int, eps: float = 1e-7) -> Array:
    """``x [batch, samples]`` -> ``[batch, frames, n_fft // 2 + 1]`` magnitudes, frames = 1 + samples // hop."""
    spec = centered_stft(x, n_fft, hop)  # torch.stft(center=True) framing, periodic Hann
    return jnp.sqrt(jnp.real(spec) ** 2 + jnp.imag(spec) ** 2 + eps)


def log_mel(x: Array, sample_rate: int, n_fft: int, hop: int, n_mels: int, floor: float = 1e-5) -> Array:
    """``x [batch, samples]`` -> ``log(max(mel, floor)) [batch, frames, n_mels]`` (magnitude, not power)."""
    fb = jnp.asarray(mel_filterbank(sample_rate, n_fft, n_mels))
    return jnp.log(jnp.maximum(stft_magnitude(x, n_fft, hop) @ fb, floor))


def mel_distance(x: Array, y: Array, sample_rate: int, scales: Sequence[int] = (256, 512, 1024),
                 n_mels: Sequence[int] | int = 64) -> Array:
    """Mean over scales of mean |log mel(x) - log mel(y)|; hop = n_fft // 4. ``x, y [batch, samples]``."""
    n_mels = [n_mels] * len(scales) if isinstance(n_mels, int) else list(n_mels)
    total = 0.0
    for n_fft, m in zip(scales, n_mels, strict=True):
        total = total + jnp.mean(jnp.abs(log_mel(x, sample_rate, n_fft, n_fft // 4, m)
                                         - log_mel(y, sample_rate, n_fft, n_fft // 4, m)))
    return total / len(scales)


def stft_distance(x: Array, y: Array, resolutions: Sequence[tuple[int, int]] = ((512, 128), (1024, 256), (256, 64))
                  ) -> Array:
    """Multi-resolution STFT distance (Yamamoto et al.): mean over (n_fft, hop) of spectral convergence
    ``||S_x - S_y||_F / ||S_x||_F`` + mean |log S_x - log S_y|. ``x`` is the reference."""
    total = 0.0
    for n_fft, hop in resolutions:
        sx, sy = stft_magnitude(x, n_fft, hop), stft_magnitude(y, n_fft, hop)
        sc = jnp.sqrt(jnp.sum((sx - sy) ** 2) + 1e-12) / jnp.sqrt(jnp.sum(sx**2) + 1e-12)  # eps: finite grad at x == y
        total = total + sc + jnp.mean(jnp.abs(jnp.log(sx) - jnp.log(sy)))
    return total / len(resolutions)


def si_snr(reference: Array, estimate: Array, mask: Array | None = None, eps: float = 1e-8) -> Array:
    """Scale-invariant SNR in dB per example: ``s = <e,r> r / ||r||^2``, ``10 log10(||s||^2 / ||e - s||^2)``
    after removing the means. ``[batch, samples]`` -> ``[batch]``; ``mask [batch, samples]`` selects samples."""
    r, e = reference.astype(jnp.float32), estimate.astype(jnp.float32)
    m = jnp.ones_like(r) if mask is None else mask.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(m, axis=1, keepdims=True), 1.0)
    r = (r - jnp.sum(r * m, axis=1, keepdims=True) / n) * m
    e = (e - jnp.sum(e * m, axis=1, keepdims=True) / n) * m
    s = jnp.sum(e * r, axis=1, keepdims=True) / (jnp.sum(r * r, axis=1, keepdims=True) + eps) * r
    return 10.0 * jnp.log10((jnp.sum(s * s, axis=1) + eps) / (jnp.sum((e - s) ** 2, axis=1) + eps))


def codebook_usage(codes: np.ndarray, codebook_size: int) -> np.ndarray:
    """float64 ``[levels]``: fraction of the ``codebook_size`` codes that occur at each level.
    ``codes int [..., levels]`` (host numpy; pass all held-out codes at once)."""
    c = np.asarray(codes).reshape(-1, np.shape(codes)[-1])
    return np.asarray([np.unique(c[:, l]).size / codebook_size for l in range(c.shape[1])], np.float64)
