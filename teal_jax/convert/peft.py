"""LoRA adapters in the HF PEFT layout (``adapter_model.safetensors`` + ``adapter_config.json``) <-> our factors.

PEFT's LoRA on a ``torch.nn.Linear`` (``weight [out, in]``) computes ``y = x W^T + (lora_alpha / r) * x A^T B^T``
with ``lora_A.weight [r, in]`` and ``lora_B.weight [out, r]``; ours computes ``x W + (alpha / r) (x A) B`` with
``lora_a [in..., r]`` and ``lora_b [r, out...]`` (teal_jax.models.lora). So, per layer ``i`` (names as in
teal_jax/convert/llama.py):

  base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight [r, D]     <- layers/attn/q_proj/lora_a[i] [D, r]^T
  base_model.model.model.layers.{i}.self_attn.q_proj.lora_B.weight [H*hd, r]  <- lora_b[i] [r, H, hd] reshaped, ^T
  ... o_proj: lora_A [r, H*hd] <- lora_a[i] [H, hd, r]; lora_B [D, r] <- lora_b[i] [r, D]
  ... mlp.{gate,up,down}_proj, and base_model.model.lm_head.lora_{A,B}.weight likewise.

``use_rslora`` (scaling lora_alpha / sqrt(r)) is read as alpha = lora_alpha * sqrt(r). Not representable here (an
error naming the field): DoRA, per-module rank/alpha patterns, a subset of layers, LoRA biases, ``modules_to_save``,
``fan_in_fan_out``. Modality experts (``expert_*``) have no HF counterpart and cannot be exported.
Only safetensors are read and written; torch is not needed.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import numpy as np

from teal_jax.convert.hf_files import read_json
from teal_jax.models import lora as lora_lib
from teal_jax.models.transformer import TransformerConfig

ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
_PREFIX = "base_model.model."
# our module path (relative to the LM) <-> HF module path inside LlamaForCausalLM ('{i}': the layer)
_MODULES = {
    **{f"layers/attn/{n}": f"model.layers.{{i}}.self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj", "o_proj")},
    **{f"layers/mlp/{n}": f"model.layers.{{i}}.mlp.{n}" for n in ("gate_proj", "up_proj", "down_proj")},
    "lm_head": "lm_head",
}
# Whole weights PEFT may save beside the factors (``save_embedding_layers``: when lm_head or the embedding is a target)
_SAVED = {"base_model.model.lm_head.base_layer.weight": "lm_head/kernel",
          "base_model.model.lm_head.weight": "lm_head/kernel",
          "base_model.model.model.embed_tokens.base_layer.weight": "embed/embedding",
          "base_model.model.model.embed_tokens.weight": "embed/embedding"}
_KEY = re.compile(r"^base_model\.model\.(?:model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)|(lm_head))"
                  r"\.lora_(A|B)(?:\.default)?\.weight$")


def _shapes(cfg: TransformerConfig, module: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(input shape, output shape) of our kernel for ``module``."""
    d, h, kv, hd, m, v = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
    return {"layers/attn/q_proj": ((d,), (h, hd)), "layers/attn/k_proj": ((d,), (kv, hd)),
            "layers/attn/v_proj": ((d,), (kv, hd)), "layers/attn/o_proj": ((h, hd), (d,)),
            "layers/mlp/gate_proj": ((d,), (m,)), "layers/mlp/up_proj": ((d,), (m,)),
            "layers/mlp/down_proj": ((m,), (d,)), "lm_head": ((d,), (v,))}[module]


def lora_config_from_peft(peft: dict[str, Any], source: str = CONFIG_FILE) -> lora_lib.LoraConfig:
    """Our LoraConfig (targets filled in later from the tensors) from an ``adapter_config.json`` dict."""
    if peft.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{source}: peft_type={peft.get('peft_type')!r}, only 'LORA' adapters are supported")
    for field, ok in (("use_dora", False), ("fan_in_fan_out", False), ("lora_bias", False)):
        if bool(peft.get(field, ok)) != ok:
            raise ValueError(f"{source}: {field}={peft[field]!r} is not supported")
    if peft.get("bias", "none") != "none":
        raise ValueError(f"{source}: bias={peft['bias']!r} is not supported (only 'none')")
    for field in ("rank_pattern", "alpha_pattern"):
        if peft.get(field):
            raise ValueError(f"{source}: {field} is not supported (one rank and alpha for every module)")
    for field in ("layers_to_transform", "modules_to_save", "layers_pattern", "target_parameters"):
        if peft.get(field):
            raise ValueError(f"{source}: {field}={peft[field]!r} is not supported (every layer of a targeted "
                             "module, no extra trained modules)")
    r = int(peft["r"])
    alpha = float(peft.get("lora_alpha", 8))
    if peft.get("use_rslora", False):
        alpha *= math.sqrt(r)  # PEFT scales by lora_alpha / sqrt(r); ours by alpha / r
    return lora_lib.LoraConfig(rank=r, alpha=alpha, dropout=float(peft.get("lora_dropout", 0.0) or 0.0))


def import_peft(adapter_dir: str, cfg: TransformerConfig) -> tuple[lora_lib.LoraConfig, dict, dict]:
    """Reads a PEFT LoRA adapter for a Llama model of config ``cfg`` -> ``(LoraConfig, factors, saved)``.

    ``factors`` holds ``lora_a``/``lora_b`` (float32 numpy) at their module paths, relative to the LM
    (``{'layers': {'attn': {'q_proj': {'lora_a': [L, D, r], 'lora_b': [L, r, H, hd]}}}}``): put them beside the base
    LM's params with ``teal_jax.models.lora.join`` (for TEAL: under ``params['lm']``). ``saved``: whole weights PEFT
    stored beside the factors (``{'lm_head/kernel': [D, V]}``, ``{'embed/embedding': [V, D]}``; PEFT does this when
    lm_head or the embedding is a target); PEFT loads them over the base model's, so use them in place of the base's
    (usually they are the base's unchanged).
    """
    from safetensors import safe_open

    config_path = os.path.join(adapter_dir, CONFIG_FILE)
    lcfg = lora_config_from_peft(read_json(config_path, what="a PEFT adapter directory saved by save_pretrained"),
                                 config_path)
    path = os.path.join(adapter_dir, ADAPTER_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found (pickled adapter_model.bin files are not read)")
    r = lcfg.rank
    found: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    saved: dict[str, np.ndarray] = {}
    with safe_open(path, framework="flax") as f:  # 'flax' reads bf16 too; converted to numpy float32 below
        for key in f.keys():
            if key in _SAVED:
                w = np.asarray(f.get_tensor(key), np.float32)
                want = (cfg.vocab_size, cfg.embed_dim)
                if w.shape != want:
                    raise ValueError(f"{path}: tensor {key!r} has shape {w.shape}, expected {want}")
                saved[_SAVED[key]] = w.T if _SAVED[key] == "lm_head/kernel" else w
                continue
            match = _KEY.match(key)
            if not match:
                raise ValueError(f"{path}: tensor {key!r} is not a LoRA factor of a Llama linear layer this "
                                 "project maps (q/k/v/o_proj, gate/up/down_proj, lm_head)")
            layer, group, name, head, ab = match.groups()
            module = "lm_head" if head else f"layers/{'attn' if group == 'self_attn' else 'mlp'}/{name}"
            if module not in _MODULES:
                raise ValueError(f"{path}: tensor {key!r}: unknown module {name!r}")
            found.setdefault(module, {}).setdefault(int(layer or 0), {})[ab] = np.asarray(f.get_tensor(key),
                                                                                          np.float32)
    if not found:
        raise ValueError(f"{path}: holds no LoRA factors")
    factors: dict = {}
    for module, layers in sorted(found.items()):
        in_shape, out_shape = _shapes(cfg, module)
        n_in, n_out = int(np.prod(in_shape)), int(np.prod(out_shape))
        stacked = module.startswith("layers/")
        want = list(range(cfg.num_layers)) if stacked else [0]
        if sorted(layers) != want:
            raise ValueError(f"{path}: {_MODULES[module].format(i='*')} has LoRA factors for layers {sorted(layers)}; "
                             f"every layer 0..{cfg.num_layers - 1} is needed")
        a_list, b_list = [], []
        for i in want:
            if set(layers[i]) != {"A", "B"}:
                raise ValueError(f"{path}: {_MODULES[module].format(i=i)} lacks lora_A or lora_B")
            a, b = layers[i]["A"], layers[i]["B"]
            name = _MODULES[module].format(i=i)
            if a.shape != (r, n_in) or b.shape != (n_out, r):
                raise ValueError(f"{path}: {name} lora_A {a.shape} / lora_B {b.shape}, expected {(r, n_in)} / "
                                 f"{(n_out, r)} (r={r} from {CONFIG_FILE}; check the base model's config)")
            a_list.append(a.T.reshape(in_shape + (r,)))
            b_list.append(b.T.reshape((r,) + out_shape))
        a = np.stack(a_list) if stacked else a_list[0]
        b = np.stack(b_list) if stacked else b_list[0]
        node = factors
        for k in module.split("/"):
            node = node.setdefault(k, {})
        node.update(lora_a=a, lora_b=b)
    targets = "^(" + "|".join(re.escape(m) for m in sorted(found)) + ")$"
    return lora_lib.LoraConfig(rank=r, alpha=lcfg.alpha, targets=targets, dropout=lcfg.dropout), factors, saved


def export_peft(cfg: TransformerConfig, lcfg: lora_lib.LoraConfig, params: Any, out_dir: str, *,
                base_model_name_or_path: str | None = None) -> str:
    """Writes the LoRA factors of ``params`` (LM params with factors, or the factor tree alone; for TEAL pass
    ``params['lm']``) as ``adapter_model.safetensors`` + ``adapter_config.json`` that
    ``peft.PeftModel.from_pretrained(LlamaForCausalLM, out_dir)`` loads (float32)."""
    from safetensors.numpy import save_file

    _, factors = lora_lib.split(params)
    flat = {}

    def walk(node, keys):
        if "lora_a" in node:
            flat["/".join(keys)] = node
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, keys + (k,))

    walk(factors, ())
    if not flat:
        raise ValueError("export_peft: the params hold no LoRA factors (lora_a/lora_b)")
    out: dict[str, np.ndarray] = {}
    for module, node in sorted(flat.items()):
        if module not in _MODULES:
            raise ValueError(f"export_peft: LoRA on {module!r} has no HF Llama counterpart (exportable: "
                             f"{sorted(_MODULES)})")
        a, b = np.asarray(node["lora_a"], np.float32), np.asarray(node["lora_b"], np.float32)
        if a.shape[-1] != lcfg.rank:
            raise ValueError(f"export_peft: {module}/lora_a has rank {a.shape[-1]}, the LoRA config says {lcfg.rank}")
        stacked = module.startswith("layers/")
        for i in range(cfg.num_layers if stacked else 1):
            ai, bi = (a[i], b[i]) if stacked else (a, b)
            name = _PREFIX + _MODULES[module].format(i=i)
            out[f"{name}.lora_A.weight"] = np.ascontiguousarray(ai.reshape(-1, lcfg.rank).T)
            out[f"{name}.lora_B.weight"] = np.ascontiguousarray(bi.reshape(lcfg.rank, -1).T)
    os.makedirs(out_dir, exist_ok=True)
    peft_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lcfg.rank, "lora_alpha": lcfg.alpha or lcfg.rank,
        "lora_dropout": lcfg.dropout, "target_modules": sorted({m.rsplit("/", 1)[-1] for m in flat}),
        "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "modules_to_save": None,
        "layers_to_transform": None, "init_lora_weights": True, "inference_mode": True,
        "base_model_name_or_path": base_model_name_or_path,
    }
    with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
        json.dump(peft_config, f, indent=1)
    save_file(out, os.path.join(out_dir, ADAPTER_FILE), metadata={"format": "pt"})
    return out_dir
