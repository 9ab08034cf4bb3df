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


@pytest.mark.parametrize("mod,arg", [(digits_tiny, None), (digits_tiny, "vq,gan"), (vqgan_256, "runlocal"),
                                     (vqgan_256, "fsq")])
def test_configs_validate_and_build(mod, arg):
    c = mod.get_config(arg)
    config_lib.validate(c)
    cfg = VQGANConfig.from_config(c.model)
    assert c.data.image_size == cfg.image_size
    shapes = jax.eval_shape(VQGAN(cfg).init, jax.random.key(0), jnp.zeros((1, cfg.image_size, cfg.image_size,
                                                                            cfg.in_channels)))
    assert _count(nn.unbox(shapes)) > 0


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="unknown variant"):
        digits_tiny.get_config("huge")
    with pytest.raises(ValueError, match="unknown variant"):
        vqgan_256.get_config("tiny")
