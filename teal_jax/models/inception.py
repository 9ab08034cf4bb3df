"""Inception-v3 as the FID feature extractor: the TensorFlow graph of 2015-12-05 that FID is defined on.

FID (Heusel et al. 2017) is only comparable between papers when its features come from one network: the TF
Inception-v3 graph of the original implementation (``pool_3``, 2,048-d). That graph differs from torchvision's
Inception-v3 in four places, which torch-fidelity's ``feature_extractor_inceptionv3`` (and pytorch-fid) reproduce and
this module does too:

* inputs: uint8 RGB of any size, resized to 299 x 299 with TensorFlow 1.x bilinear resizing
  (``align_corners=False`` without half-pixel centres: source coordinate = destination index * in / out, which is
  not what ``jax.image.resize`` or torch's ``interpolate`` compute), then scaled to [-1, 1) by (x - 128) / 128;
* the 3 x 3 average pools inside the A, C and E blocks do not count the zero padding (TF's ``AVG`` pooling);
* the last E block (Mixed_7c) pools its input with a 3 x 3 *max* pool (a quirk of the TF graph);
* the classifier has 1,008 outputs (``fc``), of which FID uses none: the features are the global average of the
  last block (``pool3``); ``logits`` are returned too (the Inception Score reads them).

Every convolution is bias-free and followed by batch norm (eps 1e-3, inference statistics) and ReLU. Parameter names
follow torch-fidelity's module names (``Mixed_6b/branch7x7_2/conv/kernel``), so the weight converter
(:mod:`teal_jax.convert.inception`) is a rename plus a transpose. ``width`` scales every channel count (1.0 is the
real network; tests use tiny widths for fast fixtures). Computation is float32 with ``precision='highest'`` matmuls
(FID is sensitive to feature error; on GPUs the default would be TF32).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008
BN_EPS = 1e-3


def resize_bilinear_tf1(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
    """float ``[B, H, W, C]`` -> ``[B, size, size, C]`` as TF 1.x ``resize_bilinear(align_corners=False)``.

    Destination pixel ``i`` reads source coordinate ``i * in / out`` (float32, as TF computes it), interpolating
    between ``floor`` and ``min(floor + 1, in - 1)``; rows of the two columns first, then between rows. The index
    tables are static (numpy at trace time)."""
    if images.ndim != 4:
        raise ValueError(f"resize_bilinear_tf1: expected [B, H, W, C] images, got shape {images.shape}")

    def table(n_in: int):
        pos = np.arange(size, dtype=np.float32) * np.float32(n_in / size)
        lo = np.floor(pos).astype(np.int32)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (pos - lo.astype(np.float32)).astype(np.float32)

    h, w = images.shape[1], images.shape[2]
    ylo, yhi, dy = table(h)
    xlo, xhi, dx = table(w)
    x = images.astype(jnp.float32)
    top, bottom = jnp.take(x, ylo, axis=1), jnp.take(x, yhi, axis=1)

    def across(rows):
        left, right = jnp.take(rows, xlo, axis=2), jnp.take(rows, xhi, axis=2)
        return left + (right - left) * dx[None, None, :, None]

    upper, lower = across(top), across(bottom)
    return upper + (lower - upper) * dy[None, :, None, None]


class FrozenBatchNorm(nn.Module):
    """Batch norm with fixed statistics: ``(x - mean) / sqrt(var + eps) * scale + bias`` (inference only)."""

    eps: float = BN_EPS

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        mean = self.param("mean", nn.initializers.zeros, (c,), jnp.float32)
        var = self.param("var", nn.initializers.ones, (c,), jnp.float32)
        return (x - mean) * (scale * jax.lax.rsqrt(var + self.eps)) + bias


class ConvBN(nn.Module):
    """Bias-free conv -> frozen batch norm -> ReLU (torch-fidelity's ``BasicConv2d``)."""

    features: int
    kernel: tuple[int, int] = (1, 1)
    stride: int = 1
    pad: tuple[int, int] = (0, 0)  # symmetric (rows, columns) padding, as torch's ``padding``

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.features, self.kernel, strides=(self.stride, self.stride), use_bias=False,
                    padding=((self.pad[0], self.pad[0]), (self.pad[1], self.pad[1])), precision="highest",
                    name="conv")(x)
        return nn.relu(FrozenBatchNorm(name="bn")(x))


def _avg3(x):  # TF 'AVG' pooling: the padded zeros do not count
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max3s2(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


def channels(n: int, width: float) -> int:
    """The real network's channel count ``n`` scaled by ``width`` (at least 1)."""
    return max(1, int(round(n * width)))


class _Block(nn.Module):
    width: float = 1.0

    def c(self, n: int) -> int:
        return channels(n, self.width)


class InceptionA(_Block):  # Mixed_5b/c/d, 35 x 35
    pool_features: int = 32

    @nn.compact
    def __call__(self, x):
        c = self.c
        b1 = ConvBN(c(64), name="branch1x1")(x)
        b5 = ConvBN(c(48), name="branch5x5_1")(x)
        b5 = ConvBN(c(64), (5, 5), pad=(2, 2), name="branch5x5_2")(b5)
        b3 = ConvBN(c(64), name="branch3x3dbl_1")(x)
        b3 = ConvBN(c(96), (3, 3), pad=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = ConvBN(c(96), (3, 3), pad=(1, 1), name="branch3x3dbl_3")(b3)
        bp = ConvBN(c(self.pool_features), name="branch_pool")(_avg3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):  # Mixed_6a: 35 -> 17
    @nn.compact
    def __call__(self, x):
        c = self.c
        b3 = ConvBN(c(384), (3, 3), stride=2, name="branch3x3")(x)
        bd = ConvBN(c(64), name="branch3x3dbl_1")(x)
        bd = ConvBN(c(96), (3, 3), pad=(1, 1), name="branch3x3dbl_2")(bd)
        bd = ConvBN(c(96), (3, 3), stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max3s2(x)], axis=-1)


class InceptionC(_Block):  # Mixed_6b..e, 17 x 17, factorised 7 x 7
    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x):
        c, c7 = self.c, self.c(self.channels_7x7)
        row, col = dict(kernel=(1, 7), pad=(0, 3)), dict(kernel=(7, 1), pad=(3, 0))
        b1 = ConvBN(c(192), name="branch1x1")(x)
        b7 = ConvBN(c7, name="branch7x7_1")(x)
        b7 = ConvBN(c7, **row, name="branch7x7_2")(b7)
        b7 = ConvBN(c(192), **col, name="branch7x7_3")(b7)
        bd = ConvBN(c7, name="branch7x7dbl_1")(x)
        bd = ConvBN(c7, **col, name="branch7x7dbl_2")(bd)
        bd = ConvBN(c7, **row, name="branch7x7dbl_3")(bd)
        bd = ConvBN(c7, **col, name="branch7x7dbl_4")(bd)
        bd = ConvBN(c(192), **row, name="branch7x7dbl_5")(bd)
        bp = ConvBN(c(192), name="branch_pool")(_avg3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):  # Mixed_7a: 17 -> 8
    @nn.compact
    def __call__(self, x):
        c = self.c
        b3 = ConvBN(c(192), name="branch3x3_1")(x)
        b3 = ConvBN(c(320), (3, 3), stride=2, name="branch3x3_2")(b3)
        b7 = ConvBN(c(192), name="branch7x7x3_1")(x)
        b7 = ConvBN(c(192), (1, 7), pad=(0, 3), name="branch7x7x3_2")(b7)
        b7 = ConvBN(c(192), (7, 1), pad=(3, 0), name="branch7x7x3_3")(b7)
        b7 = ConvBN(c(192), (3, 3), stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max3s2(x)], axis=-1)


class InceptionE(_Block):  # Mixed_7b (average pool branch) and Mixed_7c (max pool branch: the TF graph's quirk)
    pool: str = "avg"

    @nn.compact
    def __call__(self, x):
        c = self.c
        row, col = dict(kernel=(1, 3), pad=(0, 1)), dict(kernel=(3, 1), pad=(1, 0))
        b1 = ConvBN(c(320), name="branch1x1")(x)
        b3 = ConvBN(c(384), name="branch3x3_1")(x)
        b3 = jnp.concatenate([ConvBN(c(384), **row, name="branch3x3_2a")(b3),
                              ConvBN(c(384), **col, name="branch3x3_2b")(b3)], axis=-1)
        bd = ConvBN(c(448), name="branch3x3dbl_1")(x)
        bd = ConvBN(c(384), (3, 3), pad=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([ConvBN(c(384), **row, name="branch3x3dbl_3a")(bd),
                              ConvBN(c(384), **col, name="branch3x3dbl_3b")(bd)], axis=-1)
        pooled = _avg3(x) if self.pool == "avg" else nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        bp = ConvBN(c(192), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3FID(nn.Module):
    """uint8 (or float in [0, 255]) RGB ``[B, H, W, 3]`` -> ``{'pool3': [B, 2048·width], 'logits': [B, 1008]}``."""

    width: float = 1.0
    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, images) -> dict[str, Any]:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"InceptionV3FID: expected RGB images [B, H, W, 3], got shape {images.shape}")
        w = self.width

        def c(n):
            return channels(n, w)

        x = resize_bilinear_tf1(images.astype(jnp.float32), INPUT_SIZE)
        x = (x - 128.0) / 128.0
        x = ConvBN(c(32), (3, 3), stride=2, name="Conv2d_1a_3x3")(x)  # 149
        x = ConvBN(c(32), (3, 3), name="Conv2d_2a_3x3")(x)  # 147
        x = ConvBN(c(64), (3, 3), pad=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max3s2(x)  # 73
        x = ConvBN(c(80), name="Conv2d_3b_1x1")(x)
        x = ConvBN(c(192), (3, 3), name="Conv2d_4a_3x3")(x)  # 71
        x = _max3s2(x)  # 35
        x = InceptionA(w, pool_features=32, name="Mixed_5b")(x)
        x = InceptionA(w, pool_features=64, name="Mixed_5c")(x)
        x = InceptionA(w, pool_features=64, name="Mixed_5d")(x)
        x = InceptionB(w, name="Mixed_6a")(x)  # 17
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(w, channels_7x7=c7, name=name)(x)
        x = InceptionD(w, name="Mixed_7a")(x)  # 8
        x = InceptionE(w, pool="avg", name="Mixed_7b")(x)
        x = InceptionE(w, pool="max", name="Mixed_7c")(x)
        pool3 = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(self.num_classes, precision="highest", name="fc")(pool3)
        return {"pool3": pool3, "logits": logits}
