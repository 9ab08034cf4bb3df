"""Every input path validates what it is given, in one place per modality (teal_jax.media): image modes and bit
depths are converted by rule or rejected by name, non-finite pixels and samples are rejected, every documented
waveform dtype and channel layout works, and random bytes give a clear ValueError, never a crash or a silent result.
"""

import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from teal_jax.media.audio import read_wav, to_mono_float, write_wav
from teal_jax.media.image import check_pixels, read_image


def _save(tmp_path, name, image, **kw):
    path = tmp_path / name
    image.save(path, **kw)
    return path


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    raw = np.array([[0, 257, 32896], [65535, 1000, 60000]], np.uint16)
    path = _save(tmp_path, "g16.png", Image.fromarray(raw))  # uint16 -> mode I;16
    got = read_image(path)
    assert got.dtype == np.uint8 and got.shape == (2, 3, 1)
    np.testing.assert_array_equal(got[..., 0], np.round(raw.astype(np.float64) * 255 / 65535).astype(np.uint8))


def test_modes_are_converted_by_rule(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (4, 5, 3), np.uint8)
    assert read_image(_save(tmp_path, "rgb.png", Image.fromarray(rgb))).tolist() == rgb.tolist()
    bits = Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("1")
    np.testing.assert_array_equal(read_image(_save(tmp_path, "b.png", bits))[..., 0], [[0, 255], [255, 0]])
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    assert read_image(_save(tmp_path, "p.png", pal)).shape == (4, 5, 3)
    pal.info["transparency"] = 0
    assert read_image(_save(tmp_path, "pt.png", pal, transparency=0)).shape == (4, 5, 4)
    la = Image.fromarray(np.stack([rgb[..., 0], rgb[..., 1]], -1), "LA")
    out = read_image(_save(tmp_path, "la.png", la))
    assert out.shape == (4, 5, 4) and (out[..., 0] == rgb[..., 0]).all() and (out[..., 3] == rgb[..., 1]).all()
    cmyk = Image.fromarray(rgb).convert("CMYK")
    assert read_image(_save(tmp_path, "c.jpg", cmyk, quality=100)).shape == (4, 5, 3)


def test_unsupported_and_broken_images_are_named(tmp_path):
    f = Image.fromarray(np.ones((3, 3), np.float32), "F")
    with pytest.raises(ValueError, match=r"f\.tif: image mode 'F' is not supported"):
        read_image(_save(tmp_path, "f.tif", f))
    with pytest.raises(ValueError, match="nope.png: image file not found"):
        read_image(tmp_path / "nope.png")
    rng = np.random.default_rng(1)
    for i in range(5):  # random bytes, and a PNG cut short
        junk = tmp_path / f"junk{i}.png"
        junk.write_bytes(rng.integers(0, 256, 64 + 50 * i, np.uint8).tobytes())
        with pytest.raises(ValueError, match=f"junk{i}.png: not a readable image file"):
            read_image(junk)
    good = _save(tmp_path, "cut.png", Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7))
    good.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ValueError, match="cut.png: not a readable image file"):
        read_image(good)


def test_pixel_arrays_are_checked():
    check_pixels(np.zeros((1, 2, 2), np.uint8))
    check_pixels(np.full((1, 2, 2), 0.5, np.float32))
    bad = np.full((1, 2, 2), 0.5, np.float32)
    bad[0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="1 NaN/Inf pixel value"):
        check_pixels(bad)
    with pytest.raises(ValueError, match=r"float pixels must lie in \[0, 1\]"):
        check_pixels(np.full((1, 2, 2), 255.0, np.float32))
    with pytest.raises(ValueError, match="got dtype uint16 .*read_image"):
        check_pixels(np.zeros((1, 2, 2), np.uint16))


@pytest.mark.parametrize("dtype,scale,offset", [(np.int16, 32768.0, 0.0), (np.int32, 2.0**31, 0.0),
                                                (np.uint8, 128.0, 128.0)])
def test_every_pcm_dtype_and_layout(dtype, scale, offset):
    """Stereo PCM in each documented dtype -> the mean of the scaled channels (float64 reference)."""
    info = np.iinfo(dtype)
    x = np.random.default_rng(2).integers(info.min, info.max, (100, 2), dtype=dtype)
    ref = ((x.astype(np.float64) - offset) / scale).mean(axis=1)
    np.testing.assert_allclose(to_mono_float(x), ref, atol=1e-6)
    np.testing.assert_allclose(to_mono_float(x.T, channels_last=False), ref, atol=1e-6)
    np.testing.assert_allclose(to_mono_float(x[:, 0]), (x[:, 0] - offset) / scale, atol=1e-6)


def test_bad_waveforms_are_named():
    with pytest.raises(ValueError, match="clip: 2 NaN/Inf sample"):
        to_mono_float(np.array([0.1, np.nan, np.inf], np.float32), name="clip")
    with pytest.raises(ValueError, match="peak is 2"):
        to_mono_float(np.array([2.0, 0.0]))
    with pytest.raises(ValueError, match="empty audio"):
        to_mono_float(np.zeros((0, 2), np.int16))
    with pytest.raises(ValueError, match="got dtype int64"):
        to_mono_float(np.zeros(4, np.int64))
    with pytest.raises(ValueError, match=r"got shape \(2, 2, 2\)"):
        to_mono_float(np.zeros((2, 2, 2), np.float32))


def test_wav_files_round_trip_and_random_bytes_fail_clearly(tmp_path):
    x = (np.sin(np.arange(800) / 10) * 0.5).astype(np.float32)
    write_wav(tmp_path / "a.wav", np.stack([x, -x], -1), 16000)
    y, rate = read_wav(tmp_path / "a.wav")
    assert rate == 16000 and y.shape == (800, 2)
    np.testing.assert_allclose(to_mono_float(y), 0.0, atol=1 / 32768)
    rng = np.random.default_rng(3)
    for i in range(5):
        junk = tmp_path / f"junk{i}.wav"
        junk.write_bytes(rng.integers(0, 256, 44 + 40 * i, np.uint8).tobytes())
        with pytest.raises(ValueError, match=f"junk{i}.wav: "):
            read_wav(junk)


def test_prompt_plus_new_tokens_beyond_the_context_names_the_limit():
    from teal_jax.inference.sampler import check_context

    check_context([[1] * 10, [2] * 30], 34, 64)
    with pytest.raises(ValueError, match=r"a prompt of 30 tokens plus max_new_tokens=35 needs 65 positions; the "
                                         r"model's context is 64"):
        check_context([[1] * 10, [2] * 30], 35, 64)


def test_random_bytes_to_every_file_entry_point(tmp_path):
    """Random bytes as a SentencePiece model, as checkpoint files behind teal_jax.load, as image / WAV files for the
    tokenizers' readers: each a clear error of the documented type naming the file, never a crash inside a
    library or a silent result."""
    import teal_jax
    from teal_jax import checkpoint as C
    from teal_jax.tokenizers.text import TextTokenizer

    rng = np.random.default_rng(4)
    junk = tmp_path / "junk.model"
    junk.write_bytes(rng.integers(0, 256, 300, np.uint8).tobytes())
    with pytest.raises(ValueError, match="junk.model"):
        TextTokenizer.load(junk)
    # A run whose checkpoint files were all overwritten with random bytes (sizes kept): caught by the manifest.
    run = tmp_path / "run"
    ckpt = C.Checkpointer(str(run), async_save=False)
    from teal_jax.config import base_config

    ckpt.save(1, {"params": {"model": {"w": np.ones(64, np.float32)}}}, {}, base_config())
    ckpt.close()
    for root, _, names in os.walk(run / "checkpoints" / "1"):
        for n in names:
            if n != C.MANIFEST:
                p = pathlib.Path(root) / n
                p.write_bytes(rng.integers(0, 256, max(p.stat().st_size, 1), np.uint8).tobytes())
    with pytest.raises(C.CheckpointIntegrityError, match="checkpoint step 1 .*does not match its checksum"):
        teal_jax.load(str(run))
    with pytest.raises(FileNotFoundError, match="no checkpoint under"):
        teal_jax.load(str(tmp_path / "missing"))
