"""Demo-scale semantic tokenizers (teal_jax/tokenizers/semantic_demo.py): the MFCC front end against float64
numpy + scipy's DCT, the smoke configs fitted through the kmeans_fit runner on the demo's own data builders (spoken
words, digits) with save/resume, pre-tokenization through the shared paths, ``teal_jax.load``, and the rule that the
image encoder is the image tokenizer's, never a judge's."""

import ast

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from teal_jax.data.teal import token_dataset as TT
from teal_jax.tokenizers import kmeans as KM
from teal_jax.tokenizers import semantic_demo as SD

scipy_fft = pytest.importorskip("scipy.fft")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))  # spoken_words/tiny and digits are built here once


# ---- MFCC front end vs float64 numpy --------------------------------------------------------------------------
def test_dct_matrix_is_scipys_orthonormal_dct2():
    x = np.random.default_rng(0).normal(size=(7, 40))
    for n_out in (1, 13, 40):
        want = scipy_fft.dct(x, type=2, norm="ortho", axis=-1)[:, :n_out]
        assert np.max(np.abs(x @ SD.dct_matrix(40, n_out).astype(np.float64) - want)) < 1e-6  # measured ~9e-8
    with pytest.raises(ValueError, match="n_mfcc=41 must be in"):
        SD.dct_matrix(40, 41)


def _ref_features(clip: np.ndarray, cfg: SD.FrameFeatureConfig) -> np.ndarray:
    """float64: block-centred zero-padded frames, periodic Hann, |rfft|^2, mel, ln, scipy DCT-II, edge-padded deltas,
    edge-padded context."""
    from teal_jax.models.whisper import mel_filters

    hop, nfft, n = cfg.hop_length, cfg.n_fft, len(clip)
    frames = -(-n // hop)
    xp = np.zeros(frames * hop + nfft)
    xp[(nfft - hop) // 2 : (nfft - hop) // 2 + n] = clip
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(nfft) / nfft)
    fr = np.stack([xp[f * hop : f * hop + nfft] for f in range(frames)]) * win
    power = np.abs(np.fft.rfft(fr, axis=-1)) ** 2
    mel = power @ mel_filters(cfg.sample_rate, nfft, cfg.n_mels, 0.0, cfg.f_max).astype(np.float64)
    c = scipy_fft.dct(np.log(np.maximum(mel, cfg.log_floor)), type=2, norm="ortho", axis=-1)[:, : cfg.n_mfcc]

    def delta(v):
        p = np.pad(v, ((2, 2), (0, 0)), mode="edge")
        return sum(k * (p[2 + k : 2 + k + len(v)] - p[2 - k : 2 - k + len(v)]) for k in (1, 2)) / 10.0

    d = delta(c)
    f = np.concatenate([c, d, delta(d)], -1)
    p = np.pad(f, ((cfg.context, cfg.context), (0, 0)), mode="edge")
    return np.concatenate([p[cfg.context + o : cfg.context + o + frames] for o in range(-cfg.context, cfg.context + 1)],
                          -1)


def test_mfcc_features_match_float64_reference_and_ignore_batch_padding():
    cfg = SD.FrameFeatureConfig(num_codes=4)
    tok = SD.FrameKMeansTokenizer(cfg)
    assert tok.feature_dim == 13 * 3 * 5 and tok.frame_rate == 50.0
    rng = np.random.default_rng(1)
    t = np.arange(6000) / 16000
    clips = [(0.3 * np.sin(2 * np.pi * rng.uniform(100, 3000) * t[:n]) + 0.05 * rng.standard_normal(n))
             for n in (6000, 2500, 700)]
    feats, valid = tok.batch_features(*tok.prepare([c.astype(np.float32) for c in clips], 16000))
    feats = np.asarray(feats)
    assert feats.shape == (3, 19, 195) and np.asarray(valid).sum(1).tolist() == [19, 8, 3]
    for i, c in enumerate(clips):
        ref = _ref_features(c.astype(np.float32).astype(np.float64), cfg)
        err = np.max(np.abs(feats[i, : len(ref)] - ref)) / np.max(np.abs(ref))
        assert err < 1e-6, (i, err)  # measured ~1e-7
    # codes: a clip alone, twice in one batch, and beside a longer clip (zero-padded) are the same codes
    tok = tok.with_codebook(feats[0][:4] + 0.0)
    alone, n_alone = tok.encode(clips[1], 16000)
    batch, n_batch = tok.encode([clips[0], clips[1], clips[1]], 16000)
    assert n_alone.tolist() == [8] and n_batch.tolist() == [19, 8, 8]
    np.testing.assert_array_equal(np.asarray(batch)[1, :8], np.asarray(alone)[0])
    np.testing.assert_array_equal(np.asarray(batch)[1], np.asarray(batch)[2])
    with pytest.raises(ValueError, match="input-only"):
        tok.decode(batch)
    with pytest.raises(ValueError, match="delta_order=3"):
        SD.FrameFeatureConfig(num_codes=4, delta_order=3)


# ---- audio: the smoke config through the runner, on spoken_words/tiny ----------------------------------------------
def test_speech_kmeans_fits_resumes_loads_and_pretokenizes(data_dir, tmp_path):
    import teal_jax
    from configs.audio import speech_kmeans
    from teal_jax.inference import protocol
    from teal_jax.train import kmeans_fit

    cfg = speech_kmeans.get_config("smoke")
    assert cfg.tokenizer.hop_length * 50 == cfg.tokenizer.sample_rate  # the demo codec's 50 frames/s
    cfg.train.steps = 4
    full, hist = kmeans_fit.fit_from_config(cfg, str(tmp_path / "a"), data_dir=data_dir, log=lambda s: None)
    assert isinstance(full, SD.FrameKMeansTokenizer) and [h["step"] for h in hist] == [1, 2, 3, 4]
    assert all(1 < h["perplexity"] <= 8 and 0 < h["usage"] <= 1 and h["inertia"] > 0 for h in hist)
    # interrupted after step 2 (its checkpoint), then resumed: the same codebook, bit for bit
    cfg.train.steps = 2
    kmeans_fit.fit_from_config(cfg, str(tmp_path / "b"), data_dir=data_dir, log=lambda s: None)
    cfg.train.steps = 4
    logs = []
    resumed, hist_b = kmeans_fit.fit_from_config(cfg, str(tmp_path / "b"), data_dir=data_dir, log=logs.append)
    assert any("resumed at step 2" in s for s in logs) and any("perplexity" in s for s in logs)
    np.testing.assert_array_equal(resumed.codebook, full.codebook)
    assert hist_b == hist[2:]
    other = speech_kmeans.get_config("smoke,features=log_mel")
    with pytest.raises(ValueError, match=r"tokenizer.features='mfcc'; this config has 'log_mel'"):
        kmeans_fit.fit_from_config(other, str(tmp_path / "b"), data_dir=data_dir, log=lambda s: None)

    m = teal_jax.load(str(tmp_path / "b"))
    assert isinstance(m, SD.FrameKMeansTokenizer) and isinstance(m, protocol.Model)
    assert m.kind == "kmeans_tokenizer" and m.workdir == str(tmp_path / "b") and m.run_config.objective == m.kind
    np.testing.assert_array_equal(m.codebook, full.codebook)
    assert TT.tokenizer_fingerprint(m) == TT.tokenizer_fingerprint(full)
    assert TT.tokenizer_fingerprint(m) != TT.tokenizer_fingerprint(full.with_codebook(full.codebook + 1))
    with pytest.raises(protocol.ModeNotSupported, match="'kmeans_tokenizer' run .* input-only"):
        m.sample(["seven"])

    rng = np.random.default_rng(5)
    recs = lambda lengths: [{"audio": (rng.uniform(-0.3, 0.3, n) * 32767).astype(np.int16), "text": f"clip {i}"}
                            for i, n in enumerate(lengths)]
    sources = {"train": recs([2000, 3500, 3200, 2500, 1000]), "test": recs([3000, 2200])}
    src = {"kind": "tfds", "name": "in_memory", "audio_key": "audio", "text_key": "text", "label_key": "",
           "source_rate": 16000}
    man = TT.pretokenize_audio(m, src, str(tmp_path / "tok"), seconds=0.2, sources=sources, batch_size=4,
                               verbose=False)
    assert man["code_shape"] == [10, 1] and man["tokenizer"]["codebook_size"] == 8
    assert man["records"] == {"train": 4, "test": 2} and man["skipped"]["train"] == 1  # 3,500 > 3,200 samples
    stored = TT.token_source(man, "train")
    clips = np.stack([np.pad(c, (0, 3200 - len(c))) for c in (sources["train"][int(r["index"])]["audio"]
                                                                 for r in (stored[j] for j in range(4)))])
    want, frames = m.encode(clips, 16000)
    assert frames.tolist() == [10] * 4
    for j in range(4):
        np.testing.assert_array_equal(stored[j]["codes"], np.asarray(want)[j])


# ---- images: the demo image tokenizer's encoder ---------------------------------------------------------------
@pytest.fixture(scope="module")
def image_vq_run(tmp_path_factory):
    """An image_vq workdir (digits_tiny.py:coarse,smoke, narrowed and without attention to compile fast; random
    init, saved as a run saves)."""
    from configs.image import digits_tiny
    from teal_jax import checkpoint
    from teal_jax.models.vqgan import VQGAN, VQGANConfig

    d = str(tmp_path_factory.mktemp("image_vq"))
    cfg = digits_tiny.get_config("coarse,smoke")
    cfg.model.base_channels, cfg.model.attn_levels, cfg.model.mid_attention = 8, (), False
    from flax import linen as nn

    shapes = nn.unbox(jax.eval_shape(VQGAN(VQGANConfig.from_config(cfg.model)).init, jax.random.key(0),
                                     jnp.zeros((1, 32, 32, 1))))  # random weights, without the slow eager init
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
    state = {"step": np.int32(1), "params": {"model": variables["params"]},
             "model_state": {k: v for k, v in variables.items() if k != "params"}}
    ckpt = checkpoint.Checkpointer(d)
    ckpt.save(1, state, {"next": 1}, cfg)
    ckpt.close()
    return d


def test_digits_kmeans_fits_on_the_vq_encoder_and_pretokenizes(image_vq_run, data_dir, tmp_path):
    import teal_jax
    from configs.image import digits_kmeans
    from teal_jax.tokenizers.image import ImageTokenizer
    from teal_jax.train import kmeans_fit

    cfg = digits_kmeans.get_config(f"smoke,checkpoint={image_vq_run}")
    fitted, hist = kmeans_fit.fit_from_config(cfg, str(tmp_path / "run"), data_dir=data_dir, log=lambda s: None)
    assert isinstance(fitted, SD.LatentKMeansTokenizer) and len(hist) == 3 and fitted.token_grid == (4, 4)
    assert all(1 < h["perplexity"] <= 8 for h in hist)
    # the features are the image tokenizer's own encoder output on the same prepared pixels
    m = teal_jax.load(str(tmp_path / "run"))
    assert isinstance(m, SD.LatentKMeansTokenizer) and m.kind == "kmeans_tokenizer"
    assert m.workdir == str(tmp_path / "run") and m.run_config.tokenizer.checkpoint == image_vq_run
    np.testing.assert_array_equal(m.codebook, fitted.codebook)
    vq = ImageTokenizer.from_checkpoint(image_vq_run)
    images = np.random.default_rng(9).integers(0, 256, (4, 32, 32, 1), dtype=np.uint8)  # as pre-tokenization feeds
    images[3] = images[1]
    encoder = jax.jit(lambda v, x: vq.model.apply(v, x, method=lambda mod, x: mod.encoder(x)))
    want = encoder(vq.variables, jnp.asarray(images / 255.0 * 2 - 1, jnp.float32))
    feats, _ = m.batch_features(images)
    assert feats.shape == (4, 16, 64) and np.max(np.abs(np.asarray(feats) - np.asarray(want).reshape(4, 16, 64))) < 1e-5
    codes = np.asarray(m.encode(images))
    np.testing.assert_array_equal(codes.reshape(4, -1), np.asarray(KM.assign(m.codebook, feats)[0]))
    np.testing.assert_array_equal(codes[1], codes[3])  # equal inputs, equal codes
    src = {"kind": "tfds", "name": "in_memory", "image_key": "image", "text_key": "text", "label_key": ""}
    recs = lambda sl: [{"image": images[i], "text": f"image {i}"} for i in sl]
    man = TT.pretokenize_images(m, src, str(tmp_path / "tok"), sources={"train": recs(range(4)),
                                                                       "test": recs(range(2))},
                                batch_size=4, verbose=False)
    stored = TT.token_source(man, "train")
    assert man["code_shape"] == [16] and man["tokenizer"]["codebook_size"] == 8
    for j in range(4):
        np.testing.assert_array_equal(stored[j]["codes"], codes[int(stored[j]["index"])].reshape(-1))
    with pytest.raises(ValueError, match="input-only"):
        m.decode(codes)
    q = digits_kmeans.get_config(f"smoke,checkpoint={image_vq_run},layer=quant_conv")
    assert KM.tokenizer_from_config(q.tokenizer).feature_dim == 3  # FSQ [4, 4, 4]: embed_dim 3


def test_the_image_encoder_is_never_a_judge(image_vq_run, tmp_path):
    from flax import linen as nn

    from configs.image import digits_kmeans
    from teal_jax.evaluate import digit_classifier, speech_classifier
    from teal_jax.models.vqgan import Encoder

    assert set(SD.JUDGE_FILES) == {digit_classifier.FILENAME, speech_classifier.FILENAME}
    judge_dir = str(tmp_path / "judge")
    judge = digit_classifier.DigitClassifier()
    _, judge.params = judge.init_params(0, judge.prepare(digit_classifier.load_digit_arrays("test")[0][:2]))
    judge.save(judge_dir)  # a digit judge, saved as the demo saves it (untrained: only where it lies matters)
    with pytest.raises(ValueError, match="judging classifier .*independent"):
        KM.tokenizer_from_config(digits_kmeans.get_config(f"smoke,checkpoint={judge_dir}").tokenizer)
    with pytest.raises(ValueError, match="objective 'kmeans_tokenizer'.*'image_vq'"):  # any run but an image_vq one
        from configs.audio import speech_kmeans
        from teal_jax import checkpoint

        other = str(tmp_path / "other")
        ckpt = checkpoint.Checkpointer(other)
        ckpt.save(1, {"step": np.int32(1), "params": {"codebook": np.zeros((8, 3), np.float32)}}, {},
                  speech_kmeans.get_config("smoke"))
        ckpt.close()
        KM.tokenizer_from_config(digits_kmeans.get_config(f"smoke,checkpoint={other}").tokenizer)
    tok = KM.tokenizer_from_config(digits_kmeans.get_config(f"smoke,checkpoint={image_vq_run}").tokenizer)
    judge_modules = [type(judge.model), type(speech_classifier.SpeechClassifier().model)]
    assert tok.encoder_module is Encoder and all(issubclass(j, nn.Module) for j in judge_modules)
    assert not any(issubclass(tok.encoder_module, j) or issubclass(j, tok.encoder_module) for j in judge_modules)
    assert set(tok.encoder_params) == {"encoder"}  # the VQ encoder's weights and nothing else
    tree = ast.parse(open(SD.__file__).read())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(str(name).startswith("teal_jax.evaluate") for name in imported)
