"""Audio metrics and spectral features against float64 numpy references written here."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from teal_jax.evaluate import audio as ae
from teal_jax.media.audio import read_wav, resample, write_wav


def _ref_filterbank(sr, n_fft, n_mels):
    """Loop form of the HTK-mel triangular filterbank with Slaney area normalisation (float64)."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    inv = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = [inv(mel(0.0) + i * (mel(sr / 2) - mel(0.0)) / (n_mels + 1)) for i in range(n_mels + 2)]
    fb = np.zeros((n_fft // 2 + 1, n_mels))
    for m in range(n_mels):
        lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
        for k in range(n_fft // 2 + 1):
            f = k * sr / n_fft
            if lo <= f <= c:
                fb[k, m] = (f - lo) / (c - lo)
            elif c < f <= hi:
                fb[k, m] = (hi - f) / (hi - c)
        fb[:, m] *= 2.0 / (hi - lo)
    return fb


@pytest.mark.parametrize("sr,n_fft,n_mels", [(16000, 512, 40), (24000, 1024, 80), (16000, 128, 16)])
def test_mel_filterbank_matches_reference(sr, n_fft, n_mels):
    np.testing.assert_allclose(ae.mel_filterbank(sr, n_fft, n_mels), _ref_filterbank(sr, n_fft, n_mels),
                               rtol=1e-5, atol=1e-8)


def test_stft_magnitude_matches_numpy():
    x = np.random.default_rng(0).standard_normal((2, 1000))
    n_fft, hop = 256, 64
    xp = np.pad(x, ((0, 0), (128, 128)), mode="reflect")
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.stack([xp[:, i * hop : i * hop + n_fft] for i in range(1 + (xp.shape[1] - n_fft) // hop)], 1)
    ref = np.abs(np.fft.rfft(frames * win, axis=-1))
    ours = np.asarray(ae.stft_magnitude(jnp.asarray(x, jnp.float32), n_fft, hop, eps=0.0))
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_losses_have_finite_gradients_on_silence():
    # jnp.abs of a complex STFT has a NaN gradient at 0; our magnitude adds eps inside the sqrt.
    x = jnp.zeros((2, 2048))
    y = jnp.zeros((2, 2048))
    g = jax.grad(lambda y: ae.mel_distance(x, y, 16000) + ae.stft_distance(x, y))(y)
    assert bool(jnp.all(jnp.isfinite(g)))


def test_si_snr_reference_and_scale_invariance():
    rng = np.random.default_rng(1)
    r = rng.standard_normal((3, 4000))
    e = r + 0.1 * rng.standard_normal((3, 4000))
    rc, ec = r - r.mean(1, keepdims=True), e - e.mean(1, keepdims=True)
    s = (ec * rc).sum(1, keepdims=True) / (rc * rc).sum(1, keepdims=True) * rc
    ref = 10 * np.log10((s**2).sum(1) / ((ec - s) ** 2).sum(1))
    ours = np.asarray(ae.si_snr(jnp.asarray(r), jnp.asarray(e)))
    np.testing.assert_allclose(ours, ref, atol=1e-3)
    np.testing.assert_allclose(np.asarray(ae.si_snr(jnp.asarray(r), jnp.asarray(3.0 * e))), ref, atol=1e-3)


def test_codebook_usage():
    codes = np.array([[[0, 1], [1, 1], [2, 1]]])  # [1, 3 frames, 2 levels]
    np.testing.assert_allclose(ae.codebook_usage(codes, 4), [0.75, 0.25])


@pytest.mark.parametrize("old,new", [(22050, 16000), (8000, 16000), (48000, 24000)])
def test_resample_sinusoid(old, new):
    f = 440.0
    t_in = np.arange(int(0.25 * old)) / old
    y = resample(np.sin(2 * np.pi * f * t_in), old, new)
    t_out = np.arange(y.shape[0]) / new
    assert y.shape[0] == int(np.ceil(t_in.size * new / old))
    core = slice(200, y.shape[0] - 200)  # away from the zero-padded edges
    np.testing.assert_allclose(y[core], np.sin(2 * np.pi * f * t_out[core]), atol=2e-3)


def test_wav_round_trip_and_errors(tmp_path):
    x = (0.5 * np.sin(np.linspace(0, 100, 3000))).astype(np.float32)
    p = tmp_path / "a.wav"
    write_wav(p, np.stack([x, -x], 1), 16000)
    y, rate = read_wav(p)
    assert rate == 16000 and y.shape == (3000, 2)
    np.testing.assert_allclose(y[:, 0], x, atol=1 / 32767)
    (tmp_path / "junk.wav").write_bytes(b"not a wav file at all")
    with pytest.raises(ValueError, match="junk.wav"):
        read_wav(tmp_path / "junk.wav")
    data = p.read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.wav.*truncated"):
        read_wav(tmp_path / "cut.wav")
    with pytest.raises(ValueError, match="missing.wav"):
        read_wav(tmp_path / "missing.wav")
