"""Import transformers' ``JanusVQVAE`` (LlamaGen-type VQGAN: encoder, quantizer, decoder) into :class:`VQGAN`.

Reads a ``save_pretrained`` directory (``config.json`` + ``*.safetensors``; never pickles). Quirks handled:

* conv kernels OIHW (torch) -> HWIO (Flax): ``transpose(2, 3, 1, 0)``; GroupNorm weight -> ``scale``;
  GroupNorm eps 1e-6 (not torch's 1e-5 default).
* downsampling pads (0, 1, 0, 1) then a stride-2 VALID conv: :class:`teal_jax.models.vqgan.Downsample`.
* transformers' Janus quantizer looks codes up by euclidean distance to the *raw* codebook (no l2
  normalisation), but ``get_codebook_entry`` (the decode path) l2-normalises the code. We match transformers:
  ``l2_normalize=False, decode_normalize=True``. The original LlamaGen normalises both the latent and the codebook
  before the lookup, so codes from that code base can differ from transformers' (and ours) on the same weights.
* attention at the lowest resolution in encoder and decoder (Janus has no ``attn_resolutions`` switch).

The torch -> Flax name table is shared with :mod:`teal_jax.convert.chameleon`.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any

import numpy as np

from teal_jax.models.vqgan import VQGANConfig

# torch module path pieces -> our Flax module names (lists of blocks become flat names).
_RENAMES = (
    (re.compile(r"\b(down|up)\.(\d+)\.(block|attn)\.(\d+)\."), r"\1_\2_\3_\4."),
    (re.compile(r"\bdown\.(\d+)\.downsample\."), r"down_\1_downsample."),
    (re.compile(r"\bup\.(\d+)\.upsample\."), r"up_\1_upsample."),
    (re.compile(r"^quantize\.embedding\.weight$"), "quantizer.codebook"),
)


def load_safetensors_dir(path: str) -> dict[str, np.ndarray]:
    """All tensors of the ``*.safetensors`` files in ``path`` as float32 numpy arrays."""
    from safetensors.numpy import load_file

    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors file (save the model with save_pretrained)")
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        try:
            tensors.update(load_file(f))
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
            raise ValueError(f"{f}: not a readable safetensors file ({e})") from e
    return {k: np.asarray(v, np.float32) for k, v in tensors.items()}


def read_hf_config(path: str) -> dict[str, Any]:
    f = os.path.join(path, "config.json")
    if not os.path.exists(f):
        raise FileNotFoundError(f"{f} does not exist (a save_pretrained directory has one)")
    with open(f) as fh:
        return json.load(fh)


def torch_to_flax_params(state_dict: dict[str, np.ndarray], *, prefix: str = "") -> dict[str, Any]:
    """A VQGAN-family torch state dict -> nested Flax params of :class:`teal_jax.models.vqgan.VQGAN`.

    ``prefix`` is stripped from the keys (e.g. ``'model.vqmodel.'`` inside a full Chameleon checkpoint); keys
    without it are ignored.
    """
    params: dict[str, Any] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        for pat, rep in _RENAMES:
            name = pat.sub(rep, name)
        *path, leaf = name.split(".")
        if name == "quantizer.codebook":
            pass
        elif leaf == "weight" and value.ndim == 4:  # conv: OIHW -> HWIO
            leaf, value = "kernel", value.transpose(2, 3, 1, 0)
        elif leaf == "weight" and value.ndim == 1:  # GroupNorm affine weight
            leaf = "scale"
        elif leaf != "bias":
            raise ValueError(f"{key}: no Flax counterpart for a tensor of shape {value.shape}")
        node = params
        for p in path:
            node = node.setdefault(p, {})
        if leaf in node:
            raise ValueError(f"{key}: two tensors map to {'/'.join(path + [leaf])}")
        node[leaf] = np.ascontiguousarray(value)
    if not params:
        raise ValueError(f"no tensor name starts with prefix {prefix!r}")
    return params


def janus_config(hf: dict[str, Any], **overrides) -> VQGANConfig:
    """transformers ``JanusVQVAEConfig`` (as a dict) -> :class:`VQGANConfig`."""
    if hf.get("double_latent"):
        raise ValueError("JanusVQVAEConfig.double_latent=True is not supported (the VQ path never uses it)")
    mults = tuple(int(m) for m in hf.get("channel_multiplier", (1, 1, 2, 2, 4)))
    n = len(mults)
    kw = dict(
        image_size=int(hf.get("num_patches", 32)) * 2 ** (n - 1),
        in_channels=int(hf.get("in_channels", 3)),
        out_channels=int(hf.get("out_channels", 3)),
        base_channels=int(hf.get("base_channels", 128)),
        channel_multipliers=mults,
        num_res_blocks=int(hf.get("num_res_blocks", 2)),
        attn_levels=(n - 1,),
        mid_attention=True,
        latent_channels=int(hf.get("latent_channels", 256)),
        embed_dim=int(hf.get("embed_dim", 8)),
        norm_groups=32,
        norm_eps=1e-6,
        quantizer="vq",
        codebook_size=int(hf.get("num_embeddings", 16384)),
        code_dim=None,
        l2_normalize=False,
        decode_normalize=True,
        beta=float(hf.get("beta", 0.25)),
    )
    kw.update(overrides)
    return VQGANConfig(**kw)


def load_janus_vqvae(path: str, **overrides) -> tuple[VQGANConfig, dict[str, Any]]:
    """``save_pretrained`` directory of a ``JanusVQVAE`` -> ``(VQGANConfig, params)`` (numpy float32 leaves)."""
    hf = read_hf_config(path)
    if hf.get("model_type") not in (None, "janus_vqgan"):
        raise ValueError(f"{path}/config.json: model_type={hf.get('model_type')!r}, expected 'janus_vqgan'")
    return janus_config(hf, **overrides), torch_to_flax_params(load_safetensors_dir(path))
