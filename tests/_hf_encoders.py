"""Tiny random transformers encoders (Whisper, CLIP, SigLIP) built offline and saved as checkpoint directories."""

from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WHISPER_TINY = dict(d_model=32, encoder_layers=3, encoder_attention_heads=4, encoder_ffn_dim=64, num_mel_bins=80,
                    max_source_positions=50)  # 1 s windows: 100 mel frames
VISION_TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                   patch_size=8)


def save_tiny_whisper(out_dir: str, kind: str = "WhisperForConditionalGeneration", seed: int = 0,
                      feature_extractor: bool = True, **overrides):
    """A random ``kind`` ('WhisperModel' / 'WhisperForConditionalGeneration') saved to ``out_dir``; returns it (torch,
    eval mode). With ``feature_extractor`` a ``WhisperFeatureExtractor`` whose window is the encoder's (2 *
    max_source_positions mel frames, whole seconds) is saved beside it."""
    import torch
    import transformers

    torch.manual_seed(seed)
    kw = {**WHISPER_TINY, **overrides}
    cfg = transformers.WhisperConfig(
        **kw, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64, max_target_positions=16,
        vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
        begin_suppress_tokens=None, suppress_tokens=None)
    model = getattr(transformers, kind)(cfg).eval()
    model.save_pretrained(out_dir)
    if feature_extractor:
        seconds = 2 * kw["max_source_positions"] * 160 / 16000
        if seconds != int(seconds):
            raise ValueError(f"max_source_positions={kw['max_source_positions']}: windows must be whole seconds")
        transformers.WhisperFeatureExtractor(feature_size=kw["num_mel_bins"], chunk_length=int(seconds)
                                             ).save_pretrained(out_dir)
    return model


def save_tiny_vision(out_dir: str, kind: str = "CLIPVisionModel", seed: int = 0, **overrides):
    """A random CLIP/SigLIP vision model (``CLIPVisionModel``, ``CLIPModel``, ``SiglipVisionModel``) saved to
    ``out_dir``; returns (torch model in eval mode, its vision tower)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    vc = {**VISION_TINY, **overrides}
    if kind == "CLIPModel":
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=99)
        model = transformers.CLIPModel(transformers.CLIPConfig(vision_config=vc, text_config=text)).eval()
        tower = model.vision_model
    elif kind == "SiglipVisionModel":
        model = tower = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**vc)).eval()
    else:
        model = tower = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**vc)).eval()
    model.save_pretrained(out_dir)
    return model, tower


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
