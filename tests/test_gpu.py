"""GPU-only checks (skipped where no GPU is present; run on a GPU with
``JAX_PLATFORMS=cuda,cpu python -m pytest -m gpu tests/test_gpu.py``).

cuDNN fused attention must agree with the XLA reference path, for plain causal rows and for packed rows with a
segment mask, in bf16 (tolerance: 2e-2 absolute on logits of order 1, the bf16 rounding of a 2-layer model).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from teal_jax.models.transformer import TransformerConfig, TransformerLM

pytestmark = pytest.mark.gpu

needs_gpu = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (set JAX_PLATFORMS=cuda,cpu)")


def _logits(impl, tokens, segment_ids=None, positions=None):
    cfg = TransformerConfig(vocab_size=512, embed_dim=256, num_layers=2, num_heads=8, num_kv_heads=2, head_dim=64,
                            mlp_dim=512, dtype="bfloat16", attention_impl=impl)
    model = TransformerLM(cfg)
    params = nn.unbox(model.init(jax.random.key(0), tokens)["params"])
    return np.asarray(jax.jit(model.apply)({"params": params}, tokens, positions, segment_ids), np.float32)


@needs_gpu
def test_cudnn_attention_matches_xla_causal():
    tokens = jax.random.randint(jax.random.key(1), (4, 256), 0, 512)
    a, b = _logits("cudnn", tokens), _logits("xla", tokens)
    np.testing.assert_allclose(a, b, atol=2e-2)


@needs_gpu
def test_cudnn_attention_matches_xla_packed():
    tokens = jax.random.randint(jax.random.key(1), (4, 256), 0, 512)
    seg = jnp.concatenate([jnp.ones((4, 100), jnp.int32), 2 * jnp.ones((4, 156), jnp.int32)], axis=1)
    pos = jnp.concatenate([jnp.arange(100), jnp.arange(156)])[None].repeat(4, 0)
    a, b = _logits("cudnn", tokens, seg, pos), _logits("xla", tokens, seg, pos)
    np.testing.assert_allclose(a, b, atol=2e-2)
