"""Tokenizer code vectors (what TEAL's codebook-initialised embedding projects) equal the quantizers' own decoding."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from configs.audio import speech_tiny
from configs.image import digits_tiny
from teal_jax.models.codec import Codec, CodecConfig
from teal_jax.models.vqgan import VQGAN, VQGANConfig
from teal_jax.tokenizers.audio import AudioTokenizer
from teal_jax.tokenizers.image import ImageTokenizer


def _split(variables):
    return nn.unbox(variables["params"]), {k: v for k, v in variables.items() if k != "params"}


def test_image_code_vectors_are_the_quantizer_decoding():
    cfg = VQGANConfig.from_config(digits_tiny.get_config("smoke").model)
    tok = ImageTokenizer(cfg, *_split(jax.jit(VQGAN(cfg).init)(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))))
    cv = tok.code_vectors()
    assert cv.shape == (tok.vocab_size, 3) and cv.dtype == np.float32
    # FSQ [8, 5, 5]: the vectors are the distinct grid points in [-1, 1].
    assert len(np.unique(cv, axis=0)) == tok.vocab_size and np.abs(cv).max() <= 1.0
    codes = jnp.asarray([[[0, 5], [7, tok.vocab_size - 1]]], jnp.int32)
    q = np.asarray(tok.model.apply(tok.variables, codes, method=lambda m, c: m.quantizer.decode_codes(c)))
    np.testing.assert_array_equal(q[0].reshape(4, -1), cv[np.asarray(codes).reshape(-1)])


def test_audio_code_vectors_sum_to_the_rvq_decoding():
    cfg = CodecConfig.from_config(speech_tiny.get_config("smoke").model, dtype="float32")
    tok = AudioTokenizer(cfg, *_split(jax.jit(Codec(cfg).init)(jax.random.key(0), jnp.zeros((1, 1600, 1)))))
    cv = tok.code_vectors()
    assert cv.shape == (cfg.num_levels, tok.codebook_size, cfg.hidden_size)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, tok.codebook_size, (1, 5, cfg.num_levels)).astype(np.int32)
    z = np.asarray(tok.model.apply(tok.variables, jnp.asarray(codes), method=lambda m, c: m.quantizer.decode_codes(c)))
    expected = sum(cv[l][codes[0, :, l]] for l in range(cfg.num_levels))
    np.testing.assert_allclose(z[0], expected, rtol=0, atol=1e-6)  # float32 sums in another order
