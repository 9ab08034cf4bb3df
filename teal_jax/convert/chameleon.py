"""Import the encoder + quantizer of transformers' ``ChameleonVQVAE`` into :class:`VQGAN`.

transformers ships Chameleon's VQGAN without a decoder, so the converted params have no ``decoder`` /
``post_quant_conv`` entries: use ``VQGAN.apply(..., method=VQGAN.encode)``. Quirks (see
:mod:`teal_jax.convert.janus` for the shared name table and conv layout): attention only at the levels whose
resolution is in ``attn_resolutions`` (and only with ``attn_type='vanilla'``, which also switches the mid-block
attention); plain euclidean lookup on the raw codebook; GroupNorm eps 1e-6; pad (0, 1, 0, 1) before each
stride-2 VALID conv. The input resolution is ``config.resolution`` (512 by default, 32x32 tokens).
"""

from __future__ import annotations

from typing import Any

from teal_jax.convert.janus import load_safetensors_dir, read_hf_config, torch_to_flax_params
from teal_jax.models.vqgan import VQGANConfig


def chameleon_config(hf: dict[str, Any], **overrides) -> VQGANConfig:
    """transformers ``ChameleonVQVAEConfig`` (as a dict) -> :class:`VQGANConfig`."""
    if hf.get("double_latent"):
        raise ValueError("ChameleonVQVAEConfig.double_latent=True is not supported")
    mults = tuple(int(m) for m in hf.get("channel_multiplier", (1, 1, 2, 2, 4)))
    resolution = int(hf.get("resolution", 512))
    vanilla = hf.get("attn_type", "vanilla") == "vanilla"
    attn_res = set(hf.get("attn_resolutions") or ())
    # transformers halves curr_res after every level but the last: level i runs at resolution / 2**i.
    attn_levels = tuple(i for i in range(len(mults)) if vanilla and resolution // 2**i in attn_res)
    kw = dict(
        image_size=resolution,
        in_channels=int(hf.get("in_channels", 3)),
        out_channels=int(hf.get("in_channels", 3)),
        base_channels=int(hf.get("base_channels", 128)),
        channel_multipliers=mults,
        num_res_blocks=int(hf.get("num_res_blocks", 2)),
        attn_levels=attn_levels,
        mid_attention=vanilla,
        latent_channels=int(hf.get("latent_channels", 256)),
        embed_dim=int(hf.get("embed_dim", 256)),
        norm_groups=32,
        norm_eps=1e-6,
        quantizer="vq",
        codebook_size=int(hf.get("num_embeddings", 8192)),
        code_dim=None,
        l2_normalize=False,
        decode_normalize=False,
        beta=float(hf.get("beta", 0.25)),
    )
    kw.update(overrides)
    return VQGANConfig(**kw)


def load_chameleon_vqvae(path: str, **overrides) -> tuple[VQGANConfig, dict[str, Any]]:
    """``save_pretrained`` directory of a ``ChameleonVQVAE`` -> ``(VQGANConfig, params)`` (encoder + quantizer).

    A full Chameleon checkpoint keeps the tokenizer under ``model.vqmodel.``; that prefix is detected.
    """
    hf = read_hf_config(path)
    if "vq_config" in hf:  # a full ChameleonForConditionalGeneration config
        hf = hf["vq_config"]
    elif hf.get("model_type") not in (None, "chameleon_vqgan"):
        raise ValueError(f"{path}/config.json: model_type={hf.get('model_type')!r}, expected 'chameleon_vqgan'")
    tensors = load_safetensors_dir(path)
    prefix = "model.vqmodel." if any(k.startswith("model.vqmodel.") for k in tensors) else ""
    return chameleon_config(hf, **overrides), torch_to_flax_params(tensors, prefix=prefix)
