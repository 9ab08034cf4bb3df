"""Import transformers' ``EncodecModel`` (safetensors + config.json) into :class:`teal_jax.models.codec.Codec`.

Key mapping (transformers -> ours; ``L`` = a module index of ``encoder.layers`` / ``decoder.layers``)::

    {enc,dec}oder.layers.L.conv.{parametrizations.weight.original0 | weight_g}  -> layers_L/weight_g  (squeezed)
    {enc,dec}oder.layers.L.conv.{parametrizations.weight.original1 | weight_v}  -> layers_L/weight_v
         Conv1d [O, I, K] -> [K, I, O] (transpose(2, 1, 0)); ConvTranspose1d [I, O, K] -> [K, I, O] (transpose(2, 0, 1))
    {enc,dec}oder.layers.L.block.J.conv.*   -> layers_L_block_J/*      (residual unit)
    {enc,dec}oder.layers.L.shortcut.conv.*  -> layers_L_shortcut/*
    {enc,dec}oder.layers.L.lstm.weight_{ih,hh}_lN [4H, in] -> layers_L/weight_{ih,hh}_lN [in, 4H] (gate order kept)
    quantizer.layers.i.codebook.embed [K, C] -> quantizer/levels_i/codebook

Both weight-norm spellings are accepted (the parametrization API of torch >= 2.1 and the older ``weight_g/weight_v``).
``normalize=True`` models (EnCodec 48 kHz) and ``time_group_norm`` are rejected with a ValueError.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import numpy as np

from teal_jax.models.codec import CodecConfig


def config_from_hf(hf: dict[str, Any]) -> CodecConfig:
    """transformers ``EncodecConfig`` dict -> :class:`CodecConfig` (learned, non-EMA codebook at import)."""
    if hf.get("norm_type", "weight_norm") != "weight_norm":
        raise ValueError(f"EnCodec norm_type={hf.get('norm_type')!r} is not supported (only 'weight_norm')")
    if hf.get("normalize", False):
        raise ValueError("EnCodec normalize=True (the 48 kHz model's per-chunk scale) is not supported")
    ratios = tuple(int(r) for r in hf.get("upsampling_ratios", (8, 5, 4, 2)))
    rate = int(hf.get("sampling_rate", 24000))
    frame_rate = math.ceil(rate / math.prod(ratios))
    k = int(hf.get("codebook_size", 1024))
    # transformers derives num_quantizers from the last target bandwidth (EncodecConfig.num_quantizers)
    levels = int(1000 * hf.get("target_bandwidths", [24.0])[-1] // (frame_rate * int(math.log2(k))))
    if levels < 1:
        raise ValueError(f"EnCodec config gives {levels} quantizers (target_bandwidths too small for this hop)")
    hidden = int(hf.get("hidden_size", 128))
    cb_dim = hf.get("codebook_dim") or hidden
    if int(cb_dim) != hidden:
        raise ValueError(f"EnCodec codebook_dim={cb_dim} differs from hidden_size={hidden}: not supported")
    return CodecConfig(
        sample_rate=rate, channels=int(hf.get("audio_channels", 1)), num_filters=int(hf.get("num_filters", 32)),
        hidden_size=hidden, ratios=ratios, num_residual_layers=int(hf.get("num_residual_layers", 1)),
        kernel_size=int(hf.get("kernel_size", 7)), last_kernel_size=int(hf.get("last_kernel_size", 7)),
        residual_kernel_size=int(hf.get("residual_kernel_size", 3)),
        dilation_growth_rate=int(hf.get("dilation_growth_rate", 2)), compress=int(hf.get("compress", 2)),
        num_lstm_layers=int(hf.get("num_lstm_layers", 2)), use_conv_shortcut=bool(hf.get("use_conv_shortcut", True)),
        causal=bool(hf.get("use_causal_conv", True)), pad_mode=str(hf.get("pad_mode", "reflect")),
        trim_right_ratio=float(hf.get("trim_right_ratio", 1.0)), activation="elu", weight_norm=True,
        num_levels=levels, codebook_size=k, code_dim=None, l2_normalize=False, use_ema=False,
    )


def _is_transpose(part: str, idx: int, config: CodecConfig) -> bool:
    """Whether decoder layer ``idx`` is a ConvTranspose1d (the layer after each upsampling activation)."""
    if part != "decoder":
        return False
    i = 0 + (1 if config.num_lstm_layers > 0 else 0)
    for _ in config.ratios:
        i += 2
        if idx == i:
            return True
        i += config.num_residual_layers
    return False


_CONV = re.compile(
    r"^(encoder|decoder)\.layers\.(\d+)\.(?:(block)\.(\d+)\.|(shortcut)\.)?conv\."
    r"(parametrizations\.weight\.original0|parametrizations\.weight\.original1|weight_g|weight_v|bias|weight)$")
_LSTM = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.lstm\.((?:weight|bias)_(?:ih|hh)_l\d+)$")
_CODEBOOK = re.compile(r"^quantizer\.layers\.(\d+)\.codebook\.(embed|embed_avg|cluster_size|inited)$")


def convert_state_dict(state: dict[str, np.ndarray], config: CodecConfig) -> dict[str, Any]:
    """torch state dict (numpy arrays) -> our ``params`` tree. Every tensor must be used; unknown keys raise."""
    params: dict[str, Any] = {"encoder": {}, "decoder": {}, "quantizer": {}}
    for key, value in state.items():
        value = np.asarray(value, np.float32)
        if m := _CONV.match(key):
            part, idx, block, j, short, kind = m.groups()
            name = f"layers_{idx}" + (f"_block_{j}" if block else "") + ("_shortcut" if short else "")
            leaf = params[part].setdefault(name, {})
            transpose = block is None and short is None and _is_transpose(part, int(idx), config)
            if kind in ("parametrizations.weight.original0", "weight_g"):
                leaf["weight_g"] = value.reshape(-1)  # [O,1,1] (conv) or [I,1,1] (transposed conv)
            elif kind in ("parametrizations.weight.original1", "weight_v", "weight"):
                name_w = "kernel" if kind == "weight" else "weight_v"
                leaf[name_w] = value.transpose(2, 0, 1) if transpose else value.transpose(2, 1, 0)
            else:
                leaf["bias"] = value
        elif m := _LSTM.match(key):
            part, idx, pname = m.groups()
            leaf = params[part].setdefault(f"layers_{idx}", {})
            leaf[pname] = value.T if pname.startswith("weight") else value  # [4H, in] -> [in, 4H]
        elif m := _CODEBOOK.match(key):
            level, kind = m.groups()
            if kind == "embed":
                params["quantizer"][f"levels_{level}"] = {"codebook": value}
            # embed_avg / cluster_size / inited are EnCodec's EMA training buffers: not needed for inference
        else:
            raise ValueError(f"EnCodec state dict: unexpected key {key!r}")
    missing = [f"levels_{i}" for i in range(config.num_levels) if f"levels_{i}" not in params["quantizer"]]
    if missing:
        raise ValueError(f"EnCodec state dict: no codebook for quantizer {missing}")
    return params


def load_encodec(path: str) -> tuple[CodecConfig, dict[str, Any]]:
    """Reads ``path/config.json`` + ``path/model.safetensors`` (a ``save_pretrained`` directory)."""
    from safetensors.numpy import load_file

    cfg_path, w_path = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
    for p in (cfg_path, w_path):
        if not os.path.exists(p):
            raise ValueError(f"{p}: missing (expected an EncodecModel save_pretrained directory)")
    with open(cfg_path) as f:
        hf = json.load(f)
    if hf.get("model_type") not in (None, "encodec"):
        raise ValueError(f"{cfg_path}: model_type={hf.get('model_type')!r}, expected 'encodec'")
    config = config_from_hf(hf)
    return config, convert_state_dict(load_file(w_path), config)
