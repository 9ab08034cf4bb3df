"""HF CLIP / SigLIP vision towers (``CLIPVisionModel``, ``CLIPModel``, ``SiglipVisionModel``, ``SiglipModel``:
config.json + safetensors) -> :class:`ViT` parameters and the image normalisation. Only the vision tower is read.

Layout rules (the prefix before ``embeddings.patch_embedding.weight``, e.g. ``vision_model.``, is found from the
file's keys):
  embeddings.patch_embedding.weight [D, C, p, p] -> patch_embed/kernel [p, p, C, D] (transpose(2, 3, 1, 0)); bias
  embeddings.class_embedding [D] (CLIP)         -> class_embedding
  embeddings.position_embedding.weight [N, D]   -> position_embedding
  pre_layrnorm (CLIP) / post_layernorm (SigLIP) -> pre_norm / post_norm ({weight,bias} -> {scale,bias})
  encoder.layers.i.self_attn.{q,k,v}_proj [D, D] -> layers_i/self_attn/{q,k,v}_proj/kernel [D, H, hd], bias [H, hd]
  encoder.layers.i.self_attn.out_proj [D, D]     -> layers_i/self_attn/out_proj/kernel [H, hd, D]
  encoder.layers.i.layer_norm{1,2}               -> layers_i/attn_norm, layers_i/mlp_norm
  encoder.layers.i.mlp.fc{1,2} [O, I]            -> layers_i/fc{1,2}/kernel [I, O]
Image normalisation (mean/std) comes from ``preprocessor_config.json`` when present, else the model family's
defaults (CLIP's OpenAI mean/std; SigLIP 0.5/0.5).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from teal_jax.convert.hf_files import SafetensorsDir, read_config, read_json
from teal_jax.models.vit import ViTConfig

# transformers' class defaults (a config.json may omit fields equal to them)
_FAMILIES = {
    "clip": dict(image_size=224, patch_size=32, num_channels=3, hidden_size=768, num_hidden_layers=12,
                 num_attention_heads=12, intermediate_size=3072, hidden_act="quick_gelu", layer_norm_eps=1e-5),
    "siglip": dict(image_size=224, patch_size=16, num_channels=3, hidden_size=768, num_hidden_layers=12,
                   num_attention_heads=12, intermediate_size=3072, hidden_act="gelu_pytorch_tanh",
                   layer_norm_eps=1e-6),
}
_MODEL_TYPES = {"clip": "clip", "clip_vision_model": "clip", "siglip": "siglip", "siglip_vision_model": "siglip"}
_NORMALISATION = {"clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
                  "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> tuple[str, ViTConfig]:
    """``(family, ViTConfig)`` from a HF CLIP/SigLIP (vision) config dict; the family is 'clip' or 'siglip'."""
    family = _MODEL_TYPES.get(hf.get("model_type"))
    if family is None:
        raise ValueError(f"{source}: model_type={hf.get('model_type')!r}, expected one of {sorted(_MODEL_TYPES)}")
    v = hf.get("vision_config", hf) if hf["model_type"] in ("clip", "siglip") else hf
    f = {**_FAMILIES[family], **{k: v[k] for k in _FAMILIES[family] if k in v and v[k] is not None}}
    try:
        cfg = ViTConfig(
            image_size=int(f["image_size"]), patch_size=int(f["patch_size"]), num_channels=int(f["num_channels"]),
            hidden_size=int(f["hidden_size"]), num_layers=int(f["num_hidden_layers"]),
            num_heads=int(f["num_attention_heads"]), mlp_dim=int(f["intermediate_size"]),
            activation=str(f["hidden_act"]), layer_norm_eps=float(f["layer_norm_eps"]),
            class_token=family == "clip", pre_norm=family == "clip", patch_bias=family == "siglip",
            post_norm=family == "siglip")
    except ValueError as e:
        raise ValueError(f"{source}: vision config: {e}") from e
    return family, cfg


def normalisation(hf_dir: str, family: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per channel of the checkpoint's image processor."""
    path = os.path.join(hf_dir, "preprocessor_config.json")
    mean, std = _NORMALISATION[family]
    p = read_json(path, what="an image processor config", required=False)
    if p is not None:
        mean, std = p.get("image_mean", mean), p.get("image_std", std)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def import_vision_tower(hf_dir: str, *, dtype=np.float32) -> tuple[ViTConfig, dict, dict]:
    """Reads a HF CLIP/SigLIP checkpoint directory -> ``(ViTConfig, params, {'family', 'mean', 'std'})``."""
    hf = read_config(hf_dir)
    family, cfg = config_from_hf(hf, os.path.join(hf_dir, "config.json"))
    t = SafetensorsDir(hf_dir)
    anchor = "embeddings.patch_embedding.weight"
    prefixes = sorted(k[: -len(anchor)] for k in t.where if k.endswith(anchor) and "text" not in k)
    if not prefixes:
        raise KeyError(f"{hf_dir}: no vision tower weights (no tensor named '*{anchor}')")
    pre = prefixes[0]
    d, h, m, p, c = cfg.hidden_size, cfg.num_heads, cfg.mlp_dim, cfg.patch_size, cfg.num_channels
    hd = d // h
    g = lambda key, shape: t.get(pre + key, shape, dtype)
    ln = lambda key: {"scale": g(f"{key}.weight", (d,)), "bias": g(f"{key}.bias", (d,))}
    params: dict[str, Any] = {
        "patch_embed": {"kernel": g(anchor, (d, c, p, p)).transpose(2, 3, 1, 0)},
        "position_embedding": g("embeddings.position_embedding.weight", (cfg.num_positions, d)),
    }
    if cfg.patch_bias:
        params["patch_embed"]["bias"] = g("embeddings.patch_embedding.bias", (d,))
    if cfg.class_token:
        params["class_embedding"] = g("embeddings.class_embedding", (d,))
    if cfg.pre_norm:
        params["pre_norm"] = ln("pre_layrnorm")
    if cfg.post_norm:
        params["post_norm"] = ln("post_layernorm")
    for i in range(cfg.num_layers):
        q = f"encoder.layers.{i}."
        attn = {name: {"kernel": g(f"{q}self_attn.{name}.weight", (d, d)).T.reshape(d, h, hd),
                       "bias": g(f"{q}self_attn.{name}.bias", (d,)).reshape(h, hd)}
                for name in ("q_proj", "k_proj", "v_proj")}
        attn["out_proj"] = {"kernel": g(f"{q}self_attn.out_proj.weight", (d, d)).T.reshape(h, hd, d),
                            "bias": g(f"{q}self_attn.out_proj.bias", (d,))}
        params[f"layers_{i}"] = {
            "self_attn": attn, "attn_norm": ln(f"{q}layer_norm1"), "mlp_norm": ln(f"{q}layer_norm2"),
            "fc1": {"kernel": g(f"{q}mlp.fc1.weight", (m, d)).T, "bias": g(f"{q}mlp.fc1.bias", (m,))},
            "fc2": {"kernel": g(f"{q}mlp.fc2.weight", (d, m)).T, "bias": g(f"{q}mlp.fc2.bias", (d,))},
        }
    mean, std = normalisation(hf_dir, family)
    if len(mean) != c or len(std) != c:
        raise ValueError(f"{hf_dir}: image_mean/image_std have {len(mean)}/{len(std)} values for {c} channels")
    return cfg, params, {"family": family, "mean": mean, "std": std}
