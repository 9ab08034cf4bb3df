"""Waveform discriminators for codec training (pure Flax linen) and the GAN losses.

* :class:`MultiScaleSTFTDiscriminator` (EnCodec): for each ``n_fft`` a 2-D conv net over the complex STFT
  (real and imaginary parts as two channels, ``[batch, frames, freq, 2]``), dilated in time, strided in frequency.
* :class:`MultiPeriodDiscriminator` (HiFi-GAN): for each period p the waveform is folded to ``[batch, T/p, p, 1]``
  and convolved along time only.

Every discriminator returns a list (one entry per sub-discriminator) of ``(logits, [feature maps])``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from teal_jax.models.audio_layers import centered_stft

Array = jax.Array
_CONV_NAMES = (None, None, "conv_in", "conv_out")


def _conv(features, kernel, strides=(1, 1), dilation=(1, 1), name=None, dtype=jnp.float32):
    return nn.Conv(features, kernel, strides, padding="SAME", kernel_dilation=dilation, dtype=dtype,
                   kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), _CONV_NAMES), name=name)


def complex_stft(x: Array, n_fft: int, hop: int) -> Array:
    """``[batch, samples]`` -> float32 ``[batch, frames, n_fft//2+1, 2]`` (real, imaginary), Hann window."""
    spec = centered_stft(x, n_fft, hop)
    return jnp.stack([jnp.real(spec), jnp.imag(spec)], axis=-1)


class STFTDiscriminator(nn.Module):
    n_fft: int
    channels: int = 32
    dilations: Sequence[int] = (1, 2, 4)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, list[Array]]:
        """``x [batch, samples]`` -> (logits ``[batch, frames, freq', 1]``, feature maps)."""
        h = complex_stft(x, self.n_fft, self.n_fft // 4).astype(self.dtype)
        feats = []
        h = nn.leaky_relu(_conv(self.channels, (3, 9), dtype=self.dtype)(h), 0.2)
        feats.append(h)
        for d in self.dilations:  # time dilation d, frequency stride 2
            h = nn.leaky_relu(_conv(self.channels, (3, 9), (1, 2), (d, 1), dtype=self.dtype)(h), 0.2)
            feats.append(h)
        h = nn.leaky_relu(_conv(self.channels, (3, 3), dtype=self.dtype)(h), 0.2)
        feats.append(h)
        return _conv(1, (3, 3), dtype=self.dtype)(h).astype(jnp.float32), feats


class MultiScaleSTFTDiscriminator(nn.Module):
    n_ffts: Sequence[int] = (256, 512, 1024)
    channels: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> list[tuple[Array, list[Array]]]:
        return [STFTDiscriminator(n, self.channels, dtype=self.dtype, name=f"stft_{n}")(x) for n in self.n_ffts]


class PeriodDiscriminator(nn.Module):
    period: int
    channels: Sequence[int] = (16, 32, 64)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, list[Array]]:
        b, t = x.shape
        pad = (-t) % self.period
        x = jnp.pad(x, ((0, 0), (0, pad)), mode="reflect" if pad < t else "constant")
        h = x.reshape(b, -1, self.period, 1).astype(self.dtype)  # column j holds samples j, j+p, j+2p, ...
        feats = []
        for c in self.channels:
            h = nn.leaky_relu(_conv(c, (5, 1), (3, 1), dtype=self.dtype)(h), 0.1)
            feats.append(h)
        return _conv(1, (3, 1), dtype=self.dtype)(h).astype(jnp.float32), feats


class MultiPeriodDiscriminator(nn.Module):
    periods: Sequence[int] = (2, 3, 5, 7, 11)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> list[tuple[Array, list[Array]]]:
        return [PeriodDiscriminator(p, dtype=self.dtype, name=f"period_{p}")(x) for p in self.periods]


class AudioDiscriminator(nn.Module):
    """MS-STFT discriminator, plus the multi-period one when ``periods`` is non-empty. ``x [batch, samples]``."""

    n_ffts: Sequence[int] = (256, 512, 1024)
    channels: int = 32
    periods: Sequence[int] = ()
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> list[tuple[Array, list[Array]]]:
        out = MultiScaleSTFTDiscriminator(self.n_ffts, self.channels, self.dtype, name="msstft")(x)
        if self.periods:
            out = out + MultiPeriodDiscriminator(self.periods, self.dtype, name="mpd")(x)
        return out


def d_loss(real: list, fake: list, kind: str = "hinge") -> Array:
    """Discriminator loss, mean over sub-discriminators. hinge: relu(1 - D(x)) + relu(1 + D(x_hat));
    lsgan: (1 - D(x))^2 + D(x_hat)^2."""
    total = 0.0
    for (lr, _), (lf, _) in zip(real, fake, strict=True):
        if kind == "hinge":
            total = total + jnp.mean(jax.nn.relu(1 - lr)) + jnp.mean(jax.nn.relu(1 + lf))
        elif kind == "lsgan":
            total = total + jnp.mean((1 - lr) ** 2) + jnp.mean(lf**2)
        else:
            raise ValueError(f"disc.loss={kind!r}: choose 'hinge' or 'lsgan'")
    return total / len(real)


def g_loss(fake: list, kind: str = "hinge") -> Array:
    """Generator adversarial loss: hinge relu(1 - D(x_hat)) (EnCodec) or lsgan (1 - D(x_hat))^2."""
    total = 0.0
    for lf, _ in fake:
        total = total + (jnp.mean(jax.nn.relu(1 - lf)) if kind == "hinge" else jnp.mean((1 - lf) ** 2))
    return total / len(fake)


def feature_matching(real: list, fake: list) -> Array:
    """Mean over all feature maps of ``mean|f(x) - f(x_hat)| / mean|f(x)|`` (EnCodec's relative L1)."""
    total, n = 0.0, 0
    for (_, fr), (_, ff) in zip(real, fake, strict=True):
        for a, b in zip(fr, ff, strict=True):
            a = jax.lax.stop_gradient(a.astype(jnp.float32))
            total = total + jnp.mean(jnp.abs(a - b.astype(jnp.float32))) / (jnp.mean(jnp.abs(a)) + 1e-8)
            n += 1
    return total / max(n, 1)
