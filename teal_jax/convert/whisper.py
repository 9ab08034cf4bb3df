"""HF Whisper checkpoints (``WhisperModel`` / ``WhisperForConditionalGeneration`` / ``WhisperEncoder``: config.json +
safetensors) -> :class:`WhisperEncoder` parameters and the matching :class:`LogMelConfig`. Only the encoder is read.

Layout rules (prefix ``encoder.``, ``model.encoder.`` or none, found from the file's keys):
  conv{1,2}.weight [O, I, 3]           -> conv{1,2}/kernel [3, I, O]  (transpose(2, 1, 0)); .bias as is
  embed_positions.weight [P, D]        -> embed_positions [P, D]
  layers.i.self_attn.{q,k,v}_proj.weight [D, D] -> layers_i/self_attn/{q,k,v}_proj/kernel [D, H, hd] (k: no bias)
  layers.i.self_attn.out_proj.weight [D, D]     -> layers_i/self_attn/out_proj/kernel [H, hd, D]
  layers.i.self_attn_layer_norm / final_layer_norm -> layers_i/attn_norm / mlp_norm ({weight,bias} -> {scale,bias})
  layers.i.fc{1,2}.weight [O, I]       -> layers_i/fc{1,2}/kernel [I, O]
  layer_norm                           -> final_norm
Only safetensors are read (never pickle); torch is not needed. A ``preprocessor_config.json`` beside the weights
(what ``WhisperFeatureExtractor.save_pretrained`` writes) sets the front end; without it the defaults follow
``num_mel_bins`` (16 kHz, n_fft 400, hop 160, 30 s).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from teal_jax.convert.hf_files import SafetensorsDir, read_config, read_json
from teal_jax.models.whisper import LogMelConfig, WhisperEncoderConfig

_PREFIXES = ("model.encoder.", "encoder.", "")


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> WhisperEncoderConfig:
    """Our WhisperEncoderConfig from a HF Whisper config dict; unsupported values raise naming the field."""
    if hf.get("model_type", "whisper") != "whisper":
        raise ValueError(f"{source}: model_type={hf.get('model_type')!r}, expected 'whisper'")
    try:
        return WhisperEncoderConfig(
            num_mel_bins=int(hf.get("num_mel_bins", 80)), d_model=int(hf["d_model"]),
            num_layers=int(hf["encoder_layers"]), num_heads=int(hf["encoder_attention_heads"]),
            ffn_dim=int(hf["encoder_ffn_dim"]), max_source_positions=int(hf.get("max_source_positions", 1500)),
            activation=str(hf.get("activation_function", "gelu")))
    except KeyError as e:
        raise ValueError(f"{source}: field {e.args[0]!r} is missing") from e
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e


def front_end_config(hf_dir: str, num_mel_bins: int) -> LogMelConfig:
    """The log-mel front end of a checkpoint directory (``preprocessor_config.json`` when present)."""
    path = os.path.join(hf_dir, "preprocessor_config.json")
    p = read_json(path, what="a feature extractor config", required=False)
    if p is None:
        return LogMelConfig(n_mels=num_mel_bins)
    rate = int(p.get("sampling_rate", 16000))
    cfg = LogMelConfig(sample_rate=rate, n_fft=int(p.get("n_fft", 400)), hop_length=int(p.get("hop_length", 160)),
                       n_mels=int(p.get("feature_size", num_mel_bins)),
                       window_samples=int(p.get("chunk_length", 30)) * rate)  # transformers' rule
    if cfg.n_mels != num_mel_bins:
        raise ValueError(f"{path}: feature_size={cfg.n_mels} but config.json has num_mel_bins={num_mel_bins}")
    if float(p.get("dither", 0.0)) != 0.0:
        raise ValueError(f"{path}: dither={p['dither']} is not supported (features would be random)")
    return cfg


def import_whisper_encoder(hf_dir: str, *, dtype=np.float32) -> tuple[WhisperEncoderConfig, LogMelConfig, dict]:
    """Reads a HF Whisper checkpoint directory -> ``(encoder config, front-end config, params)`` (numpy ``dtype``)."""
    hf = read_config(hf_dir)
    source = os.path.join(hf_dir, "config.json")
    cfg = config_from_hf(hf, source)
    t = SafetensorsDir(hf_dir)
    prefix = next((p for p in _PREFIXES if t.has(f"{p}conv1.weight")), None)
    if prefix is None:
        raise KeyError(f"{hf_dir}: no Whisper encoder weights (looked for "
                       f"{', '.join(repr(p + 'conv1.weight') for p in _PREFIXES)})")
    d, h, f, m = cfg.d_model, cfg.num_heads, cfg.ffn_dim, cfg.num_mel_bins
    hd = d // h
    g = lambda key, shape: t.get(prefix + key, shape, dtype)

    def ln(key):
        return {"scale": g(f"{key}.weight", (d,)), "bias": g(f"{key}.bias", (d,))}

    params: dict[str, Any] = {
        "conv1": {"kernel": g("conv1.weight", (d, m, 3)).transpose(2, 1, 0), "bias": g("conv1.bias", (d,))},
        "conv2": {"kernel": g("conv2.weight", (d, d, 3)).transpose(2, 1, 0), "bias": g("conv2.bias", (d,))},
        "embed_positions": g("embed_positions.weight", (cfg.max_source_positions, d)),
        "final_norm": ln("layer_norm"),
    }
    for i in range(cfg.num_layers):
        pre = f"layers.{i}."
        attn = {}
        for name in ("q_proj", "k_proj", "v_proj"):
            attn[name] = {"kernel": g(f"{pre}self_attn.{name}.weight", (d, d)).T.reshape(d, h, hd)}
            if name != "k_proj":
                attn[name]["bias"] = g(f"{pre}self_attn.{name}.bias", (d,)).reshape(h, hd)
        attn["out_proj"] = {"kernel": g(f"{pre}self_attn.out_proj.weight", (d, d)).T.reshape(h, hd, d),
                            "bias": g(f"{pre}self_attn.out_proj.bias", (d,))}
        params[f"layers_{i}"] = {
            "self_attn": attn, "attn_norm": ln(f"{pre}self_attn_layer_norm"), "mlp_norm": ln(f"{pre}final_layer_norm"),
            "fc1": {"kernel": g(f"{pre}fc1.weight", (f, d)).T, "bias": g(f"{pre}fc1.bias", (f,))},
            "fc2": {"kernel": g(f"{pre}fc2.weight", (d, f)).T, "bias": g(f"{pre}fc2.bias", (d,))},
        }
    return cfg, front_end_config(hf_dir, m), params
