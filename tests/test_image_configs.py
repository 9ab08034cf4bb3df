"""The image configs build valid models; vqgan_256 has exactly the parameters of the same-shaped transformers
JanusVQVAE (an independent count of the same architecture)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from configs.image import digits_tiny, vqgan_256
from teal_jax import config as config_lib
from teal_jax.models.vqgan import VQGAN, VQGANConfig


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_vqgan_256_matches_janus_parameter_count():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    c = vqgan_256.get_config()
    config_lib.validate(c)
    cfg = VQGANConfig.from_config(c.model)
    assert cfg.token_grid == (16, 16) and cfg.num_codes == 16384 and cfg.downsample_factor == 16
    ours = nn.unbox(jax.eval_shape(VQGAN(cfg).init, jax.random.key(0), jnp.zeros((1, 256, 256, 3))))["params"]
    hf = transformers.JanusVQVAEConfig(embed_dim=8, num_embeddings=16384, latent_channels=256, base_channels=128,
                                       channel_multiplier=[1, 1, 2, 2, 4], num_res_blocks=2, num_patches=16)
    with torch.device("meta"):
        ref = transformers.JanusVQVAE(hf)
    assert _count(ours) == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("mod,arg", [(digits_tiny, None), (digits_tiny, "vq,gan"), (digits_tiny, "coarse,smoke"),
                                     (digits_tiny, "grid8x8_9"), (vqgan_256, "runlocal"), (vqgan_256, "fsq")])
def test_configs_validate_and_build(mod, arg):
    c = mod.get_config(arg)
    config_lib.validate(c)
    cfg = VQGANConfig.from_config(c.model)
    assert c.data.image_size == cfg.image_size
    shapes = jax.eval_shape(VQGAN(cfg).init, jax.random.key(0), jnp.zeros((1, cfg.image_size, cfg.image_size,
                                                                            cfg.in_channels)))
    assert _count(nn.unbox(shapes)) > 0


@pytest.mark.parametrize("arg,grid,codes", [(None, (8, 8), 200), ("coarse", (4, 4), 64), ("grid8x8_9", (8, 8), 9)])
def test_digits_tiny_token_grids(arg, grid, codes):
    """The demo's coarse tokenizer: 4x4 tokens over 64 codes; grid8x8_9: 8x8 over 9; the default stays 8x8 over 200.
    Shapes only (eval_shape): the encoder really yields that grid of codes."""
    cfg = VQGANConfig.from_config(digits_tiny.get_config(arg).model)
    assert cfg.token_grid == grid and cfg.num_codes == codes
    model = VQGAN(cfg)
    x = jnp.zeros((2, 32, 32, 1))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    codes_shape = jax.eval_shape(lambda v: model.apply(v, x, method=VQGAN.encode).codes, variables)
    assert codes_shape.shape == (2, *grid) and codes_shape.dtype == jnp.int32


def test_digits_tiny_quantizer_variants_exclude_each_other():
    for arg in ("coarse,grid8x8_9", "coarse,vq", "grid8x8_9,vq"):
        with pytest.raises(ValueError, match="exclude each other; pick one"):
            digits_tiny.get_config(arg)


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="unknown variant"):
        digits_tiny.get_config("huge")
    with pytest.raises(ValueError, match="unknown variant"):
        vqgan_256.get_config("tiny")
