"""Semantic (encoder + k-means) tokenizers: the k-means step against float64 numpy, the fit (sharded over 8 fake
devices) saving and resuming bit-identically, the Whisper pipeline against transformers, and encoding through the
same pre-tokenization paths as the reconstruction tokenizers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _hf_encoders import max_abs, save_tiny_vision, save_tiny_whisper

from teal_jax.data.teal import token_dataset as TT
from teal_jax.parallel import sharding as sh
from teal_jax.tokenizers import kmeans as KM

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")


# ---- the k-means step vs float64 numpy --------------------------------------------------------------------------
def _np_kmeans_step(codebook, counts, x, mask):
    d = ((x[:, None, :] - codebook[None]) ** 2).sum(-1)
    codes = d.argmin(-1)
    codebook, counts = codebook.copy(), counts.copy()
    n = np.zeros(len(codebook))
    for c in range(len(codebook)):
        rows = x[(codes == c) & mask]
        n[c] = len(rows)
        if len(rows):
            codebook[c] = (codebook[c] * counts[c] + rows.sum(0)) / (counts[c] + len(rows))
    counts += n
    p = n / n.sum()
    perplexity = np.exp(-np.sum(p[p > 0] * np.log(p[p > 0])))
    inertia = d[np.arange(len(x)), codes][mask].mean()
    return codebook, counts, codes, dict(inertia=inertia, usage=np.mean(n > 0), perplexity=perplexity,
                                         total_usage=np.mean(counts > 0))


def test_kmeans_matches_float64_numpy(devices):
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (5, 6))
    batches = [centres[rng.integers(0, 5, 64)] + rng.normal(0, 0.5, (64, 6)) for _ in range(6)]
    masks = [rng.random(64) > 0.2 for _ in range(6)]
    k = 7
    init = KM.init_codebook(batches[0][masks[0]], k, seed=3)
    init[-1] = 100.0  # a centre no row is near: it must stay put, unused (usage < 1)
    mesh = sh.make_mesh((-1, 1, 1), devices)
    rows, rep = sh.batch_sharding(mesh), sh.replicated(mesh)
    state_sh = {"codebook": rep, "counts": rep, "step": rep}
    step = jax.jit(KM.kmeans_update, in_shardings=(state_sh, rows, rows), out_shardings=(state_sh, rep))
    state = {"codebook": jnp.asarray(init), "counts": jnp.zeros(k), "step": jnp.int32(0)}
    ref_cb, ref_counts = init.astype(np.float64), np.zeros(k)
    for x, m in zip(batches, masks, strict=True):
        state, metrics = step(state, jax.device_put(x.astype(np.float32), rows), jax.device_put(m, rows))
        ref_cb, ref_counts, _, ref_metrics = _np_kmeans_step(ref_cb, ref_counts, x, m)
        assert max_abs(state["codebook"], ref_cb) < 1e-5
        np.testing.assert_array_equal(np.asarray(state["counts"]), ref_counts)
        for name, want in ref_metrics.items():
            assert float(metrics[name]) == pytest.approx(want, rel=1e-5, abs=1e-6), name
    assert int(state["step"]) == 6 and float(metrics["usage"]) == float(metrics["total_usage"]) == pytest.approx(6 / 7)
    np.testing.assert_array_equal(np.asarray(state["codebook"][-1]), init[-1])
    codes, _ = KM.assign(state["codebook"], jnp.asarray(batches[0], jnp.float32))
    np.testing.assert_array_equal(np.asarray(codes), ((batches[0][:, None] - ref_cb[None]) ** 2).sum(-1).argmin(-1))
    with pytest.raises(ValueError, match="64 feature rows for 100 codes"):
        KM.init_codebook(batches[0], 100, 0)


# ---- audio: Whisper + k-means -----------------------------------------------------------------------------------
LAYER = 2


def _wave_batches(i: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(100 + i)
    t = np.arange(2400) / 16000
    f = rng.uniform(100, 3000, (8, 1))
    x = (0.3 * np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal((8, 2400))).astype(np.float32)
    lengths = rng.integers(800, 2401, 8).astype(np.int32)
    return x * (np.arange(2400) < lengths[:, None]), lengths


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("whisper"))
    save_tiny_whisper(d, "WhisperForConditionalGeneration")
    return d


def test_whisper_features_match_transformers_pipeline(whisper_dir):
    tok = KM.AudioKMeansTokenizer.from_pretrained(whisper_dir, layer=LAYER, num_codes=8)
    x, lengths = _wave_batches(0)
    clips = [x[i, : lengths[i]] for i in range(4)]
    fx = transformers.WhisperFeatureExtractor.from_pretrained(whisper_dir)
    model = transformers.WhisperForConditionalGeneration.from_pretrained(whisper_dir).eval()
    with torch.no_grad():
        ref = model.model.encoder(fx(clips, sampling_rate=16000, return_tensors="pt").input_features,
                                  output_hidden_states=True).hidden_states[LAYER].numpy()
    padded, n = tok.prepare(clips, 16000)
    feats, valid = tok.batch_features(padded, n)
    frames = -(-n // 320)
    assert feats.shape[1] == frames.max() and np.asarray(valid).sum(1).tolist() == frames.tolist()
    for i in range(4):
        assert max_abs(feats[i, : frames[i]], ref[i, : frames[i]]) < 1e-4
    # a clip longer than one window (1 s here, 30 s for real checkpoints): each window is encoded on its own
    long = np.random.default_rng(3).uniform(-0.3, 0.3, 24_000).astype(np.float32)
    with torch.no_grad():
        ref = [model.model.encoder(fx([w], sampling_rate=16000, return_tensors="pt").input_features,
                                   output_hidden_states=True).hidden_states[LAYER].numpy()[0]
               for w in (long[:16000], long[16000:])]
    feats, valid = tok.batch_features(*tok.prepare(long, 16000))
    assert feats.shape[1] == 75 and bool(np.all(valid))
    assert max_abs(feats[0], np.concatenate([ref[0], ref[1][:25]])) < 1e-4


class _Interrupted(Exception):
    pass


class _Records(list):
    """An in-memory source split that raises after ``limit`` reads (a run stopped mid-fit)."""

    limit = None
    reads = 0

    def __getitem__(self, i):
        type(self).reads += 1
        if self.limit is not None and type(self).reads > self.limit:
            raise _Interrupted
        return super().__getitem__(i)


def test_fit_saves_and_resumes_bit_identically(whisper_dir, tmp_path):
    """configs/audio/whisper_kmeans.py:smoke through the runner (in-memory source, 8 devices): an uninterrupted fit
    and one stopped after its step-2 checkpoint then resumed end with bit-identical codebooks and metrics."""
    from configs.audio import whisper_kmeans
    from teal_jax.train import kmeans_fit

    cfg = whisper_kmeans.get_config(f"smoke,checkpoint={whisper_dir}")
    cfg.train.steps = 4
    rng = np.random.default_rng(0)
    clips = [(rng.uniform(-0.3, 0.3, int(n)) * 32767).astype(np.int16) for n in rng.integers(1500, 4000, 20)]
    sources = {"train": _Records({"audio": c} for c in clips), "test": []}
    full, hist = kmeans_fit.fit_from_config(cfg, str(tmp_path / "a"), sources=sources, log=lambda s: None)
    assert [h["step"] for h in hist] == [1, 2, 3, 4]
    assert all(1 < h["perplexity"] <= 8 and 0 < h["usage"] <= 1 for h in hist)

    _Records.reads, _Records.limit = 0, 8 * 4  # init batch 0 + steps 1-3 read; step 4's batch stops the run
    with pytest.raises(_Interrupted):
        kmeans_fit.fit_from_config(cfg, str(tmp_path / "b"), sources=sources, log=lambda s: None)
    _Records.limit = None
    logs = []
    resumed, hist_b = kmeans_fit.fit_from_config(cfg, str(tmp_path / "b"), sources=sources, log=logs.append)
    assert any("resumed at step 2" in s for s in logs) and [h["step"] for h in hist_b] == [3, 4]
    np.testing.assert_array_equal(resumed.codebook, full.codebook)  # bit-identical
    assert hist_b == hist[2:]
    other = whisper_kmeans.get_config(f"smoke,checkpoint={whisper_dir},k=16")
    with pytest.raises(ValueError, match=r"tokenizer.num_codes=8; this config has 16"):
        kmeans_fit.fit_from_config(other, str(tmp_path / "b"), sources=sources, log=lambda s: None)
    # the saved run rebuilds the tokenizer; its codes are the nearest centres of the layer's features
    loaded = KM.from_checkpoint(str(tmp_path / "b"))
    np.testing.assert_array_equal(loaded.codebook, full.codebook)
    x, n = _wave_batches(7)
    codes, frames = loaded.encode(list(x[i, : n[i]] for i in range(8)), 16000)
    assert codes.shape == (8, frames.max(), 1) and frames.tolist() == (-(-n // 320)).tolist()
    feats, _ = full.batch_features(*full.prepare(list(x[i, : n[i]] for i in range(8)), 16000))
    np.testing.assert_array_equal(np.asarray(codes)[..., 0], np.asarray(KM.assign(full.codebook, feats)[0]))
    assert TT.tokenizer_fingerprint(loaded) == TT.tokenizer_fingerprint(full)
    assert TT.tokenizer_fingerprint(loaded) != TT.tokenizer_fingerprint(full.with_codebook(full.codebook + 1))
    with pytest.raises(ValueError, match="input-only"):
        loaded.decode(codes)


def test_audio_pretokenizes_through_the_shared_path(whisper_dir, tmp_path):
    rng = np.random.default_rng(5)
    tok = KM.AudioKMeansTokenizer.from_pretrained(whisper_dir, layer=LAYER, num_codes=4,
                                                  codebook=rng.normal(0, 1, (4, 32)).astype(np.float32))
    recs = lambda lengths: [{"audio": (rng.uniform(-0.3, 0.3, n) * 32767).astype(np.int16), "text": f"clip {i}"}
                            for i, n in enumerate(lengths)]
    sources = {"train": recs([2000, 3500, 3200, 2500, 1000]), "test": recs([3000, 2200])}
    src = {"kind": "tfds", "name": "in_memory", "audio_key": "audio", "text_key": "text", "label_key": "",
           "source_rate": 16000}
    man = TT.pretokenize_audio(tok, src, str(tmp_path), seconds=0.2, sources=sources, batch_size=4, verbose=False)
    assert man["code_shape"] == [10, 1] and man["tokenizer"]["codebook_size"] == 4
    assert man["records"] == {"train": 4, "test": 2} and man["skipped"]["train"] == 1  # 3,500 > 3,200 samples
    stored = TT.token_source(man, "train")
    for j in range(4):
        clip = sources["train"][int(stored[j]["index"])]["audio"]
        want, frames = tok.encode(np.pad(clip, (0, 3200 - len(clip)))[None], 16000)
        assert frames.tolist() == [10]
        np.testing.assert_array_equal(stored[j]["codes"], np.asarray(want)[0])


def test_whisper_kmeans_config_builds_on_a_tiny_checkpoint(whisper_dir):
    from configs.audio import whisper_kmeans

    cfg = whisper_kmeans.get_config(f"smoke,checkpoint={whisper_dir}")
    tok = KM.tokenizer_from_config(cfg.tokenizer)
    assert isinstance(tok, KM.AudioKMeansTokenizer) and tok.vocab_size == cfg.tokenizer.num_codes
    assert tok.config.layer == cfg.tokenizer.layer and tok.frame_rate == 50.0
    real = whisper_kmeans.get_config("checkpoint=/path/to/whisper-small")
    assert real.tokenizer.layer == 11 and real.tokenizer.num_codes >= 1024
    with pytest.raises(FileNotFoundError, match="config.tokenizer.checkpoint"):
        KM.tokenizer_from_config(real.tokenizer)
    with pytest.raises(ValueError, match="no codebook yet: fit it"):
        tok.encode(np.zeros(3200, np.float32), 16000)
    with pytest.raises(ValueError, match=r"config.tokenizer.kind='beit'"):
        KM.tokenizer_from_config({**cfg.tokenizer.to_dict(), "kind": "beit"})
    with pytest.raises(ValueError, match=r"layer=9: this Whisper encoder has hidden states 0..3"):
        KM.AudioKMeansTokenizer.from_pretrained(whisper_dir, layer=9, num_codes=8)


# ---- images: CLIP + k-means --------------------------------------------------------------------------------------
def test_image_tokenizer_fits_and_pretokenizes(tmp_path):
    d = str(tmp_path / "clip")
    save_tiny_vision(d, "CLIPVisionModel")
    tok = KM.ImageKMeansTokenizer.from_pretrained(d, layer=1, num_codes=6)
    assert tok.token_grid == (4, 4)
    images = lambda i: np.random.default_rng(i).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    from configs.image import clip_kmeans
    from teal_jax.train import kmeans_fit

    cfg = clip_kmeans.get_config(f"smoke,checkpoint={d},k=6")
    cfg.train.steps = 2
    train = [{"image": img} for i in range(2) for img in images(50 + i)]
    fitted, hist = kmeans_fit.fit_from_config(cfg, str(tmp_path / "run"), sources={"train": train, "test": []},
                                              log=lambda s: None)
    assert len(hist) == 2 and fitted.config.layer == 1
    codes = np.asarray(fitted.encode(images(9)[:4]))  # batch 4: the pre-tokenization below reuses the compilation
    assert codes.shape == (4, 4, 4) and codes.min() >= 0 and codes.max() < 6
    # patch features: the CLIP tower on the normalised image, class token dropped
    from teal_jax.models.vit import ViT

    x = (images(9)[:4].astype(np.float32) / 255 - np.asarray(tok.config.mean)) / np.asarray(tok.config.std)
    vit = jax.jit(lambda p, x: ViT(tok.config.encoder).apply({"params": p}, x, layer=1)[:, 1:])
    h = vit(tok.encoder_params, x.astype(np.float32))
    np.testing.assert_array_equal(codes.reshape(4, -1), np.asarray(KM.assign(fitted.codebook, h)[0]))
    src = {"kind": "tfds", "name": "in_memory", "image_key": "image", "text_key": "text", "label_key": ""}
    recs = lambda n, o: [{"image": images(o + i)[0], "text": f"image {i}"} for i in range(n)]
    man = TT.pretokenize_images(fitted, src, str(tmp_path / "tok"), sources={"train": recs(5, 20), "test": recs(2, 40)},
                                batch_size=4, verbose=False)
    stored = TT.token_source(man, "train")
    assert man["code_shape"] == [16] and len(stored) == 5
    np.testing.assert_array_equal(stored[3]["codes"], np.asarray(fitted.encode(images(23)[:4]))[0].reshape(-1))
    with pytest.raises(ValueError, match="input-only"):
        fitted.decode(codes)
