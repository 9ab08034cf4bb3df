"""Parity of the converted transformers JanusVQVAE / ChameleonVQVAE with the torch originals (float32, CPU).

Tiny random models are built offline from a config and saved with ``save_pretrained`` (safetensors).
Tolerances: codes must be equal (the test first checks that every nearest code wins by a margin of 1e-4 in
squared distance, so float32 rounding cannot flip an argmin); latents and pixels within atol 2e-4 (values O(1),
float32 with ``jax_default_matmul_precision=highest`` against torch's float32 CPU kernels).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from teal_jax.convert.chameleon import load_chameleon_vqvae  # noqa: E402
from teal_jax.convert.janus import load_janus_vqvae, torch_to_flax_params  # noqa: E402
from teal_jax.models.quantizers import l2_normalize  # noqa: E402
from teal_jax.models.vqgan import VQGAN  # noqa: E402

ATOL = 2e-4


def _spread_codebook(model, pixels):
    """Random init leaves the codebook far from the latents; re-draw it at the latents' scale so many codes
    are used (a parity test where every code is 0 proves nothing)."""
    with torch.no_grad():
        z = model.quant_conv(model.encoder(pixels))
        # latents of O(1) (random init gives ~0.03), so float32 rounding is small against the code margins
        scale = 1.0 / z.std()
        model.quant_conv.weight.mul_(scale)
        model.quant_conv.bias.mul_(scale)
        z = (z * scale).permute(0, 2, 3, 1).reshape(-1, model.quantize.embedding_dim)
        g = torch.Generator().manual_seed(0)
        idx = torch.randint(0, z.shape[0], (model.quantize.num_embeddings,), generator=g)
        noise = 0.1 * z.std() * torch.randn(model.quantize.num_embeddings, z.shape[1], generator=g)
        model.quantize.embedding.weight.copy_(z[idx] + noise)


def _margin(z, codebook):
    d = ((z[:, None, :].astype(np.float64) - codebook[None].astype(np.float64)) ** 2).sum(-1)
    d.sort(axis=1)
    return float((d[:, 1] - d[:, 0]).min())


@pytest.fixture(scope="module")
def janus(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.JanusVQVAEConfig(
        embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32, channel_multiplier=[1, 2],
        num_res_blocks=1, num_patches=8, in_channels=3, out_channels=3,
    )
    model = transformers.JanusVQVAE(cfg).eval()
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    _spread_codebook(model, pixels)
    path = tmp_path_factory.mktemp("janus")
    model.save_pretrained(path, safe_serialization=True)
    assert not list(path.glob("*.bin")), "must be safetensors"
    return model, pixels, str(path)


def test_janus_encode_decode_parity(janus):
    model, pixels, path = janus
    cfg, params = load_janus_vqvae(path)
    assert cfg.attn_levels == (1,) and cfg.downsample_factor == 2 and cfg.token_grid == (8, 8)
    assert not cfg.l2_normalize and cfg.decode_normalize  # the transformers quirk, asserted below
    vq = VQGAN(cfg)
    x = jnp.asarray(pixels.permute(0, 2, 3, 1).numpy())
    with torch.no_grad():
        ref = model.encode(pixels)
        ref_codes = ref.image_tokens.reshape(2, 8, 8).numpy()
        ref_pixels = model.decode(ref.image_tokens.reshape(2, -1)).permute(0, 2, 3, 1).numpy()
        z_ref = model.quant_conv(model.encoder(pixels)).permute(0, 2, 3, 1).reshape(-1, 8).numpy()
    cb = np.asarray(params["quantizer"]["codebook"])
    assert _margin(z_ref, cb) > 1e-4
    assert len(np.unique(ref_codes)) >= 16  # a meaningful mix of codes

    variables = {"params": params}
    q = jax.jit(lambda v, x: vq.apply(v, x, method=VQGAN.encode))(variables, x)
    np.testing.assert_array_equal(np.asarray(q.codes), ref_codes)
    # quantized latent of the forward (un-normalised code, as transformers' quantizer returns)
    np.testing.assert_allclose(
        np.asarray(q.quantized), ref.quantized_last_hidden_state.permute(0, 2, 3, 1).numpy(), atol=ATOL
    )
    out = jax.jit(lambda v, c: vq.apply(v, c, method=VQGAN.decode_codes))(variables, q.codes)
    err = float(np.abs(np.asarray(out) - ref_pixels).max())
    assert err < ATOL, err
    # The decode path normalises the code (get_codebook_entry); the lookup does not: they really differ here.
    norms = np.linalg.norm(cb, axis=1)
    assert np.abs(norms - 1).max() > 0.1
    np.testing.assert_allclose(np.asarray(l2_normalize(jnp.asarray(cb))), cb / norms[:, None], atol=1e-6)


def test_janus_param_tree_matches_model_init(janus):
    """Every converted tensor lands on a parameter of our model with the same shape, and none is missing."""
    _, _, path = janus
    cfg, params = load_janus_vqvae(path)
    from flax import linen as nn

    init = nn.unbox(jax.eval_shape(VQGAN(cfg).init, jax.random.key(0), jnp.zeros((1, 16, 16, 3))))["params"]
    shapes = lambda t: jax.tree_util.tree_map_with_path(lambda p, a: np.shape(a), t)  # noqa: E731
    assert jax.tree.structure(shapes(init)) == jax.tree.structure(shapes(params))
    for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(params), strict=True):
        assert np.shape(a) == np.shape(b)


@pytest.fixture(scope="module")
def chameleon(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.ChameleonVQVAEConfig(
        embed_dim=16, num_embeddings=128, latent_channels=32, resolution=32, in_channels=3, base_channels=32,
        channel_multiplier=[1, 1, 2], num_res_blocks=1, attn_resolutions=[16], attn_type="vanilla",
    )
    model = transformers.ChameleonVQVAE(cfg).eval()
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    _spread_codebook(model, pixels)
    path = tmp_path_factory.mktemp("chameleon")
    model.save_pretrained(path, safe_serialization=True)
    return model, pixels, str(path)


def test_chameleon_encoder_parity(chameleon):
    model, pixels, path = chameleon
    cfg, params = load_chameleon_vqvae(path)
    # attention at the level running at 16x16 (level 1 of 32 -> 16 -> 8), not at the lowest one
    assert cfg.attn_levels == (1,) and cfg.mid_attention and cfg.token_grid == (8, 8)
    assert "decoder" not in params
    with torch.no_grad():
        ref = model.encode(pixels)
        z_ref = model.quant_conv(model.encoder(pixels)).permute(0, 2, 3, 1).numpy()
    ref_codes = ref.image_tokens.reshape(2, 8, 8).numpy()  # transformers returns them flat [B*h*w]
    assert _margin(z_ref.reshape(-1, 16), np.asarray(params["quantizer"]["codebook"])) > 1e-4
    assert len(np.unique(ref_codes)) >= 16
    vq = VQGAN(cfg)
    x = jnp.asarray(pixels.permute(0, 2, 3, 1).numpy())
    # the pre-quantizer latent first (a mismatch here localises a bug to the convnet)
    z = jax.jit(lambda v, x: vq.apply(v, x, method=lambda m, x: m.quant_conv(m.encoder(x))))({"params": params}, x)
    np.testing.assert_allclose(np.asarray(z), z_ref, atol=ATOL)
    q = jax.jit(lambda v, x: vq.apply(v, x, method=VQGAN.encode))({"params": params}, x)
    np.testing.assert_array_equal(np.asarray(q.codes), ref_codes)
    np.testing.assert_allclose(
        np.asarray(q.quantized), ref.quantized_last_hidden_state.permute(0, 2, 3, 1).numpy(), atol=ATOL
    )


def test_chameleon_asymmetric_pad_matters(chameleon):
    """The (0,1,0,1) pad + VALID stride-2 conv differs from a symmetric pad of 1 (torch's padding=1, the naive
    port). XLA's 'SAME' pads (0, 1) for a 3x3 stride-2 conv on an even size, so it agrees; we pad explicitly."""
    _, pixels, path = chameleon
    cfg, params = load_chameleon_vqvae(path)
    x = jnp.asarray(pixels.permute(0, 2, 3, 1).numpy())
    k = jnp.asarray(params["encoder"]["down_0_downsample"]["conv"]["kernel"])
    h = jax.random.normal(jax.random.key(0), (1, 8, 8, k.shape[2]))
    dn = ("NHWC", "HWIO", "NHWC")
    ours = jax.lax.conv_general_dilated(jnp.pad(h, ((0, 0), (0, 1), (0, 1), (0, 0))), k, (2, 2), "VALID",
                                        dimension_numbers=dn)
    same = jax.lax.conv_general_dilated(h, k, (2, 2), "SAME", dimension_numbers=dn)
    sym = jax.lax.conv_general_dilated(h, k, (2, 2), ((1, 1), (1, 1)), dimension_numbers=dn)
    th = torch.nn.functional.conv2d(torch.nn.functional.pad(torch.from_numpy(np.array(h)).permute(0, 3, 1, 2),
                                                            (0, 1, 0, 1)),
                                    torch.from_numpy(np.array(k).transpose(3, 2, 0, 1)), stride=2)
    np.testing.assert_allclose(np.asarray(ours), th.permute(0, 2, 3, 1).numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(same), atol=1e-6)
    assert float(jnp.abs(ours - sym).max()) > 1e-2
    del x, cfg


def test_groupnorm_eps_is_set():
    """eps 1e-6 (Chameleon/Janus) vs torch's 1e-5 default matters for low-variance activations."""
    from teal_jax.models.vqgan import VQGANConfig, _norm

    cfg = VQGANConfig(base_channels=32, channel_multipliers=(1,), attn_levels=(), latent_channels=32)
    x = 3e-3 * jax.random.normal(jax.random.key(0), (1, 4, 4, 64))  # variance ~1e-5, the size of eps
    n = _norm(cfg, "n")
    y = n.apply(n.init(jax.random.key(0), x), x)
    xt = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)
    ref = torch.nn.functional.group_norm(xt, 32, eps=1e-6).permute(0, 2, 3, 1).numpy()
    ref_default = torch.nn.functional.group_norm(xt, 32).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(y), ref, atol=1e-4)
    assert np.abs(ref - ref_default).max() > 0.05


def test_groupnorm_variance_is_two_pass():
    """We compute E[(x - mean)^2] (Flax use_fast_variance=False). E[x^2] - mean^2, which torch's CPU kernel
    uses, cancels in float32 when |mean| >> std; against float64 ours stays within 1e-3 where that is off by ~0.1."""
    from teal_jax.models.vqgan import VQGANConfig, _norm

    cfg = VQGANConfig(base_channels=32, channel_multipliers=(1,), attn_levels=(), latent_channels=32)
    x = 1.0 + 1e-3 * jax.random.normal(jax.random.key(0), (1, 4, 4, 32))
    n = _norm(cfg, "n")
    y = n.apply(n.init(jax.random.key(0), x), x)
    xn = np.asarray(x, np.float64)
    ref = (xn - xn.mean((1, 2), keepdims=True)) / np.sqrt(xn.var((1, 2), keepdims=True) + 1e-6)
    assert np.abs(np.asarray(y) - ref).max() < 1e-3


def test_converter_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_janus_vqvae(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "janus_vqgan"}')
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_janus_vqvae(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="model.safetensors"):
        load_janus_vqvae(str(tmp_path))
    with pytest.raises(ValueError, match="no Flax counterpart"):
        torch_to_flax_params({"encoder.conv_in.weight_g": np.zeros((2, 2), np.float32)})
