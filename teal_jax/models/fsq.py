"""Finite scalar quantization (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple"): bound each
channel, round; the code is the mixed-radix integer of the digits. No codebook, no auxiliary loss (pure linen)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from teal_jax.models.quantizers import Array, QuantizerOutput, code_counts, usage_metrics


class FSQ(nn.Module):
    """Finite scalar quantization: channel i is bounded to ``levels[i]`` values and rounded.

    ``x [..., D]`` is projected to ``len(levels)`` channels when ``D != len(levels)`` and back afterwards.
    The quantized values lie in [-1, 1]; the code is the mixed-radix integer of the per-channel digits,
    so there are ``prod(levels)`` codes. No auxiliary loss.
    """

    levels: Sequence[int]
    features: int | None = None  # D, the input width; None means D = len(levels)
    eps: float = 1e-3
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        if any(int(l) < 2 for l in self.levels):
            raise ValueError(f"FSQ levels={list(self.levels)}: every level must be >= 2")
        self.factorised = self.features is not None and self.features != len(self.levels)
        if self.factorised:
            self.project_in = nn.Dense(len(self.levels), dtype=self.dtype, param_dtype=self.param_dtype)
            self.project_out = nn.Dense(self.features, dtype=self.dtype, param_dtype=self.param_dtype)

    @property
    def codebook_size(self) -> int:
        return int(np.prod(self.levels))

    @property
    def code_dim(self) -> int:
        return len(self.levels)

    def _consts(self):
        levels = np.asarray(self.levels, np.float32)
        half_width = np.floor(levels / 2)  # digit d in [0, L) <-> value (d - half_width) / half_width
        basis = np.cumprod([1] + [int(l) for l in self.levels[:-1]]).astype(np.int32)
        return levels, half_width, basis

    def bound(self, z: Array) -> Array:
        """Squash channel i to (-L/2, L/2) so rounding gives exactly L integers (shifted for even L)."""
        levels, _, _ = self._consts()
        half_l = (levels - 1) * (1 + self.eps) / 2
        offset = np.where(levels % 2 == 0, 0.5, 0.0)
        shift = np.arctanh(offset / half_l)
        return jnp.tanh(z + shift) * half_l - offset

    def __call__(self, x: Array, *, train: bool = False) -> QuantizerOutput:
        """``x [..., D]`` -> quantized ``[..., D]``, codes ``int32 [...]`` in ``[0, prod(levels))``."""
        del train  # FSQ has no state and behaves the same at train and eval time
        expected = self.code_dim if self.features is None else self.features
        if x.shape[-1] != expected:
            raise ValueError(f"FSQ input has width {x.shape[-1]}, expected features={expected}")
        z = self.project_in(x) if self.factorised else x
        bounded = self.bound(z.astype(jnp.float32))
        # Straight-through rounding: forward round(b), backward identity.
        rounded = bounded + jax.lax.stop_gradient(jnp.round(bounded) - bounded)
        _, half_width, basis = self._consts()
        values = rounded / half_width  # in [-1, 1]
        codes = self.values_to_codes(jax.lax.stop_gradient(values))
        out = values.astype(self.dtype)
        if self.factorised:
            out = self.project_out(out)
        counts = code_counts(codes, self.codebook_size)
        return QuantizerOutput(
            quantized=out.astype(x.dtype),
            codes=codes,
            loss=jnp.zeros((), jnp.float32),
            metrics=usage_metrics(counts),
        )

    def values_to_codes(self, values: Array) -> Array:
        """``[..., len(levels)]`` values in [-1, 1] on the grid -> ``int32 [...]`` mixed-radix codes."""
        _, half_width, basis = self._consts()
        digits = jnp.round(values * half_width + half_width).astype(jnp.int32)
        return jnp.sum(digits * basis, axis=-1).astype(jnp.int32)

    def codes_to_values(self, codes: Array) -> Array:
        """``int32 [...]`` -> float32 ``[..., len(levels)]`` grid values in [-1, 1]."""
        levels, half_width, basis = self._consts()
        digits = (codes[..., None] // basis) % levels.astype(np.int32)
        return (digits.astype(jnp.float32) - half_width) / half_width

    def decode_codes(self, codes: Array) -> Array:
        """``int32 [...]`` -> ``[..., D]`` (grid values, projected out when factorised)."""
        out = self.codes_to_values(codes).astype(self.dtype)
        return self.project_out(out) if self.factorised else out
