"""ViT image encoder of the CLIP / SigLIP vision towers (pure Flax linen, no I/O).

``pixels [batch, H, W, C]`` (already normalised: ``(x - mean) / std`` of the checkpoint's image processor) ->
patch embedding (a stride-``patch`` conv; bias for SigLIP, none for CLIP), an optional class token in front (CLIP),
learned positions, an optional LayerNorm (CLIP's ``pre_layrnorm``), then pre-LN blocks
``x + attn(LN(x))``, ``x + fc2(act(fc1(LN(x))))`` (every projection biased; CLIP uses quick-GELU
``x sigmoid(1.702 x)``, SigLIP tanh-GELU).

Hidden states follow transformers' ``output_hidden_states``: index 0 is the input of the first block (after the
pre-LN for CLIP), index ``i`` the output of block ``i`` (no final norm in any of them). ``last_hidden_state`` is the
last one, through ``post_layernorm`` for SigLIP (CLIP applies its ``post_layernorm`` to the pooled class token only,
which is not computed here). Positions are not interpolated: images must have the configured size.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from teal_jax.models.whisper import EncoderBlock, activation_fn

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Vision tower shape (transformers ``CLIPVisionConfig`` / ``SiglipVisionConfig`` names in brackets)."""

    image_size: int = 224  # [image_size]
    patch_size: int = 32  # [patch_size]
    num_channels: int = 3  # [num_channels]
    hidden_size: int = 768  # [hidden_size]
    num_layers: int = 12  # [num_hidden_layers]
    num_heads: int = 12  # [num_attention_heads]
    mlp_dim: int = 3072  # [intermediate_size]
    activation: str = "quick_gelu"  # [hidden_act]
    layer_norm_eps: float = 1e-5  # [layer_norm_eps]
    class_token: bool = True  # CLIP: a learned class token in front; SigLIP: none
    pre_norm: bool = True  # CLIP's pre_layrnorm after the embeddings
    patch_bias: bool = False  # SigLIP's patch conv has a bias
    post_norm: bool = False  # SigLIP's post_layernorm on last_hidden_state
    dtype: Any = jnp.float32

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        activation_fn(self.activation)  # raises on an unknown name

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        return self.grid**2 + int(self.class_token)


class ViT(nn.Module):
    """``pixels [batch, H, W, C]`` -> hidden states ``[batch, (1 +) grid^2, hidden]`` (module docstring numbering).

    ``__call__(pixels, layer=None)``: all ``num_layers + 1`` hidden states, or only hidden state ``layer`` (the
    blocks after it are skipped).
    """

    config: ViTConfig

    @nn.compact
    def __call__(self, pixels: Array, layer: int | None = None):
        cfg = self.config
        want = (cfg.image_size, cfg.image_size, cfg.num_channels)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != want:
            raise ValueError(f"pixels must be [batch, {want[0]}, {want[1]}, {want[2]}], got shape {pixels.shape}")
        if layer is not None and not 0 <= layer <= cfg.num_layers:
            raise ValueError(f"layer={layer} must be in [0, {cfg.num_layers}] (hidden-state index)")
        dt = cfg.dtype
        p = cfg.patch_size
        x = nn.Conv(cfg.hidden_size, (p, p), strides=(p, p), padding="VALID", use_bias=cfg.patch_bias, dtype=dt,
                    name="patch_embed")(pixels.astype(dt))
        x = x.reshape(x.shape[0], -1, cfg.hidden_size)  # row-major patches, as torch's flatten(2)
        if cfg.class_token:
            cls = self.param("class_embedding", nn.initializers.normal(0.02), (cfg.hidden_size,))
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(dt), (x.shape[0], 1, cfg.hidden_size)), x], axis=1)
        pos = self.param("position_embedding", nn.initializers.normal(0.02), (cfg.num_positions, cfg.hidden_size))
        x = x + pos.astype(dt)
        if cfg.pre_norm:
            x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dt, name="pre_norm")(x)
        states = [x]
        last = cfg.num_layers if layer is None else layer
        for i in range(last):
            x = EncoderBlock(cfg.num_heads, cfg.mlp_dim, cfg.activation, True, cfg.layer_norm_eps, dt,
                             name=f"layers_{i}")(x)
            states.append(x)
        if cfg.post_norm and layer is None:
            nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dt, name="post_norm")(x)  # created for last_hidden_state
        return states if layer is None else states[layer]

    @nn.nowrap
    def last_hidden_state(self, variables, pixels: Array) -> Array:
        """transformers' ``last_hidden_state``: the last hidden state, through ``post_layernorm`` for SigLIP."""
        x = self.apply(variables, pixels)[-1]
        if not self.config.post_norm:
            return x
        ln = nn.LayerNorm(epsilon=self.config.layer_norm_eps, dtype=self.config.dtype)
        return ln.apply({"params": variables["params"]["post_norm"]}, x)
