"""VQGAN-family image autoencoder (taming-transformers / LlamaGen / Chameleon shapes; pure Flax linen, no I/O).

One module family, switched by :class:`VQGANConfig`::

  encoder: conv_in 3x3 -> per level i: num_res_blocks x ResBlock(base * mult[i]) [+ attention if i in
           attn_levels], then (not at the last level) pad (0,1,0,1) + 3x3 stride-2 VALID conv
           -> mid (ResBlock, [attention], ResBlock) -> GroupNorm, swish, conv_out 3x3 -> latent_channels
  quant_conv 1x1 (latent -> embed_dim) -> quantizer (VQ or FSQ) -> post_quant_conv 1x1 (embed_dim -> latent)
  decoder: conv_in 3x3 -> mid -> per level, lowest resolution first: (num_res_blocks + 1) ResBlocks
           [+ attention], then (not at the last) nearest x2 upsample + 3x3 conv -> GroupNorm, swish, conv_out

The downsampling factor is ``2 ** (len(channel_multipliers) - 1)``. Images are NHWC in [-1, 1]. Parameter names
follow transformers' module names (``down_{i}_block_{j}``, ``mid_block_1``, ``q``/``k``/``v``/``proj_out``...),
so the converters in ``teal_jax.convert`` are a table, not a rewrite.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from teal_jax.models.fsq import FSQ
from teal_jax.models.quantizers import QuantizerOutput, VectorQuantizer

Array = jax.Array
CONV_AXES = (None, None, "conv_in", "conv_out")


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
    image_size: int = 256  # square input side the tokenizer expects (the convnet itself is size-agnostic)
    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 128
    channel_multipliers: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_levels: tuple[int, ...] = (4,)  # encoder level indices with attention after each ResBlock
    mid_attention: bool = True
    latent_channels: int = 256
    embed_dim: int = 8  # width at the quantizer input (after quant_conv)
    norm_groups: int = 32
    norm_eps: float = 1e-6  # torch's GroupNorm default is 1e-5; taming/Janus/Chameleon use 1e-6
    # quantizer
    quantizer: str = "vq"  # 'vq' | 'fsq'
    codebook_size: int = 16384
    code_dim: int | None = None  # None = embed_dim; smaller = factorised codes (projected in and out)
    l2_normalize: bool = True
    decode_normalize: bool | None = None
    use_ema: bool = False
    ema_decay: float = 0.99
    beta: float = 0.25
    restart_after: int = 0
    entropy_weight: float = 0.0  # VQ only: see VectorQuantizer.entropy_weight
    entropy_temperature: float = 0.01
    fsq_levels: tuple[int, ...] = (8, 5, 5, 5)
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        n = len(self.channel_multipliers)
        if n < 1:
            raise ValueError("model.channel_multipliers must have at least one entry")
        for lv in self.attn_levels:
            if not 0 <= lv < n:
                raise ValueError(f"model.attn_levels={self.attn_levels}: level {lv} is not in [0, {n})")
        widths = [self.base_channels] + [self.base_channels * m for m in self.channel_multipliers]
        bad = [w for w in widths + [self.latent_channels] if w % self.norm_groups]
        if bad:
            raise ValueError(
                f"model.norm_groups={self.norm_groups} must divide every channel width; these do not: {bad} "
                f"(base_channels={self.base_channels}, channel_multipliers={self.channel_multipliers})"
            )
        if self.quantizer not in ("vq", "fsq"):
            raise ValueError(f"model.quantizer={self.quantizer!r}: choose 'vq' or 'fsq'")

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict | Mapping[str, Any], **overrides) -> VQGANConfig:
        """From a ConfigDict (keys that are not fields, e.g. loss weights, are ignored); lists become tuples."""
        d = dict(cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else cfg)
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        kw.update(overrides)
        return cls(**kw)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def token_grid(self) -> tuple[int, int]:
        s = self.image_size // self.downsample_factor
        return s, s

    @property
    def num_codes(self) -> int:
        if self.quantizer == "fsq":
            n = 1
            for l in self.fsq_levels:
                n *= int(l)
            return n
        return self.codebook_size


def _conv(features: int, kernel: int, cfg: VQGANConfig, name: str, stride: int = 1, padding: Any = None):
    pad = ((kernel // 2, kernel // 2),) * 2 if padding is None else padding
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=pad,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), CONV_AXES),
        name=name,
    )


def _norm(cfg: VQGANConfig, name: str) -> nn.GroupNorm:
    # use_fast_variance=False: E[(x - mean)^2], not E[x^2] - mean^2, which cancels catastrophically in float32
    # when |mean| >> std (and then the explicit eps no longer matches torch).
    return nn.GroupNorm(
        num_groups=cfg.norm_groups,
        epsilon=cfg.norm_eps,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        use_fast_variance=False,
        name=name,
    )


class ResBlock(nn.Module):
    """GroupNorm -> swish -> conv3x3 -> GroupNorm -> swish -> conv3x3, plus a 1x1 shortcut when widths differ."""

    features: int
    cfg: VQGANConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = nn.swish(_norm(self.cfg, "norm1")(x))
        h = _conv(self.features, 3, self.cfg, "conv1")(h)
        h = nn.swish(_norm(self.cfg, "norm2")(h))
        h = _conv(self.features, 3, self.cfg, "conv2")(h)
        if x.shape[-1] != self.features:
            x = _conv(self.features, 1, self.cfg, "nin_shortcut")(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions, 1x1-conv projections (= dense over channels)."""

    cfg: VQGANConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, h, w, c = x.shape
        y = _norm(self.cfg, "norm")(x)
        q, k, v = (_conv(c, 1, self.cfg, n)(y).reshape(b, h * w, c) for n in ("q", "k", "v"))
        # softmax(q k^T / sqrt(c)) v, the softmax in float32
        logits = jnp.einsum("bqc,bkc->bqk", q, k).astype(jnp.float32) * (c**-0.5)
        attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bqk,bkc->bqc", attn, v).reshape(b, h, w, c)
        return x + _conv(c, 1, self.cfg, "proj_out")(out)


class Downsample(nn.Module):
    """Pad (0, 1) on the bottom/right, then a 3x3 stride-2 VALID conv: H -> H / 2 (taming's asymmetric pad)."""

    cfg: VQGANConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return _conv(x.shape[-1], 3, self.cfg, "conv", stride=2, padding="VALID")(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    cfg: VQGANConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return _conv(x.shape[-1], 3, self.cfg, "conv")(x)


class MidBlock(nn.Module):
    cfg: VQGANConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        x = ResBlock(c, self.cfg, name="block_1")(x)
        if self.cfg.mid_attention:
            x = AttnBlock(self.cfg, name="attn_1")(x)
        return ResBlock(c, self.cfg, name="block_2")(x)


class Encoder(nn.Module):
    """``[batch, H, W, in_channels]`` -> ``[batch, H/f, W/f, latent_channels]``."""

    cfg: VQGANConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.cfg
        n = len(cfg.channel_multipliers)
        h = _conv(cfg.base_channels, 3, cfg, "conv_in")(x)
        for i, mult in enumerate(cfg.channel_multipliers):
            for j in range(cfg.num_res_blocks):
                h = ResBlock(cfg.base_channels * mult, cfg, name=f"down_{i}_block_{j}")(h)
                if i in cfg.attn_levels:
                    h = AttnBlock(cfg, name=f"down_{i}_attn_{j}")(h)
            if i != n - 1:
                h = Downsample(cfg, name=f"down_{i}_downsample")(h)
        h = MidBlock(cfg, name="mid")(h)
        h = nn.swish(_norm(cfg, "norm_out")(h))
        return _conv(cfg.latent_channels, 3, cfg, "conv_out")(h)


class Decoder(nn.Module):
    """``[batch, h, w, latent_channels]`` -> ``[batch, h*f, w*f, out_channels]`` (mirror of the encoder)."""

    cfg: VQGANConfig

    @nn.compact
    def __call__(self, z: Array) -> Array:
        cfg = self.cfg
        n = len(cfg.channel_multipliers)
        h = _conv(cfg.base_channels * cfg.channel_multipliers[-1], 3, cfg, "conv_in")(z)
        h = MidBlock(cfg, name="mid")(h)
        # up_0 is the lowest resolution (encoder level n-1), as in transformers' Janus decoder.
        for u, level in enumerate(reversed(range(n))):
            for j in range(cfg.num_res_blocks + 1):
                h = ResBlock(cfg.base_channels * cfg.channel_multipliers[level], cfg, name=f"up_{u}_block_{j}")(h)
                if level in cfg.attn_levels:
                    h = AttnBlock(cfg, name=f"up_{u}_attn_{j}")(h)
            if u != n - 1:
                h = Upsample(cfg, name=f"up_{u}_upsample")(h)
        h = nn.swish(_norm(cfg, "norm_out")(h))
        return _conv(cfg.out_channels, 3, cfg, "conv_out")(h)


class VQGAN(nn.Module):
    """Encoder + quantizer + decoder. Methods: ``encode``, ``decode``, ``decode_codes``, ``__call__``."""

    cfg: VQGANConfig

    def setup(self):
        cfg = self.cfg
        self.encoder = Encoder(cfg)
        self.quant_conv = _conv(cfg.embed_dim, 1, cfg, "quant_conv")
        if cfg.quantizer == "vq":
            self.quantizer = VectorQuantizer(
                codebook_size=cfg.codebook_size,
                code_dim=cfg.code_dim or cfg.embed_dim,
                features=cfg.embed_dim,
                l2_normalize=cfg.l2_normalize,
                decode_normalize=cfg.decode_normalize,
                use_ema=cfg.use_ema,
                ema_decay=cfg.ema_decay,
                beta=cfg.beta,
                restart_after=cfg.restart_after,
                entropy_weight=cfg.entropy_weight,
                entropy_temperature=cfg.entropy_temperature,
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
            )
        else:
            self.quantizer = FSQ(
                levels=tuple(cfg.fsq_levels), features=cfg.embed_dim, dtype=cfg.dtype, param_dtype=cfg.param_dtype
            )
        self.post_quant_conv = _conv(cfg.latent_channels, 1, cfg, "post_quant_conv")
        self.decoder = Decoder(cfg)

    def encode(self, images: Array, *, train: bool = False) -> QuantizerOutput:
        """``[batch, H, W, in_channels]`` in [-1, 1] -> QuantizerOutput with codes ``int32 [batch, h, w]`` and
        quantized ``[batch, h, w, embed_dim]``."""
        chex.assert_rank(images, 4)
        f = self.cfg.downsample_factor
        if images.shape[1] % f or images.shape[2] % f:
            raise ValueError(f"image size {images.shape[1:3]} is not a multiple of the downsampling factor {f}")
        z = self.quant_conv(self.encoder(images.astype(self.cfg.dtype)))
        return self.quantizer(z, train=train)

    def decode(self, quantized: Array) -> Array:
        """``[batch, h, w, embed_dim]`` -> images ``[batch, h*f, w*f, out_channels]`` (float, ~[-1, 1])."""
        return self.decoder(self.post_quant_conv(quantized))

    def decode_codes(self, codes: Array) -> Array:
        """``int32 [batch, h, w]`` -> images ``[batch, h*f, w*f, out_channels]``."""
        chex.assert_rank(codes, 3)
        return self.decode(self.quantizer.decode_codes(codes))

    def __call__(self, images: Array, *, train: bool = False) -> tuple[Array, QuantizerOutput]:
        """Reconstruction ``[batch, H, W, out_channels]`` and the quantizer output."""
        q = self.encode(images, train=train)
        recon = self.decode(q.quantized)
        chex.assert_shape(recon, images.shape[:3] + (self.cfg.out_channels,))
        return recon, q
