"""PatchGAN image discriminator (pix2pix / taming-transformers' NLayerDiscriminator), pure Flax linen.

conv 4x4/2 (ndf) -> LeakyReLU(0.2) -> [conv 4x4/2 (ndf * min(2^n, 8)) -> norm -> LeakyReLU] x (num_layers - 1)
-> conv 4x4/1 (ndf * min(2^L, 8)) -> norm -> LeakyReLU -> conv 4x4/1 (1): one real/fake logit per patch.

taming uses BatchNorm; batch statistics are a poor fit for a sharded, accumulated, functional train step, so the
norm here is GroupNorm (``norm='group'``) or nothing (``norm='none'``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

Array = jax.Array


class PatchDiscriminator(nn.Module):
    """``[batch, H, W, C]`` in [-1, 1] -> logits ``[batch, H', W', 1]`` (H' ~ H / 2^num_layers - 2)."""

    base_channels: int = 64
    num_layers: int = 3
    norm: str = "group"  # 'group' | 'none'
    norm_groups: int = 32
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def _conv(self, features: int, stride: int, name: str) -> nn.Conv:
        return nn.Conv(
            features,
            (4, 4),
            strides=(stride, stride),
            padding=((1, 1), (1, 1)),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            # DCGAN init: N(0, 0.02) kernels
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.normal(0.02), (None, None, "conv_in", "conv_out")
            ),
            name=name,
        )

    def _norm(self, x: Array, name: str) -> Array:
        if self.norm == "none":
            return x
        if self.norm != "group":
            raise ValueError(f"discriminator norm={self.norm!r}: choose 'group' or 'none'")
        groups = min(self.norm_groups, x.shape[-1])
        return nn.GroupNorm(num_groups=groups, epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype,
                            name=name)(x)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = nn.leaky_relu(self._conv(self.base_channels, 2, "conv_0")(x.astype(self.dtype)), 0.2)
        for n in range(1, self.num_layers):
            h = self._conv(self.base_channels * min(2**n, 8), 2, f"conv_{n}")(h)
            h = nn.leaky_relu(self._norm(h, f"norm_{n}"), 0.2)
        h = self._conv(self.base_channels * min(2**self.num_layers, 8), 1, f"conv_{self.num_layers}")(h)
        h = nn.leaky_relu(self._norm(h, f"norm_{self.num_layers}"), 0.2)
        return self._conv(1, 1, "logits")(h).astype(jnp.float32)


def hinge_d_loss(logits_real: Array, logits_fake: Array) -> Array:
    """Discriminator hinge loss: 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(G(z))))."""
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def hinge_g_loss(logits_fake: Array) -> Array:
    """Generator side of the hinge GAN: -mean D(G(z))."""
    return -jnp.mean(logits_fake)
