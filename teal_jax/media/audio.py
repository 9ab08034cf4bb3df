"""WAV I/O with the standard library's ``wave`` module, and band-limited resampling (numpy only, no I/O in models).

* :func:`read_wav` -> ``(float32 [samples, channels] in [-1, 1], sample_rate)``; 8/16/24/32-bit PCM.
* :func:`write_wav`: float in [-1, 1] (clipped) or int16 -> 16-bit PCM.
* :func:`resample`: polyphase-free windowed-sinc resampling by the rational factor ``new/old`` (Kaiser window,
  cut-off at the lower Nyquist frequency), exact for any integer rates.

Errors name the file and the problem (missing, truncated, not a RIFF/WAVE file, unsupported sample width).
"""

from __future__ import annotations

import math
import os
import wave

import numpy as np


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Reads a PCM WAV file -> ``(float32 [samples, channels] in [-1, 1], sample_rate)``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"{path}: audio file not found")
    try:
        with wave.open(path, "rb") as f:
            channels, width, rate, n = f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()
            raw = f.readframes(n)
    except (wave.Error, EOFError) as e:
        raise ValueError(f"{path}: not a readable PCM WAV file ({e})") from e
    if len(raw) != n * channels * width:
        raise ValueError(
            f"{path}: truncated WAV file: header announces {n} frames, the data chunk holds "
            f"{len(raw) // max(channels * width, 1)}"
        )
    if width == 1:  # unsigned 8-bit
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / float(1 << 23)
    elif width == 4:
        x = np.frombuffer(raw, "<i4").astype(np.float32) / float(1 << 31)
    else:
        raise ValueError(f"{path}: unsupported sample width of {width} bytes")
    return x.reshape(-1, channels), rate


_INT_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): float(1 << 31)}


def to_mono_float(a, *, name: str = "audio", channels_last: bool = True) -> np.ndarray:
    """The one rule for waveform arrays: ``[samples]`` or ``[samples, channels]`` (``[channels, samples]`` with
    ``channels_last=False``) -> float32 mono ``[samples]`` in [-1, 1].

    int16 / int32 PCM are scaled by 1/32768 and 1/2^31, uint8 PCM is centred ((x - 128) / 128), float must be finite
    and within [-1, 1]; channels are averaged after scaling. Anything else (other dtypes, shapes, empty audio,
    NaN/Inf samples, float peaks above 1) is a ValueError naming ``name``.
    """
    a = np.asarray(a)
    if a.ndim not in (1, 2):
        raise ValueError(f"{name}: expected [samples] or [samples, channels] audio, got shape {a.shape}")
    if a.dtype in _INT_SCALE:
        x = a.astype(np.float32) / _INT_SCALE[a.dtype]
    elif a.dtype == np.uint8:
        x = (a.astype(np.float32) - 128.0) / 128.0
    elif a.dtype.kind == "f":
        x = a.astype(np.float32)
        finite = np.isfinite(x)
        if not finite.all():
            raise ValueError(f"{name}: {int(x.size - np.count_nonzero(finite))} NaN/Inf sample(s)")
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        if peak > 1.0 + 1e-3:
            raise ValueError(f"{name}: float audio must lie in [-1, 1], peak is {peak:.3g}")
    else:
        raise ValueError(f"{name}: audio must be int16, int32, uint8 or float PCM, got dtype {a.dtype}")
    if x.ndim == 2:
        x = x.mean(axis=1 if channels_last else 0)
    if x.size == 0:
        raise ValueError(f"{name}: empty audio (0 samples)")
    return x


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> None:
    """Writes ``audio`` ``[samples]`` or ``[samples, channels]`` (float in [-1, 1] or int16) as 16-bit PCM."""
    a = np.asarray(audio)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"write_wav({path}): audio must be [samples] or [samples, channels], got {a.shape}")
    if a.dtype != np.int16:
        a = np.round(np.clip(np.nan_to_num(a.astype(np.float64)), -1.0, 1.0) * 32767.0).astype(np.int16)
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    with wave.open(os.fspath(path), "wb") as f:
        f.setnchannels(a.shape[1])
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(a.astype("<i2").tobytes())


def resample(x: np.ndarray, old_rate: int, new_rate: int, *, axis: int = -1, half_width: int = 16,
             beta: float = 8.0) -> np.ndarray:
    """Resamples ``x`` along ``axis`` from ``old_rate`` to ``new_rate`` Hz (float64 math, float32 out).

    Output sample j sits at input time ``t = j * old/new``; its value is ``sum_n x[n] h(t - n)`` with
    ``h(u) = c * sinc(c u) * kaiser(u)``, ``c = min(1, new/old)`` (the anti-alias cut-off when downsampling) and a
    Kaiser window of ``half_width / c`` input samples on each side. Output length ``ceil(len * new / old)``.
    """
    old_rate, new_rate = int(old_rate), int(new_rate)
    if old_rate <= 0 or new_rate <= 0:
        raise ValueError(f"resample: sample rates must be positive, got {old_rate} -> {new_rate}")
    x = np.asarray(x)
    if old_rate == new_rate:
        return x.astype(np.float32)
    g = math.gcd(old_rate, new_rate)
    up, down = new_rate // g, old_rate // g
    x = np.moveaxis(x.astype(np.float64), axis, -1)
    n_in = x.shape[-1]
    n_out = int(math.ceil(n_in * up / down))
    cutoff = min(1.0, up / down)
    width = int(math.ceil(half_width / cutoff))
    # The filter depends only on the output phase (j * down) mod up: compute one tap row per phase.
    phases = np.arange(up)
    offsets = np.arange(-width, width + 1)
    frac = (phases * down % up) / up  # fractional part of t for each phase
    u = offsets[None, :] - frac[:, None]  # distance n - t, [up, taps]
    window = np.kaiser(2 * width + 1, beta)  # approximate by tap index (distance within 1 sample of centre)
    taps = cutoff * np.sinc(cutoff * u) * window[None, :]
    taps /= taps.sum(axis=1, keepdims=True)  # unit DC gain per phase
    j = np.arange(n_out)
    base = (j * down) // up  # integer part of t
    idx = base[:, None] + offsets[None, :]  # [n_out, taps]
    valid = (idx >= 0) & (idx < n_in)
    gathered = x[..., np.clip(idx, 0, n_in - 1)] * valid  # zeros outside the signal
    y = np.einsum("...jt,jt->...j", gathered, taps[j % up])
    return np.moveaxis(y, -1, axis).astype(np.float32)
