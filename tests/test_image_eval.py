"""PSNR / SSIM / codebook statistics against float64 numpy references; the sample grid."""

import numpy as np
import pytest
from PIL import Image

from teal_jax.evaluate import image as ev


def _ssim_numpy(x, y, data_range=1.0, size=11, sigma=1.5):
    """Direct float64 SSIM: explicit 2-D Gaussian window, every valid position, every channel."""
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    out = []
    for b in range(x.shape[0]):
        vals = []
        for ch in range(x.shape[3]):
            a, c = x[b, :, :, ch].astype(np.float64), y[b, :, :, ch].astype(np.float64)
            for i in range(a.shape[0] - size + 1):
                for j in range(a.shape[1] - size + 1):
                    pa, pc = a[i : i + size, j : j + size], c[i : i + size, j : j + size]
                    mx, my = (w * pa).sum(), (w * pc).sum()
                    vx = (w * (pa - mx) ** 2).sum()
                    vy = (w * (pc - my) ** 2).sum()
                    cxy = (w * (pa - mx) * (pc - my)).sum()
                    vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
        out.append(np.mean(vals))
    return np.array(out)


def test_ssim_matches_float64_reference():
    rng = np.random.default_rng(0)
    x = rng.random((2, 16, 14, 2))
    y = np.clip(x + 0.3 * rng.standard_normal(x.shape), 0, 1)
    got = np.asarray(ev.ssim(x.astype(np.float32), y.astype(np.float32)))
    ref = _ssim_numpy(x, y)
    np.testing.assert_allclose(got, ref, atol=2e-4)  # float32 sums of O(1) products
    assert np.allclose(np.asarray(ev.ssim(x, x)), 1.0, atol=1e-5)
    assert (ref < 0.9).all()  # the noise is visible to SSIM
    with pytest.raises(ValueError, match="at least 11x11"):
        ev.ssim(x[:, :8, :8], y[:, :8, :8])


def test_psnr_and_codebook_stats():
    rng = np.random.default_rng(1)
    x = rng.random((3, 8, 8, 1))
    y = x + 0.05 * rng.standard_normal(x.shape)
    mse = ((x - y) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(ev.psnr(x, y)), 10 * np.log10(1 / mse), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(ev.psnr(2 * x, 2 * y, data_range=2.0)), 10 * np.log10(1 / mse), rtol=1e-5)
    counts = np.array([4, 0, 2, 2])
    s = ev.codebook_stats(counts)
    p = np.array([0.5, 0.25, 0.25])
    assert s["usage"] == 0.75
    np.testing.assert_allclose(s["perplexity"], np.exp(-(p * np.log(p)).sum()), rtol=1e-12)


def test_grid_png(tmp_path):
    a = np.zeros((3, 8, 8, 1), np.uint8)
    b = np.full((3, 8, 8, 1), 200, np.uint8)
    path = ev.save_grid_png(a, b, str(tmp_path / "g" / "grid.png"))
    img = np.asarray(Image.open(path))
    assert img.shape == (2 * 8 + 6, 3 * 10 + 2)
    assert img[2:10, 2:10].max() == 0 and img[12:20, 2:10].min() == 200  # originals above reconstructions
    with pytest.raises(ValueError, match="uint8"):
        ev.save_grid_png(a.astype(np.float32), b, str(tmp_path / "x.png"))
    np.testing.assert_array_equal(ev.to_uint8(np.array([-1.0, 0.0, 1.0, 2.0])), [0, 128, 255, 255])
