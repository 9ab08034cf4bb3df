"""ImageTokenizer: input handling, jit/sharding, files, errors (a small random VQGAN; exact-equality checks)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from PIL import Image

from teal_jax.models.vqgan import VQGAN, VQGANConfig
from teal_jax.parallel import sharding as shd
from teal_jax.tokenizers.image import ImageTokenizer

CFG = VQGANConfig(image_size=16, in_channels=3, out_channels=3, base_channels=8, channel_multipliers=(1, 2),
                  num_res_blocks=1, attn_levels=(1,), latent_channels=8, embed_dim=4, norm_groups=4,
                  quantizer="vq", codebook_size=32, l2_normalize=True)


@pytest.fixture(autouse=True, scope="module")
def _fast_prng():
    """rbg keys: XLA:CPU takes ~2 s to compile each threefry draw, which dominates these small models' init."""
    with jax.default_prng_impl("rbg"):
        yield


@pytest.fixture(scope="module")
def tok():
    params = nn.unbox(jax.jit(VQGAN(CFG).init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3))))["params"]
    return ImageTokenizer(CFG, params)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)


def test_encode_decode_shapes_and_consistency(tok, images):
    codes = tok.encode(images)
    assert codes.shape == (8, 8, 8) and codes.dtype == jnp.int32 and tok.token_grid == (8, 8)
    assert len(np.unique(np.asarray(codes))) > 1
    out = tok.decode(codes)
    assert out.shape == (8, 16, 16, 3) and out.dtype == jnp.uint8
    # the round trip through the tokenizer equals the model's own reconstruction, quantised to uint8
    recon, q = jax.jit(tok.model.apply)(tok.variables, jnp.asarray(images, jnp.float32) / 127.5 - 1.0)
    np.testing.assert_array_equal(np.asarray(q.codes), np.asarray(codes))
    ref = np.clip(np.round((np.asarray(recon) + 1) * 127.5), 0, 255).astype(np.uint8)
    assert np.abs(ref.astype(int) - np.asarray(out).astype(int)).max() <= 1  # rounding at .5 may differ by 1


def test_uint8_float_gray_rgba_agree(tok, images):
    codes = np.asarray(tok.encode(images))
    np.testing.assert_array_equal(np.asarray(tok.encode(images.astype(np.float32) / 255.0)), codes)
    rgba = np.concatenate([images, np.full(images.shape[:3] + (1,), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(np.asarray(tok.encode(rgba)), codes)
    gray = images[..., 0]
    np.testing.assert_array_equal(np.asarray(tok.encode(gray)), np.asarray(tok.encode(np.repeat(gray[..., None],
                                                                                                  3, -1))))


def test_resize_or_error(tok, images):
    big = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)  # 32x32
    assert tok.encode(big).shape == (8, 8, 8)
    strict = ImageTokenizer(CFG, tok.variables["params"], resize=False)
    with pytest.raises(ValueError, match="32x32 but the tokenizer expects 16x16"):
        strict.encode(big)
    with pytest.raises(ValueError, match=r"float pixels must lie in \[0, 1\]"):
        tok.encode(images.astype(np.float32))
    nan = images.astype(np.float32) / 255.0
    nan.flat[0] = np.nan
    with pytest.raises(ValueError, match="1 NaN/Inf pixel value"):
        tok.encode(nan)
    with pytest.raises(ValueError, match="must be"):
        tok.encode(images[..., :2])
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 32\)"):
        tok.decode(np.full((1, 8, 8), 32, np.int32))
    with pytest.raises(ValueError, match="integer"):
        tok.decode(np.zeros((1, 8, 8), np.float32))


def test_sharded_batch(tok, images, devices):
    mesh = shd.make_mesh((8, 1, 1), devices)  # the project's mesh: ('data', 'fsdp', 'tensor'), Auto axes
    sharded = jax.device_put(images, shd.batch_sharding(mesh))
    codes = tok.encode(sharded)
    np.testing.assert_array_equal(np.asarray(codes), np.asarray(tok.encode(images)))
    assert len(codes.sharding.device_set) == 8  # the batch stays spread over the devices
    out = np.asarray(tok.decode(codes)).astype(int)
    # the sharded program may round a float32 pixel that sits at .5 the other way: at most 1 grey level
    assert np.abs(out - np.asarray(tok.decode(np.asarray(codes))).astype(int)).max() <= 1


def test_encode_files(tok, images, tmp_path):
    paths = []
    for i, mode in enumerate(["RGB", "L", "RGBA"]):
        arr = images[i] if mode == "RGB" else (images[i, ..., 0] if mode == "L" else
                                               np.concatenate([images[i], np.full((16, 16, 1), 255, np.uint8)], -1))
        p = tmp_path / f"img{i}.png"
        Image.fromarray(arr, mode=mode).save(p)
        paths.append(p)
    codes = np.asarray(tok.encode_files(paths))
    np.testing.assert_array_equal(codes[0], np.asarray(tok.encode(images[:1]))[0])
    np.testing.assert_array_equal(codes[1], np.asarray(tok.encode(images[1:2, ..., 0]))[0])
    np.testing.assert_array_equal(codes[2], np.asarray(tok.encode(images[2:3]))[0])
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(Image.open(paths[0]).tobytes()[:100])  # raw bytes, no PNG header
    with pytest.raises(ValueError, match="corrupt.png: not a readable image"):
        tok.encode_files([paths[0], bad])
    trunc = tmp_path / "truncated.png"
    trunc.write_bytes(paths[0].read_bytes()[:60])
    with pytest.raises(ValueError, match="truncated.png"):
        tok.encode_files([trunc])
    with pytest.raises(ValueError, match="missing.png: image file not found"):
        tok.encode_files([tmp_path / "missing.png"])


def test_encoder_only_params_refuse_decode(tok):
    params = {k: v for k, v in tok.variables["params"].items() if k not in ("decoder", "post_quant_conv")}
    enc = ImageTokenizer(CFG, params)
    with pytest.raises(ValueError, match="no decoder"):
        enc.decode(np.zeros((1, 8, 8), np.int32))
