"""HF ``LlamaForCausalLM`` checkpoints (config.json + safetensors) <-> ``TransformerLM`` parameters.

Layout rules (torch Linear stores ``weight[out, in]``; our kernels are ``[in, out]`` with heads split out):
  q_proj.weight [H*hd, D]   -> layers/attn/q_proj/kernel [L, D, H, hd]      (transpose, reshape)
  k/v_proj.weight [KV*hd, D] -> layers/attn/{k,v}_proj/kernel [L, D, KV, hd]
  o_proj.weight [D, H*hd]   -> layers/attn/o_proj/kernel [L, H, hd, D]
  {gate,up}_proj.weight [M, D] -> layers/mlp/{gate,up}_proj/kernel [L, D, M];  down_proj [D, M] -> [L, M, D]
  input_layernorm / post_attention_layernorm -> layers/attn_norm, layers/mlp_norm; model.norm -> final_norm
  embed_tokens.weight [V, D] -> embed/embedding;  lm_head.weight [V, D] -> lm_head/kernel [D, V] (absent when tied)
No q/k permutation is needed: HF Llama and our RoPE both rotate the two halves of each head ('rotate_half').
Only safetensors are read (never pickle); torch is not needed.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from teal_jax.convert.hf_files import SafetensorsDir, read_config
from teal_jax.models.transformer import TransformerConfig

_SUPPORTED_ROPE = (None, "default")


def config_from_hf(hf: dict[str, Any], source: str = "config.json", **overrides) -> TransformerConfig:
    """Our TransformerConfig from a HF Llama config dict; unsupported features raise naming the field."""
    if hf.get("model_type", "llama") != "llama":
        raise ValueError(f"{source}: model_type={hf.get('model_type')!r}, expected 'llama'")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{source}: hidden_act={hf.get('hidden_act')!r} is not supported (SwiGLU needs 'silu')")
    rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type")) if rope else None
    if rope_type not in _SUPPORTED_ROPE:
        raise ValueError(f"{source}: rope scaling type {rope_type!r} is not supported (only default RoPE)")
    theta = hf.get("rope_theta", rope.get("rope_theta", 10_000.0))
    if hf.get("sliding_window") is not None:
        raise ValueError(f"{source}: sliding_window={hf['sliding_window']!r} is not supported")
    if hf.get("pretraining_tp", 1) not in (None, 1):
        raise ValueError(f"{source}: pretraining_tp={hf['pretraining_tp']!r} is not supported")
    d, h = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    kw = dict(
        vocab_size=int(hf["vocab_size"]), embed_dim=d, num_layers=int(hf["num_hidden_layers"]), num_heads=h,
        num_kv_heads=int(hf.get("num_key_value_heads") or h), head_dim=int(hf.get("head_dim") or d // h),
        mlp_dim=int(hf["intermediate_size"]), rope_theta=float(theta), norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        use_bias=bool(hf.get("attention_bias", False) or hf.get("mlp_bias", False)),
        max_decode_len=int(hf.get("max_position_embeddings", 2048)),
    )
    kw.update(overrides)
    return TransformerConfig(**kw)


def import_llama(hf_dir: str, *, dtype=np.float32, **config_overrides) -> tuple[TransformerConfig, dict]:
    """Reads a HF Llama checkpoint directory -> ``(TransformerConfig, params)`` (params unboxed, numpy ``dtype``)."""
    hf = read_config(hf_dir)
    cfg = config_from_hf(hf, os.path.join(hf_dir, "config.json"), **config_overrides)
    t = SafetensorsDir(hf_dir)
    d, h, kv, hd, m, v, n = (cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim,
                             cfg.vocab_size, cfg.num_layers)

    def stack(fn):
        return np.stack([fn(i) for i in range(n)])

    def lin(i, name, out_dim, in_dim):
        return t.get(f"model.layers.{i}.{name}.weight", (out_dim, in_dim), dtype).T

    def bias(i, name, size):
        # A group the config declares (attention_bias / mlp_bias) must be in the file; the other group becomes zeros
        # (exact: our use_bias puts a bias on every linear layer).
        key = f"model.layers.{i}.{name}.bias"
        declared = hf.get("attention_bias" if name.startswith("self_attn") else "mlp_bias", False)
        return t.get(key, (size,), dtype) if declared or t.has(key) else np.zeros((size,), dtype)

    attn = {
        "q_proj": {"kernel": stack(lambda i: lin(i, "self_attn.q_proj", h * hd, d).reshape(d, h, hd))},
        "k_proj": {"kernel": stack(lambda i: lin(i, "self_attn.k_proj", kv * hd, d).reshape(d, kv, hd))},
        "v_proj": {"kernel": stack(lambda i: lin(i, "self_attn.v_proj", kv * hd, d).reshape(d, kv, hd))},
        "o_proj": {"kernel": stack(lambda i: lin(i, "self_attn.o_proj", d, h * hd).reshape(h, hd, d))},
    }
    mlp = {
        "gate_proj": {"kernel": stack(lambda i: lin(i, "mlp.gate_proj", m, d))},
        "up_proj": {"kernel": stack(lambda i: lin(i, "mlp.up_proj", m, d))},
        "down_proj": {"kernel": stack(lambda i: lin(i, "mlp.down_proj", d, m))},
    }
    if cfg.use_bias:
        for name, size, shape in (("q_proj", h * hd, (h, hd)), ("k_proj", kv * hd, (kv, hd)),
                                  ("v_proj", kv * hd, (kv, hd)), ("o_proj", d, (d,))):
            attn[name]["bias"] = stack(lambda i, name=name, size=size, shape=shape:
                                       bias(i, f"self_attn.{name}", size).reshape(shape))
        for name, size in (("gate_proj", m), ("up_proj", m), ("down_proj", d)):
            mlp[name]["bias"] = stack(lambda i, name=name, size=size: bias(i, f"mlp.{name}", size))
    params = {
        "embed": {"embedding": t.get("model.embed_tokens.weight", (v, d), dtype)},
        "layers": {
            "attn": attn,
            "attn_norm": {"scale": stack(lambda i: t.get(f"model.layers.{i}.input_layernorm.weight", (d,), dtype))},
            "mlp": mlp,
            "mlp_norm": {"scale": stack(
                lambda i: t.get(f"model.layers.{i}.post_attention_layernorm.weight", (d,), dtype))},
        },
        "final_norm": {"scale": t.get("model.norm.weight", (d,), dtype)},
    }
    if not cfg.tie_embeddings:
        params["lm_head"] = {"kernel": t.get("lm_head.weight", (v, d), dtype).T}
    return cfg, params


def export_llama(cfg: TransformerConfig, params: dict, out_dir: str) -> str:
    """Writes ``config.json`` + ``model.safetensors`` (float32) that ``LlamaForCausalLM.from_pretrained`` loads."""
    from safetensors.numpy import save_file

    if cfg.qk_norm:
        raise ValueError("model.qk_norm=True has no Llama equivalent: this model cannot be exported as Llama")
    p = {k: v for k, v in params.items()}
    d, h, kv, hd = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    f32 = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))
    out: dict[str, np.ndarray] = {"model.embed_tokens.weight": f32(p["embed"]["embedding"]),
                                  "model.norm.weight": f32(p["final_norm"]["scale"])}
    layers = p["layers"]
    for i in range(cfg.num_layers):
        pre = f"model.layers.{i}"
        a, m = layers["attn"], layers["mlp"]
        out[f"{pre}.self_attn.q_proj.weight"] = f32(np.asarray(a["q_proj"]["kernel"][i]).reshape(d, h * hd).T)
        out[f"{pre}.self_attn.k_proj.weight"] = f32(np.asarray(a["k_proj"]["kernel"][i]).reshape(d, kv * hd).T)
        out[f"{pre}.self_attn.v_proj.weight"] = f32(np.asarray(a["v_proj"]["kernel"][i]).reshape(d, kv * hd).T)
        out[f"{pre}.self_attn.o_proj.weight"] = f32(np.asarray(a["o_proj"]["kernel"][i]).reshape(h * hd, d).T)
        for name in ("gate_proj", "up_proj", "down_proj"):
            out[f"{pre}.mlp.{name}.weight"] = f32(np.asarray(m[name]["kernel"][i]).T)
        if cfg.use_bias:
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                out[f"{pre}.self_attn.{name}.bias"] = f32(np.asarray(a[name]["bias"][i]).reshape(-1))
            for name in ("gate_proj", "up_proj", "down_proj"):
                out[f"{pre}.mlp.{name}.bias"] = f32(m[name]["bias"][i])
        out[f"{pre}.input_layernorm.weight"] = f32(layers["attn_norm"]["scale"][i])
        out[f"{pre}.post_attention_layernorm.weight"] = f32(layers["mlp_norm"]["scale"][i])
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = f32(np.asarray(p["lm_head"]["kernel"]).T)
    os.makedirs(out_dir, exist_ok=True)
    hf_config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "vocab_size": cfg.vocab_size, "hidden_size": d, "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": h, "num_key_value_heads": kv, "head_dim": hd,
        "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta, "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": cfg.use_bias, "mlp_bias": cfg.use_bias, "max_position_embeddings": cfg.max_decode_len,
        "torch_dtype": "float32",
    }
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=1)
    save_file(out, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    return out_dir
