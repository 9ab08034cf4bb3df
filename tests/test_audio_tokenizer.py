"""AudioTokenizer: round trip through a converted EnCodec-shaped codec, batching/ragged/chunking, bad inputs."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from teal_jax.media.audio import write_wav
from teal_jax.models.codec import Codec, CodecConfig
from teal_jax.tokenizers.audio import AudioTokenizer

CFG = CodecConfig(sample_rate=8000, num_filters=4, hidden_size=16, ratios=(2, 4), num_lstm_layers=1,
                  num_levels=3, codebook_size=16, causal=True)


@pytest.fixture(scope="module")
def tok():
    x = np.zeros((1, 64, 1), np.float32)
    v = Codec(CFG).init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, x, train=False)
    return AudioTokenizer(CFG, v["params"], chunk_seconds=0.1)  # 800-sample chunks


def _tone(n, rate=8000, f=300.0):
    return (0.4 * np.sin(2 * np.pi * f * np.arange(n) / rate)).astype(np.float32)


def test_round_trip_shapes_and_codec_agreement(tok):
    x = _tone(700)
    codes, frames = tok.encode(x[None], 8000)
    assert codes.shape == (1, 88, 3) and codes.dtype == np.int32 and frames.tolist() == [88]
    direct = Codec(CFG).apply(tok.variables, x[None, :, None], method=Codec.encode)  # one pass, < chunk
    np.testing.assert_array_equal(np.asarray(codes), np.asarray(direct))
    wav, n = tok.decode(codes, frames)
    ref = Codec(CFG).apply(tok.variables, codes, method=Codec.decode_codes)[..., 0]
    np.testing.assert_allclose(np.asarray(wav), np.asarray(ref), atol=1e-6)
    assert n.tolist() == [704]


def test_int16_stereo_and_resampling(tok):
    x = _tone(800)
    c_float, _ = tok.encode(x, 8000)
    c_int, _ = tok.encode(np.round(x * 32768).astype(np.int16), 8000)
    assert np.mean(np.asarray(c_float) == np.asarray(c_int)) > 0.95  # int16 rounding may flip a near tie
    c_stereo, _ = tok.encode(np.stack([x, x], 1), 8000)  # [samples, 2] -> mono
    np.testing.assert_array_equal(np.asarray(c_stereo), np.asarray(c_float))
    pcm = np.round(x * 32767).astype(np.int16)
    x16, _ = tok.prepare(np.stack([pcm, pcm // 2], 1), 8000)  # int16 stereo: scaled, then averaged
    np.testing.assert_allclose(x16[0], (pcm / 32768.0 + (pcm // 2) / 32768.0) / 2, atol=1e-6)
    c16, f16 = tok.encode(_tone(1600, 16000), 16000)  # resampled to 8 kHz: 800 samples
    assert c16.shape == (1, 100, 3) and f16.tolist() == [100]


def test_ragged_batch_lengths_and_padding(tok):
    a, b = _tone(300), _tone(500, f=500.0)
    codes, frames = tok.encode([a, b], 8000)
    assert codes.shape == (2, 63, 3) and frames.tolist() == [38, 63]
    alone, _ = tok.encode(a, 8000)
    # causal codec: the shorter clip's real frames (except the last, which sees padding) match a lone encoding
    np.testing.assert_array_equal(np.asarray(codes[0, :37]), np.asarray(alone[0, :37]))
    wav, n = tok.decode(codes, frames)
    assert n.tolist() == [304, 504] and float(np.abs(np.asarray(wav)[0, 304:]).max()) == 0.0


def test_long_audio_is_chunked(tok):
    codes, frames = tok.encode(_tone(2000), 8000)  # 3 chunks of 800 samples
    assert codes.shape == (1, 250, 3) and frames.tolist() == [250]
    wav, _ = tok.decode(codes)
    assert wav.shape == (1, 2000)


def test_bad_inputs_raise_clear_errors(tok, tmp_path):
    with pytest.raises(ValueError, match="empty audio"):
        tok.encode(np.zeros((0,), np.float32), 8000)
    with pytest.raises(ValueError, match="empty batch"):
        tok.encode([], 8000)
    bad = _tone(100)
    bad[5] = np.nan
    with pytest.raises(ValueError, match="clip 1: 1 NaN/Inf"):
        tok.encode([_tone(100), bad], 8000)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        tok.encode(_tone(100) * 4, 8000)
    with pytest.raises(ValueError, match="codes must lie in"):
        tok.decode(np.full((1, 4, 3), 16))
    with pytest.raises(ValueError, match="levels"):
        tok.decode(np.zeros((1, 4, 5), np.int32))
    junk = tmp_path / "notes.wav"
    junk.write_text("this is text, not audio")
    with pytest.raises(ValueError, match="notes.wav"):
        tok.encode_files([junk])
    good = tmp_path / "good.wav"
    write_wav(good, _tone(800), 8000)
    data = good.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[:200])
    with pytest.raises(ValueError, match="cut.wav.*truncated"):
        tok.encode_files([good, cut])
    codes, frames = tok.encode_files([good])
    assert frames.tolist() == [100]
