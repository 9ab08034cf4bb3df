"""Samples a reader can judge by eye: image grids (one row per asked digit, frames coloured by the judge) and
spectrograms written beside generated speech."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from teal_jax.data.templates import DIGITS
from teal_jax.evaluate.scoring import check_labels

GRID_RIGHT, GRID_WRONG, GRID_BLANK = (40, 170, 60), (210, 40, 40), (255, 255, 255)


def image_grid(images, labels, predictions=None, *, pad: int = 2) -> tuple[np.ndarray, list[int], list[int]]:
    """Images in one row per asked digit (rows in digit order, only the digits asked; within a row in the order
    given) -> (uint8 RGB mosaic ``[rows * (H + 2 pad), columns * (W + 2 pad), 3]``, the row digits, how many of each
    row the classifier judged right). Each image sits in a ``pad``-pixel frame: green where ``predictions`` equals the
    label, red where not, white without predictions; cells past a row's last image are white. ``columns`` is the
    largest number of images asked for one digit."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[0] == 0 or x.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image_grid: images must be a non-empty [n, H, W(, 1|3|4)] batch, got shape {x.shape}")
    if x.dtype != np.uint8:
        x = np.clip(np.round(np.asarray(x, np.float64) * 255), 0, 255).astype(np.uint8)
    x = np.repeat(x, 3, -1) if x.shape[-1] == 1 else x[..., :3]
    y = check_labels(labels, x.shape[0], "image_grid")
    p = None if predictions is None else check_labels(predictions, x.shape[0], "image_grid predictions")
    rows = sorted(set(y.tolist()))
    members = [np.nonzero(y == d)[0] for d in rows]
    cols = max(len(m) for m in members)
    n, h, w, _ = x.shape
    ch, cw = h + 2 * pad, w + 2 * pad
    mosaic = np.full((len(rows) * ch, cols * cw, 3), 255, np.uint8)
    right = []
    for r, idx in enumerate(members):
        right.append(int(0 if p is None else np.sum(p[idx] == y[idx])))
        for c, i in enumerate(idx):
            frame = GRID_BLANK if p is None else (GRID_RIGHT if p[i] == y[i] else GRID_WRONG)
            cell = mosaic[r * ch : (r + 1) * ch, c * cw : (c + 1) * cw]
            cell[:] = frame
            cell[pad : pad + h, pad : pad + w] = x[i]
    return mosaic, rows, right


def write_image_grid(path: str, images, labels, predictions=None, *, title: str = "") -> str:
    """:func:`image_grid` as a PNG with each row labelled by its digit (and ``k/n judged right`` given
    predictions); matplotlib Agg, the mosaic drawn at its own pixel size. -> ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    mosaic, rows, right = image_grid(images, labels, predictions)
    counts = np.bincount(np.asarray(labels).astype(np.int64).reshape(-1), minlength=10)
    dpi, margin_w, margin_h = 100, 1.6, 0.5
    fig = plt.figure(figsize=(mosaic.shape[1] / dpi + margin_w, mosaic.shape[0] / dpi + margin_h), dpi=dpi)
    ax = fig.add_axes((margin_w / fig.get_figwidth(), 0.05 / fig.get_figheight(),
                       mosaic.shape[1] / dpi / fig.get_figwidth(), mosaic.shape[0] / dpi / fig.get_figheight()))
    ax.imshow(mosaic, interpolation="nearest")
    ch = mosaic.shape[0] / len(rows)
    ax.set_yticks([(r + 0.5) * ch for r in range(len(rows))])
    ax.set_yticklabels([DIGITS[d] + ("" if predictions is None else f"  {k}/{counts[d]}")
                        for d, k in zip(rows, right, strict=True)], fontsize=8)
    ax.set_xticks([])
    if title:
        fig.suptitle(title, fontsize=8, x=0.01, ha="left", y=1 - 0.08 / fig.get_figheight(), va="top")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def spectrogram(wave, sample_rate: int, *, floor_db: float = -80.0) -> np.ndarray:
    """Log-magnitude STFT of one waveform -> float64 ``[n_fft // 2 + 1, frames]`` in dB relative to its maximum,
    floored at ``floor_db`` (row 0 = 0 Hz). ``evaluate.audio.stft_magnitude`` (centred Hann frames, frames =
    1 + samples // hop) with ``n_fft`` = the power of two nearest 32 ms and hop ``n_fft // 8``; a clip shorter than
    one window is zero-padded to it."""
    from teal_jax.evaluate.audio import stft_magnitude

    x = np.asarray(wave, np.float64).reshape(-1)
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError("spectrogram: the waveform is empty or has NaN/Inf values")
    if sample_rate <= 0:
        raise ValueError(f"spectrogram: sample_rate={sample_rate} must be > 0")
    n_fft = 2 ** max(3, int(round(np.log2(0.032 * sample_rate))))
    hop = n_fft // 8
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    mag = np.asarray(stft_magnitude(jnp.asarray(x[None], jnp.float32), n_fft, hop)[0], np.float64).T  # [freq, t]
    db = 20.0 * np.log10(mag)
    return np.maximum(db - db.max(), floor_db)


def spectrogram_image(wave, sample_rate: int, *, floor_db: float = -80.0) -> np.ndarray:
    """:func:`spectrogram` as uint8 RGB ``[n_fft // 2 + 1, frames, 3]`` (magma colour map, low frequencies at the
    bottom)."""
    from matplotlib import colormaps

    db = spectrogram(wave, sample_rate, floor_db=floor_db)
    rgba = colormaps["magma"](np.clip((db - floor_db) / -floor_db, 0.0, 1.0)[::-1])
    return np.round(rgba[..., :3] * 255).astype(np.uint8)


def write_spectrogram(path: str, wave, sample_rate: int) -> str:
    """Writes :func:`spectrogram_image` of ``wave`` as a PNG (one pixel per STFT bin and frame) -> ``path``."""
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(spectrogram_image(wave, sample_rate)).save(path, "PNG")
    return path

