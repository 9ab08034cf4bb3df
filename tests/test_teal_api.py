"""TealModel (teal_jax.inference.teal): prompts are the Templates prompts, outputs have the right shapes/dtypes and
equal the de-tokenized sampler spans, chunking, guidance, bad inputs, and ``teal_jax.load`` through a 1-step trainer
run.

Everything is tiny and random: a SentencePiece model trained here on a few sentences, the digits_tiny/speech_tiny
smoke tokenizers with deterministic random weights (shapes from ``eval_shape``: no init compilation) and a 2-layer
TEAL LM. Every method runs once, through a spy on ``inference.teal.sample_ids``, in one module fixture.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from configs.audio import speech_tiny
from configs.image import digits_tiny
from teal_jax import vocab as V
from teal_jax.data import templates as T
from teal_jax.inference import constraints as C
from teal_jax.inference import teal as inference_teal
from teal_jax.inference.teal import TealModel
from teal_jax.models.codec import Codec, CodecConfig
from teal_jax.models.teal import TealConfig, TealLM
from teal_jax.models.vqgan import VQGAN, VQGANConfig
from teal_jax.tokenizers.audio import AudioTokenizer
from teal_jax.tokenizers.image import ImageTokenizer
from teal_jax.tokenizers.text import TextTokenizer
from teal_jax.train import teal_objective as TO

AUDIO_SECONDS = 0.05  # 5 codec frames of 160 samples at 16 kHz


def fake_params(shapes, seed: int = 0):
    """Deterministic random parameters for a tree of shape structs: norm scales 1, biases 0, other leaves
    N(0, 1/fan_in) (fan_in = product of all but the last axis)."""
    rng = np.random.default_rng(seed)

    def make(path, s):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "scale":
            return np.ones(s.shape, s.dtype)
        if name == "bias":
            return np.zeros(s.shape, s.dtype)
        fan = max(int(np.prod(s.shape[:-1])), 1)
        return (rng.normal(size=s.shape) / np.sqrt(fan)).astype(s.dtype)

    return jax.tree_util.tree_map_with_path(make, shapes)


def corpus_lines() -> list[str]:
    lines = list(T.DIGITS) + [f"a picture of {w}" for w in T.DIGITS] + [f"{a} {b}" for a in T.DIGITS
                                                                             for b in T.DIGITS[:3]]
    lines += [T.sum_question(a, b, m) for a, b in T.SUM_PAIRS[:20] for m in ("image", "audio")]
    return lines


def run_config(tokenizer: TextTokenizer, directory: str):
    """The TEAL run config of the tiny model (synthetic data stream; tokenizer fields set)."""
    c = TO.synthetic_config()
    c.model.lm.vocab_size = tokenizer.vocab_size
    c.model.vocab.update(dict(image_codebook_size=200, audio_codebook_size=64, audio_num_levels=4,
                              audio_scheme="first_levels", audio_keep_levels=2))
    c.data.text_tokenizer = tokenizer.path
    c.data.image_tokenizer = os.path.join(directory, "image_tok")
    c.data.audio_tokenizer = os.path.join(directory, "audio_tok")
    c.data.audio_seconds = AUDIO_SECONDS
    return c


@functools.lru_cache(maxsize=1)
def tiny_parts() -> dict:
    """Tokenizers, run config, TealConfig and random TEAL params, built once per process (shared by the TEAL test
    modules so compilations are shared too)."""
    d = tempfile.mkdtemp(prefix="teal_api_")
    atexit.register(shutil.rmtree, d, True)
    with open(os.path.join(d, "corpus.txt"), "w") as f:
        f.write("\n".join(corpus_lines()) + "\n")
    text = TextTokenizer.train([os.path.join(d, "corpus.txt")], 96, os.path.join(d, "spm"), byte_fallback=False)

    image_run = digits_tiny.get_config("smoke")
    icfg = VQGANConfig.from_config(image_run.model)
    ishapes = jax.eval_shape(VQGAN(icfg).init, jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    image = ImageTokenizer(icfg, fake_params(nn.unbox(ishapes["params"]), 1))

    audio_run = speech_tiny.get_config("smoke")
    acfg = CodecConfig.from_config(audio_run.model, dtype="float32")
    ashapes = jax.eval_shape(lambda: Codec(acfg).init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                                                      jnp.zeros((1, 800, 1)), train=False))
    astate = {k: jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), v) for k, v in ashapes.items()
              if k != "params"}
    audio = AudioTokenizer(acfg, fake_params(nn.unbox(ashapes["params"]), 2), astate)

    config = run_config(text, d)
    teal_config = TealConfig.from_config(config)
    shapes = jax.eval_shape(TealLM(teal_config).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    frames, _ = T.audio_span(AUDIO_SECONDS, acfg.sample_rate, acfg.hop_length)
    return dict(dir=d, text=text, image=image, audio=audio, image_run=image_run, audio_run=audio_run,
                config=config, teal_config=teal_config, params=fake_params(nn.unbox(shapes["params"]), 3),
                frames=frames)


def tiny_model(**kwargs) -> TealModel:
    p = tiny_parts()
    return TealModel(p["teal_config"], p["params"], p["text"], p["image"], p["audio"], p["frames"], **kwargs)


def digit_images(n: int, seed: int = 0) -> np.ndarray:
    """uint8 [n, 32, 32] blobs (the tokenizer is random: content does not matter, only shapes)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32), dtype=np.uint8)


def tones(n: int, samples: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000.0
    return (0.3 * np.sin(2 * np.pi * rng.uniform(200, 800, (n, 1)) * t)).astype(np.float32)


TEXTS = ["seven", "the sum of two and three is"]
NO_SPANS = C.SpanConfig()


@pytest.fixture(scope="module")
def parts():
    return tiny_parts()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def run(model):
    """Every method once, through a spy on inference.teal.sample_ids: {method: (output, [sampler calls])}."""
    calls = []
    real = inference_teal.sample_ids

    def spy(config, params, prompts, sampling, spans=NO_SPANS, rng=None, uncond_prompts=None):
        out = real(config, params, prompts, sampling, spans, rng, uncond_prompts)
        calls.append(dict(prompts=[list(p) for p in prompts], sampling=sampling, spans=spans,
                          uncond=uncond_prompts, out=out))
        return out

    images, waves = digit_images(2), tones(2, 600)
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inference_teal, "sample_ids", spy)
        for name, fn in [("caption", lambda: model.caption(images)),
                         ("transcribe", lambda: model.transcribe(waves, 16000)),
                         ("t2i", lambda: model.generate_image(TEXTS, seed=1)),
                         ("t2i_cfg", lambda: model.generate_image(TEXTS, guidance_scale=3.0, seed=1)),
                         ("tts", lambda: model.generate_speech(TEXTS, temperature=0.8, top_k=20, seed=2)),
                         ("text", lambda: model.generate_text(["one two", "three"]))]:
            start = len(calls)
            out = fn()
            results[name] = (out, calls[start:])
    return dict(results=results, images=images, waves=waves)


def test_output_shapes_and_dtypes(run, parts):
    r = run["results"]
    for name in ("caption", "transcribe", "text"):
        out = r[name][0]
        assert isinstance(out, list) and len(out) == 2 and all(isinstance(s, str) for s in out), name
    for name in ("t2i", "t2i_cfg"):
        img = r[name][0]
        assert img.shape == (2, 32, 32, 1) and img.dtype == np.uint8, name
    wav = r["tts"][0]
    assert wav.shape == (2, parts["frames"] * 160) == (2, 800) and wav.dtype == np.float32
    assert np.isfinite(wav).all()


def test_prompts_are_the_template_prompts(run, parts, model):
    r, tpl, v = run["results"], model.templates, model.vocab
    tok = parts["text"]
    assert tpl == T.Templates(v, bos=tok.bos_id, eos=tok.eos_id)
    for name in r:
        assert len(r[name][1]) == 1, name  # one sampler call per (small) batch
    codes = np.asarray(parts["image"].encode(run["images"]))
    (call,) = r["caption"][1]
    assert call["prompts"] == [tpl.prompt("caption", row) for row in v.image_to_unified(codes)]
    acodes, _ = parts["audio"].encode(T.fit_audio(run["waves"], 800), 16000)
    (call,) = r["transcribe"][1]
    assert call["prompts"] == [tpl.prompt("asr", row) for row in v.audio_to_unified(np.asarray(acodes))]
    for name in ("caption", "transcribe", "text"):
        (call,) = r[name][1]
        # text answers: spans disabled (only text ids), stop at eos, greedy
        assert call["spans"] == C.SpanConfig() and call["uncond"] is None
        assert call["sampling"].eos_id == tok.eos_id and call["sampling"].temperature == 0.0
    (call,) = r["text"][1]
    assert call["prompts"] == [tpl.prompt("lm", tok.encode(t)) for t in ("one two", "three")]
    for name, task, n, closer in (("t2i", "t2i", 64, v.eoi), ("tts", "tts", 10, v.eoa)):
        (call,) = r[name][1]
        assert call["prompts"] == [tpl.prompt(task, tok.encode(t)) for t in TEXTS]
        assert call["spans"] == C.SpanConfig(image_tokens=64, audio_frames=5, guidance_scale=1.0)
        assert call["sampling"].eos_id == closer and call["sampling"].max_new_tokens == n + 1
        assert call["uncond"] is None
    (call,) = r["t2i_cfg"][1]
    assert call["spans"].guidance_scale == 3.0 and call["uncond"] == [tpl.null_prompt("t2i")] * 2
    assert call["uncond"][0] == C.null_prompt(v, call["prompts"][0])
    (call,) = r["tts"][1]
    assert (call["sampling"].temperature, call["sampling"].top_k) == (0.8, 20)


def test_image_spans_have_h_times_w_codes_and_decode_to_the_output(run, parts, model):
    v = model.vocab
    for name in ("t2i", "t2i_cfg"):
        out, (call,) = run["results"][name]
        rows = call["out"]
        assert rows.shape == (2, 65)
        assert (v.modality_of(rows[:, :64]) == V.IMAGE).all() and (rows[:, 64] == v.eoi).all()
        expect = parts["image"].decode(v.unified_to_image(rows[:, :64], 8, 8))
        np.testing.assert_array_equal(out, np.asarray(expect))
    assert model.image_grid == (8, 8) and model.image_size == 32


def test_speech_spans_have_frames_times_levels_codes_and_decode_to_the_output(run, parts, model):
    v = model.vocab
    out, (call,) = run["results"]["tts"]
    rows = call["out"]
    assert rows.shape == (2, 11) and (rows[:, 10] == v.eoa).all()
    # first_levels keeps 2 of the codec's 4 RVQ levels, frame-major: levels 0,1,0,1,...
    np.testing.assert_array_equal(v.audio_level_of(rows[:, :10]), np.tile([0, 1], (2, 5)))
    codes = v.unified_to_audio(rows[:, :10])
    assert codes.shape == (2, 5, 2)
    wav, n = parts["audio"].decode(codes)
    np.testing.assert_array_equal(out, np.asarray(wav))
    assert n.tolist() == [800, 800] and model.audio_samples == 800 and model.sample_rate == 16000


def test_text_outputs_are_the_decoded_rows(run, parts, model):
    tok = parts["text"]
    for name in ("caption", "transcribe", "text"):
        out, (call,) = run["results"][name]
        rows = call["out"]
        assert (rows < model.vocab.text_size).all()  # spans disabled: text ids only
        assert out == [tok.decode(model.templates.parse_text(row)) for row in rows], name


def test_chunks_give_the_same_greedy_answers(run, model):
    """max_batch=2 over 3 images: chunk 1 is the run's batch, chunk 2 is padded with a copy of its last image
    (one sampler shape for every chunk); greedy answers do not depend on the chunking."""
    small = tiny_model(max_batch=2)
    images = np.concatenate([run["images"], digit_images(1, seed=5)])
    whole = small.caption(images)
    assert len(whole) == 3 and whole[:2] == run["results"]["caption"][0]
    assert whole[2:] == model.caption(np.concatenate([images[2:], images[2:]]))[:1]


def test_transcribe_cuts_long_clips_with_a_warning(run, model):
    long = np.concatenate([run["waves"], tones(2, 600, seed=9)], axis=1)  # 1200 samples > the 800-sample span
    with pytest.warns(UserWarning, match=r"clip\(s\) \[0, 1\] are longer than the audio span \(800 samples"):
        ids = model.audio_to_ids(long, 16000)
    np.testing.assert_array_equal(ids, model.audio_to_ids(long[:, :800], 16000))
    # another rate is resampled to the codec's, then fitted; int16 and a list of clips are accepted
    assert model.audio_to_ids([run["waves"][0][:400], run["waves"][1][:300]], 8000).shape == (2, 10)
    assert model.fit_waveforms((run["waves"] * 32767).astype(np.int16), 16000).shape == (2, 800)


def test_bad_inputs_give_clear_errors(model, parts, tmp_path):
    with pytest.raises(ValueError, match=r"images must be \[H, W\], \[B, H, W\] or \[B, H, W, 1\|3\|4\], got shape "
                                         r"\(32,\)"):
        model.caption(np.zeros(32, np.uint8))
    with pytest.raises(ValueError, match="got shape"):
        model.caption(np.zeros((1, 1, 32, 32, 1), np.uint8))
    bad = np.zeros((1, 32, 32), np.float32)
    bad[0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.caption(bad)
    with pytest.raises(ValueError, match="empty batch"):
        model.caption(np.zeros((0, 32, 32), np.uint8))
    wav = tones(2, 600)
    wav[1, 10] = np.nan
    with pytest.raises(ValueError, match=r"clip 1: 1 NaN/Inf sample"):
        model.transcribe(wav, 16000)
    with pytest.raises(ValueError, match="empty batch"):
        model.transcribe([], 16000)
    with pytest.raises(ValueError, match=r"generate_image: texts \[1\] are empty \(a condition needs at least 1 "
                                         r"token"):
        model.generate_image(["seven", ""])
    with pytest.raises(ValueError, match="generate_image: empty list of texts"):
        model.generate_image([])
    with pytest.raises(ValueError, match="generate_text: empty list of texts"):
        model.generate_text([])
    with pytest.raises(TypeError, match="pass a list of strings"):
        model.generate_speech("seven")
    with pytest.raises(ValueError, match="shape"):
        model.save_wav(np.zeros(10, np.float32), ["a.wav"])
    with pytest.raises(ValueError, match="2 images but 1 paths"):
        model.save_png(np.zeros((2, 4, 4), np.uint8), [str(tmp_path / "a.png")])
    text_only = TealModel(parts["teal_config"], parts["params"], parts["text"])
    with pytest.raises(ValueError, match="no image tokenizer"):
        text_only.generate_image(["seven"])
    with pytest.raises(ValueError, match="no audio tokenizer"):
        text_only.transcribe(wav, 16000)
    with pytest.raises(ValueError, match="needs the span length in frames"):
        TealModel(parts["teal_config"], parts["params"], parts["text"], audio_tokenizer=parts["audio"])
    small_vocab = dataclasses.replace(parts["teal_config"], vocab=dataclasses.replace(
        parts["teal_config"].vocab, image_codebook_size=100))
    with pytest.raises(ValueError, match="image tokenizer has 200 codes but config.model.vocab.image_codebook_size="
                                         "100"):
        TealModel(small_vocab, parts["params"], parts["text"], parts["image"])


def test_save_png_and_wav_round_trip(run, model, tmp_path):
    from PIL import Image

    from teal_jax.media.audio import read_wav

    imgs = run["results"]["t2i"][0]
    paths = model.save_png(imgs, [tmp_path / "a.png", tmp_path / "sub" / "b.png"])
    np.testing.assert_array_equal(np.asarray(Image.open(paths[1])), imgs[1, ..., 0])
    wav = run["results"]["tts"][0]
    paths = model.save_wav(wav, [tmp_path / "a.wav", tmp_path / "b.wav"])
    back, rate = read_wav(paths[0])
    assert rate == 16000 and back.shape == (800, 1)
    np.testing.assert_allclose(back[:, 0], np.clip(wav[0], -1, 1), atol=1 / 32767 + 1e-6)


# ---- teal_jax.load through a real (1-step) trainer run -------------------------------------------------------------
def _write_tokenizer_checkpoint(workdir: str, run_cfg, tokenizer) -> None:
    from teal_jax.checkpoint import Checkpointer

    state = {"params": {"model": jax.tree.map(np.asarray, tokenizer.variables["params"])}}
    rest = {k: v for k, v in tokenizer.variables.items() if k != "params"}
    if rest:
        state["model_state"] = jax.tree.map(np.asarray, rest)
    ckpt = Checkpointer(workdir, async_save=False)
    ckpt.save(0, state, {}, run_cfg)
    ckpt.close()


def _write_teal_checkpoint(workdir: str, run_cfg, params) -> None:
    from teal_jax.checkpoint import Checkpointer

    ckpt = Checkpointer(workdir, async_save=False)
    ckpt.save(1, {"params": {"model": jax.tree.map(np.asarray, params)}}, {}, run_cfg)
    ckpt.close()


@pytest.fixture(scope="module")
def saved(parts, tmp_path_factory):
    """A TEAL workdir (checkpoint written directly) whose config names tokenizer workdirs; (config, workdir)."""
    d = tmp_path_factory.mktemp("teal_saved")
    c = run_config(parts["text"], str(d))
    _write_tokenizer_checkpoint(c.data.image_tokenizer, parts["image_run"], parts["image"])
    _write_tokenizer_checkpoint(c.data.audio_tokenizer, parts["audio_run"], parts["audio"])
    _write_teal_checkpoint(str(d / "teal"), c, parts["params"])
    return c, str(d / "teal")


def _same_tree(a, b):
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, a), jax.tree.map(np.asarray, b))


def test_load_round_trip(saved, parts, run):
    """teal_jax.load -> TealModel with the saved params and the tokenizers its config names; it generates exactly
    what the model it was saved from generates."""
    import teal_jax

    c, workdir = saved
    m = teal_jax.load(workdir)
    assert isinstance(m, TealModel)
    assert m.config == parts["teal_config"] and m.audio_frames == parts["frames"] == 5
    assert m.run_config.data.audio_seconds == AUDIO_SECONDS and m.text_tokenizer.path == parts["text"].path
    _same_tree(m.params, parts["params"])
    _same_tree(m.image_tokenizer.variables, parts["image"].variables)
    _same_tree(m.audio_tokenizer.variables, parts["audio"].variables)
    assert m.image_tokenizer.config == parts["image"].config and m.audio_tokenizer.config == parts["audio"].config
    assert m.generate_text(["one two", "three"]) == run["results"]["text"][0]


@pytest.mark.slow
def test_load_after_a_trainer_run(parts, run, tmp_path):
    """A real 1-step TEAL trainer run whose config names the tokenizers, then teal_jax.load."""
    import teal_jax
    from teal_jax import checkpoint
    from teal_jax.train import trainer as trainer_lib

    c = run_config(parts["text"], str(tmp_path))
    _write_tokenizer_checkpoint(c.data.image_tokenizer, parts["image_run"], parts["image"])
    _write_tokenizer_checkpoint(c.data.audio_tokenizer, parts["audio_run"], parts["audio"])
    c.train.update(dict(steps=1, batch_size=8, log_every=1, eval_every=0, checkpoint_every=1000,
                        async_checkpoints=False))
    trainer_lib.train(c, str(tmp_path / "teal"))
    m = teal_jax.load(str(tmp_path / "teal"))
    assert isinstance(m, TealModel) and m.config == parts["teal_config"] and m.audio_frames == 5
    _, params, _ = checkpoint.load_params(str(tmp_path / "teal"))
    _same_tree(m.params, params["model"])
    out = m.caption(run["images"])
    assert len(out) == 2 and all(isinstance(s, str) for s in out)


def test_load_names_the_missing_tokenizer(saved, tmp_path):
    from teal_jax.inference.load import load_tokenizer as _load_tokenizer

    with pytest.raises(FileNotFoundError, match=r"config.data.image_tokenizer='/nowhere/img': no such directory"):
        _load_tokenizer("image", "/nowhere/img")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config.data.audio_tokenizer=.*empty.*cannot load the audio "
                                                r"tokenizer: no checkpoint"):
        _load_tokenizer("audio", str(tmp_path / "empty"))
    c, workdir = saved
    # A checkpoint whose config names a missing tokenizer directory: TealModel.from_checkpoint says which field.
    from teal_jax.checkpoint import Checkpointer, load_params

    cfg, params, _ = load_params(workdir)
    cfg.data.image_tokenizer = str(tmp_path / "gone")
    broken = str(tmp_path / "broken")
    ckpt = Checkpointer(broken, async_save=False)
    ckpt.save(1, {"params": params}, {}, cfg)
    ckpt.close()
    with pytest.raises(FileNotFoundError, match=r"config.data.image_tokenizer=.*gone.*no such directory"):
        TealModel.from_checkpoint(broken)
    cfg.data.image_tokenizer = c.data.image_tokenizer
    cfg.data.text_tokenizer = str(tmp_path / "no.model")
    ckpt = Checkpointer(broken, async_save=False)
    ckpt.save(2, {"params": params}, {}, cfg)
    ckpt.close()
    with pytest.raises(FileNotFoundError, match=r"config.data.text_tokenizer.*no.model.* does not exist"):
        TealModel.from_checkpoint(broken)
    cfg.data.text_tokenizer = ""
    ckpt = Checkpointer(broken, async_save=False)
    ckpt.save(3, {"params": params}, {}, cfg)
    ckpt.close()
    with pytest.raises(FileNotFoundError, match="no text tokenizer: config.data.text_tokenizer is ''"):
        TealModel.from_checkpoint(broken)


def test_text_tokenizer_found_through_the_base_lm(parts, tmp_path):
    """config.data.text_tokenizer='' -> the base LM's tokenizer (lineage.lm_run_text_tokenizer on its config)."""
    from teal_jax.checkpoint import Checkpointer
    from teal_jax.config import base_config
    from teal_jax.lineage import text_tokenizer

    base = base_config()
    base.objective = "lm"
    base.data.tokenizer_model = parts["text"].path
    ckpt = Checkpointer(str(tmp_path / "lm"), async_save=False)
    ckpt.save(0, {"params": {"model": {"w": np.zeros(2, np.float32)}}}, {}, base)
    ckpt.close()
    c = run_config(parts["text"], str(tmp_path))
    c.data.text_tokenizer = ""
    c.model.base_lm_workdir = str(tmp_path / "lm")
    assert text_tokenizer(c, run="run") == parts["text"].path
