"""Tokenizer speed options: LSTM scan (float64 reference, unroll), batch/length bucketing (equal outputs, bounded
compilations), bfloat16 compute (runs; codes agree with float32 on most positions)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from teal_jax.models.audio_layers import LSTM
from teal_jax.models.codec import Codec, CodecConfig
from teal_jax.models.vqgan import VQGAN, VQGANConfig
from teal_jax.tokenizers.audio import AudioTokenizer
from teal_jax.tokenizers.image import ImageTokenizer


def _lstm_ref(x, params, num_layers):
    """float64 numpy LSTM stack (torch's gate order i, f, g, o) plus the input, as EnCodec."""
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))  # noqa: E731
    h_in = x.astype(np.float64)
    for l in range(num_layers):
        w_ih, w_hh = (np.asarray(params[f"weight_{k}_l{l}"], np.float64) for k in ("ih", "hh"))
        b = np.asarray(params[f"bias_ih_l{l}"], np.float64) + np.asarray(params[f"bias_hh_l{l}"], np.float64)
        h = np.zeros((x.shape[0], x.shape[2]))
        c = np.zeros_like(h)
        out = []
        for t in range(x.shape[1]):
            i, f, g, o = np.split(h_in[:, t] @ w_ih + h @ w_hh + b, 4, axis=-1)
            c = sig(f) * c + sig(i) * np.tanh(g)
            h = sig(o) * np.tanh(c)
            out.append(h)
        h_in = np.stack(out, 1)
    return h_in + x


def test_lstm_matches_float64_reference_and_unroll():
    x = np.random.default_rng(0).standard_normal((3, 37, 16)).astype(np.float32)
    v = nn.unbox(LSTM(2).init(jax.random.key(0), x))
    names = sorted(v["params"])
    assert names == sorted(f"{k}_l{l}" for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh") for l in (0, 1))
    ref = _lstm_ref(x, v["params"], 2)
    base = np.asarray(LSTM(2).apply(v, x))
    assert np.max(np.abs(base - ref)) < 1e-5, np.max(np.abs(base - ref))
    for unroll in (5,):  # 37 steps: 7 full unrolled trips and a remainder
        m = LSTM(2, unroll=unroll)
        assert jax.tree.structure(nn.unbox(m.init(jax.random.key(0), x))) == jax.tree.structure(v)
        np.testing.assert_allclose(np.asarray(m.apply(v, x)), base, rtol=0, atol=1e-6)


# ---- image tokenizer ---------------------------------------------------------------------------------------------

IMG_CFG = VQGANConfig(image_size=16, in_channels=3, out_channels=3, base_channels=8, channel_multipliers=(1, 2),
                      num_res_blocks=1, attn_levels=(1,), latent_channels=8, embed_dim=4, norm_groups=4,
                      quantizer="vq", codebook_size=32, l2_normalize=True)


@pytest.fixture(scope="module")
def img():
    """(float32 tokenizer without buckets, bucketed one with max_batch=4, params): shared so programs compile once."""
    with jax.default_prng_impl("rbg"):  # XLA:CPU compiles threefry draws slowly
        params = nn.unbox(jax.jit(VQGAN(IMG_CFG).init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3))))["params"]
    return ImageTokenizer(IMG_CFG, params, bucket=False), ImageTokenizer(IMG_CFG, params, max_batch=4), params


def test_image_batch_buckets_equal_unbucketed_and_bound_compiles(img):
    plain, tok, _ = img
    images = np.random.default_rng(0).integers(0, 256, (9, 16, 16, 3), dtype=np.uint8)
    codes = tok.encode(images)  # 9 -> pieces of 4 + 4 + 1
    assert codes.shape == (9, 8, 8)
    ref = np.concatenate([np.asarray(plain.encode(images[s : s + 3])) for s in (0, 3, 6)])  # one [3] program
    np.testing.assert_array_equal(np.asarray(codes), ref)
    assert len(np.unique(ref)) >= 16  # a model whose codes vary (31 of 32 used): the equality means something
    np.testing.assert_array_equal(np.asarray(tok.encode(images[:3])), ref[:3])  # 3 -> padded to 4
    pix = np.asarray(tok.decode(codes[:3])).astype(int)
    # a float32 pixel at .5 may round the other way in a differently shaped program: at most 1 grey level
    assert np.abs(pix - np.asarray(plain.decode(codes[:3])).astype(int)).max() <= 1
    for n in (1, 4, 5, 7, 8):
        assert tok.encode(images[:n]).shape[0] == n
    # 7 batch sizes (1, 3, 4, 5, 7, 8, 9) through buckets {1, 4}: two programs
    assert tok.traces["encode"] == 2 and tok.traces["decode"] == 1, tok.traces
    if hasattr(tok._encode, "_cache_size"):
        assert tok._encode._cache_size() == 2


def test_image_bfloat16_runs_and_mostly_agrees(img):
    _, tok, params = img
    images = np.random.default_rng(1).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    c32 = np.asarray(tok.encode(images))
    tok16 = ImageTokenizer(IMG_CFG, params, dtype="bfloat16", max_batch=8)
    assert tok16.config.dtype == "bfloat16"
    c16 = np.asarray(tok16.encode(images))
    agree = float(np.mean(c16 == c32))
    print(f"image bfloat16 vs float32 code agreement: {agree:.3f}")
    assert agree > 0.8, agree
    with pytest.raises(ValueError, match="dtype='float64'"):
        ImageTokenizer(IMG_CFG, params, dtype="float64")


# ---- audio tokenizer ---------------------------------------------------------------------------------------------

AUD_CFG = CodecConfig(sample_rate=8000, num_filters=4, hidden_size=16, ratios=(2, 4), num_lstm_layers=1,
                      num_levels=3, codebook_size=16, causal=True)  # hop 8


@pytest.fixture(scope="module")
def aud():
    """(tokenizer without buckets, bucketed one (max_batch 4, 16-frame lengths), params); 800-sample chunks."""
    with jax.default_prng_impl("rbg"):
        init = jax.jit(lambda k: Codec(AUD_CFG).init({"params": k, "dropout": k}, jnp.zeros((1, 64, 1)), train=False))
        params = init(jax.random.key(0))["params"]
    return (AudioTokenizer(AUD_CFG, params, chunk_seconds=0.1, bucket=False),
            AudioTokenizer(AUD_CFG, params, chunk_seconds=0.1, max_batch=4, length_bucket_frames=16), params)


def _clips(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [(0.3 * np.sin(np.arange(n) * rng.uniform(0.05, 0.5)) + 0.05 * rng.standard_normal(n)).astype(np.float32)
            for n in lengths]


@pytest.mark.slow  # opt-in length bucketing (~12 s on 2 cores); run with -m slow (CI time budget)
def test_audio_buckets_equal_unbucketed_and_bound_compiles(aud):
    plain, tok, _ = aud
    # 3 clips -> 4 rows; 1004 samples -> chunks of 800 + 204 samples, the second padded to 256 (32 frames)
    clips = _clips([160, 248, 1004])
    codes, frames = tok.encode(clips, 8000)
    ref, ref_frames = plain.encode(clips, 8000)
    assert codes.shape == ref.shape == (3, 126, 3) and frames.tolist() == ref_frames.tolist() == [20, 31, 126]
    assert min(len(np.unique(np.asarray(ref)[..., l])) for l in range(3)) >= 4  # varied codes (6-8 of 16)
    # a causal codec: whole frames equal exactly; only clip 2's partial last frame (1004 = 125.5 hops) may differ
    np.testing.assert_array_equal(np.asarray(codes)[:2], np.asarray(ref)[:2])
    np.testing.assert_array_equal(np.asarray(codes)[2, :125], np.asarray(ref)[2, :125])
    print(f"partial last frame: {int(np.sum(np.asarray(codes)[2, 125] == np.asarray(ref)[2, 125]))}/3 levels equal")
    wav, n = tok.decode(codes, frames)
    ref_wav, ref_n = plain.decode(codes, frames)
    assert n.tolist() == ref_n.tolist()
    np.testing.assert_allclose(np.asarray(wav), np.asarray(ref_wav), rtol=0, atol=1e-5)
    # 4 new batch sizes/lengths inside the same buckets ([4, 800] + [4, 256] samples) compile nothing new
    before = dict(tok.traces)
    for b, n in ((3, 1000), (4, 1024), (3, 1010), (4, 950)):
        c, f = tok.encode(_clips([n] * b), 8000)
        assert c.shape == (b, -(-n // 8), 3)
        tok.decode(c, f)
    assert dict(tok.traces) == before == {"encode": 2, "decode": 2}, tok.traces


def test_audio_no_device_reads_inside_encode_decode(aud):
    _, tok, _ = aud
    clips = _clips([1000, 960, 1016])  # the buckets of the test above: [4, 800] + [4, 256] samples
    codes, frames = tok.encode(clips, 8000)  # (compiled outside the guard)
    host_codes = np.asarray(codes)
    tok.decode(host_codes, frames)
    with jax.transfer_guard_device_to_host("disallow"):
        tok.encode(clips, 8000)
        tok.decode(host_codes, frames)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 16\); got \[\d+, 16\]"):
        tok.decode(codes.at[0, 3, 0].set(16), frames)  # device codes: checked once, after dispatch


def test_audio_bfloat16_runs_and_mostly_agrees(aud):
    _, tok, params = aud
    clips = _clips([800] * 4, seed=5)  # one [4, 800] chunk: float32 reuses the bucketed program
    c32, _ = tok.encode(clips, 8000)
    tok16 = AudioTokenizer(AUD_CFG, params, dtype="bfloat16", length_bucket_frames=16)
    c16, frames = tok16.encode(clips, 8000)
    agree = np.mean(np.asarray(c16) == np.asarray(c32), axis=(0, 1))  # per RVQ level
    print(f"audio bfloat16 vs float32 code agreement per level: {np.round(agree, 3).tolist()}")
    assert agree[0] > 0.8, agree
    wav, _ = tok16.decode(c16, frames)
    assert wav.dtype == np.float32 and np.isfinite(np.asarray(wav)).all()
    with pytest.raises(ValueError, match="dtype"):
        AudioTokenizer(AUD_CFG, params, dtype="float64")
