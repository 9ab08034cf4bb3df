"""The TEAL task metrics (evaluate/scoring, teal_tasks, samples, guidance, perplexity): scoring rules on
hand-checked cases (stub models), prompts of every generation metric, WER against hand-counted edits (jiwer), and
the metrics on the tiny random TealModel of test_teal_api (files written, perplexity vs a direct computation, bitwise
text-logit flag)."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from teal_jax import lineage
from teal_jax.data import templates as T
from teal_jax.evaluate import guidance as G
from teal_jax.evaluate import perplexity as P
from teal_jax.evaluate import samples as SM
from teal_jax.evaluate import scoring as S
from teal_jax.evaluate import teal_tasks as E
from teal_jax.inference.teal import TealModel

DIGITS = T.DIGITS


# ---- scoring rules ---------------------------------------------------------------------------------------------
def test_caption_rule():
    assert S.caption_correct("seven", 7) and S.caption_correct("A Seven.", 7) and S.caption_correct("7", 7)
    assert S.caption_correct("a handwritten seven digit", 7)
    assert not S.caption_correct("seven or one", 7)  # names another digit too
    assert not S.caption_correct("one", 7) and not S.caption_correct("", 7)
    assert not S.caption_correct("sevens", 7) and not S.caption_correct("17", 7)  # not the word / numeral
    assert S.words("Seven, 3 and TWO!") == ["seven", "three", "and", "two"]


def test_word_error_rate_hand_checked():
    # "one two three" vs "one too three": 1 substitution; "four five" vs "four five six": 1 insertion; 5 ref words
    r = S.word_error_rate(["one two three", "four five"], ["one too three", "four five six"])
    assert (r["substitutions"], r["deletions"], r["insertions"], r["reference_words"]) == (1, 0, 1, 5)
    assert r["wer"] == pytest.approx(2 / 5) and r["exact_match"] == 0.0 and r["n"] == 2
    r = S.word_error_rate(["Seven!", "one two", "a b"], ["seven", "one", ""])  # case/punctuation ignored
    assert (r["substitutions"], r["deletions"], r["insertions"]) == (0, 3, 0)
    assert r["wer"] == pytest.approx(3 / 5) and r["exact_match"] == pytest.approx(1 / 3)
    assert S.word_error_rate(["the number is 3"], ["the number is three"])["wer"] == 0.0
    with pytest.raises(ValueError, match=r"references \[1\] have no words"):
        S.word_error_rate(["one", "..."], ["one", "two"])
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        S.word_error_rate(["one", "two"], ["one"])


class StubModel:
    """Answers from tables; records what it was asked."""

    sample_rate = 16000

    def __init__(self, captions=None, transcripts=None):
        self.captions, self.transcripts, self.asked = captions, transcripts, []

    def caption(self, images, **kw):
        self.asked.append(("caption", len(images), kw))
        return list(self.captions)

    def transcribe(self, waves, rate, **kw):
        self.asked.append(("transcribe", rate, kw))
        return list(self.transcripts)

    def generate_image(self, texts, **kw):
        """An image whose mean brightness encodes the first digit the text names (or 0)."""
        self.asked.append(("t2i", list(texts), kw))
        d = [next((w for w in S.words(t) if w in DIGITS), "zero") for t in texts]
        return np.stack([np.full((32, 32, 1), 20 * DIGITS.index(w), np.uint8) for w in d])

    def generate_speech(self, texts, **kw):
        self.asked.append(("tts", list(texts), kw))
        return np.stack([np.full(self.sample_rate // 2, 0.05 * (1 + len(t) % 5), np.float32) for t in texts])

    save_png = staticmethod(TealModel.save_png)

    def save_wav(self, waves, paths):
        from teal_jax.media.audio import write_wav

        for w, p in zip(waves, paths, strict=True):
            write_wav(p, w, self.sample_rate)


class BrightnessClassifier:
    def predict(self, images):
        return np.round(np.asarray(images, np.float64).reshape(len(images), -1).mean(1) / 20).astype(int)


def test_caption_accuracy_counts(tmp_path):
    model = StubModel(captions=["seven", "a three", "one two", "nine"])
    r = E.caption_accuracy(model, np.zeros((4, 32, 32), np.uint8), [7, 3, 1, 8], references=["seven", "three",
                                                                                               "one", "eight"],
                           sample_dir=str(tmp_path), max_samples=2, temperature=0.0)
    assert r == {"accuracy": 0.5, "exact_match": 0.25, "n": 4,
                 "per_class": {"one": 0.0, "three": 1.0, "seven": 1.0, "eight": 0.0}}
    assert model.asked == [("caption", 4, {"temperature": 0.0})]
    lines = (tmp_path / "captions.tsv").read_text().splitlines()
    assert lines[0] == "index\tlabel\tcorrect\tcaption" and lines[2] == "1\tthree\t1\ta three" and len(lines) == 5
    assert sorted(os.listdir(tmp_path)) == ["caption_000_seven.png", "caption_001_three.png", "captions.tsv"]
    with pytest.raises(ValueError, match="4 examples but 3 labels"):
        E.caption_accuracy(model, np.zeros((4, 32, 32), np.uint8), [1, 2, 3])
    with pytest.raises(ValueError, match="labels must be digits"):
        E.caption_accuracy(model, np.zeros((4, 32, 32), np.uint8), [1, 2, 3, 10])


def test_generation_metrics_prompts_and_counts(tmp_path):
    model = StubModel()
    r = E.text_to_image_accuracy(model, BrightnessClassifier(), per_class=2, sample_dir=str(tmp_path),
                                 guidance_scale=3.0, seed=4)
    (kind, prompts, kw), = model.asked
    assert prompts == [w for w in DIGITS for _ in range(2)] and kw == {"guidance_scale": 3.0, "seed": 4}
    assert r["accuracy"] == 1.0 and r["n"] == 20 and r["per_class"] == {w: 1.0 for w in DIGITS}
    assert np.trace(np.asarray(r["confusion"])) == 20
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".png")]) == 21 and (tmp_path / "t2i.tsv").exists()
    assert (tmp_path / "t2i_grid.png").stat().st_size > 1000  # 20 samples + the grid

    model.asked.clear()
    pairs = ((0, 7), (3, 0), (4, 5))
    r = E.reasoning_image_accuracy(model, BrightnessClassifier(), pairs=pairs, per_pair=2)
    (kind, prompts, kw), = model.asked
    assert prompts == [T.sum_question(a, b, "image") for a, b in pairs for _ in range(2)]
    # the stub draws the first digit it reads (a), the classifier reads it: right only where a == a + b
    assert r["accuracy"] == pytest.approx(1 / 3) and r["per_class"] == {"three": 1.0, "seven": 0.0, "nine": 0.0}
    assert r["confusion"][7][0] == 2 and r["confusion"][9][4] == 2

    model.asked.clear()
    seen = []

    class SpeechStub:
        def predict(self, audio):
            seen.append(np.asarray(audio).shape)
            return np.full(len(audio), 3)

    model.sample_rate = 8000  # resampled to the classifier's 16 kHz
    r = E.reasoning_speech_accuracy(model, SpeechStub(), pairs=((1, 2), (0, 9)), per_pair=1,
                                    sample_dir=str(tmp_path / "s"))
    assert model.asked[0][1] == ["the sum of one and two is", "the sum of zero and nine is"]
    assert seen == [(2, 8000)] and r["accuracy"] == 0.5 and r["n"] == 2
    assert sorted(os.listdir(tmp_path / "s")) == [  # a spectrogram beside each WAV
        "reasoning_speech.tsv", "reasoning_speech_000_three_as_three.png", "reasoning_speech_000_three_as_three.wav",
        "reasoning_speech_001_nine_as_three.png", "reasoning_speech_001_nine_as_three.wav"]
    model.asked.clear()
    r = E.tts_accuracy(model, SpeechStub(), per_class=1, prompt_format="say {word}")
    assert model.asked[0][1] == [f"say {w}" for w in DIGITS] and r["accuracy"] == 0.1
    with pytest.raises(ValueError, match="per_class=0"):
        E.tts_accuracy(model, SpeechStub(), per_class=0)


def test_asr_wer_through_a_model(tmp_path):
    model = StubModel(transcripts=["seven", "the number is too"])
    r = E.asr_wer(model, np.zeros((2, 100), np.float32), ["seven", "the number is two"], 16000,
                  sample_dir=str(tmp_path))
    assert r["wer"] == pytest.approx(1 / 5) and r["exact_match"] == 0.5
    # the split by reference length: 0 errors in 1 one-word reference, 1 in 4 words of the longer one
    assert (r["wer_single_word"], r["n_single_word"]) == (0.0, 1)
    assert (r["wer_multi_word"], r["n_multi_word"]) == (pytest.approx(1 / 4), 1)
    assert (tmp_path / "asr.tsv").read_text().splitlines()[2] == "1\tthe number is two\tthe number is too"
    with pytest.raises(ValueError, match="2 clips but 1 transcripts"):
        E.asr_wer(model, np.zeros((2, 100), np.float32), ["seven"], 16000)


# ---- the tiny random TealModel -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    from test_teal_api import tiny_model

    return tiny_model()


def test_metrics_on_the_tiny_model(model, tmp_path):
    """Every metric runs through the real TealModel (random weights: the values are only checked for range)."""
    from test_teal_api import TEXTS, digit_images, tones

    r = E.caption_accuracy(model, digit_images(2), [3, 4], sample_dir=str(tmp_path / "cap"))
    assert 0.0 <= r["accuracy"] <= 1.0 and r["n"] == 2
    r = E.asr_wer(model, tones(2, 600), ["three", "four five"], 16000)
    assert r["wer"] >= 0.0 and r["reference_words"] == 3
    r = E.image_prompt_accuracy(model, BrightnessClassifier(), TEXTS, [7, 5], sample_dir=str(tmp_path / "img"),
                                seed=1)
    assert r["n"] == 2 and sum(map(sum, r["confusion"])) == 2
    pngs = sorted(f for f in os.listdir(tmp_path / "img") if f.endswith(".png") and f != "t2i_grid.png")
    assert len(pngs) == 2 and pngs[0].startswith("t2i_000_seven_as_") and (tmp_path / "img" / "t2i_grid.png").exists()

    class SpeechStub:
        def predict(self, audio):
            assert np.asarray(audio).shape == (2, 800)
            return np.array([7, 0])

    r = E.speech_prompt_accuracy(model, SpeechStub(), TEXTS, [7, 5], sample_dir=str(tmp_path / "wav"),
                                 temperature=0.8, top_k=20, seed=2)
    assert r["accuracy"] == 0.5 and len(os.listdir(tmp_path / "wav")) == 5  # tsv, 2 WAVs, 2 spectrograms


def test_text_perplexity_bitwise_and_against_a_direct_computation(model):
    texts = ["one two three", "seven", "the sum of two and three is"]
    base = model.params["lm"]
    r = P.text_perplexity(model, texts, base_lm_params=base, batch_size=2)  # 2 batches, the last padded
    assert r["logits_bitwise_equal"] and r["max_abs_logit_diff"] == 0.0
    assert r["base_ppl"] == r["teal_ppl"]
    tok = model.text_tokenizer
    ids = [[tok.bos_id, *tok.encode(t), tok.eos_id] for t in texts]
    assert r["tokens"] == sum(len(i) - 1 for i in ids)
    # direct: one batch right-padded to the longest text (causal: padding after a row never changes its logits),
    # log-softmax over the text rows of the TEAL logits, float64
    batch = np.zeros((len(ids), max(map(len, ids))), np.int32)
    for i, row in enumerate(ids):
        batch[i, : len(row)] = row
    logits = model.logits(batch)[..., : model.vocab.text_size].astype(np.float64)
    total = 0.0
    for lg, row in zip(logits, ids, strict=True):
        lg = lg[: len(row) - 1]
        lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
        total += float((lse - lg[np.arange(len(row) - 1), row[1:]]).sum())
    assert r["teal_nll"] == pytest.approx(total / r["tokens"], rel=1e-5)
    # another base LM: the flag drops, the perplexities part
    other = jax.tree.map(lambda x: x * 1.5, base)
    r2 = P.text_perplexity(model, texts, base_lm_params=other, batch_size=2)
    assert not r2["logits_bitwise_equal"] and r2["max_abs_logit_diff"] > 0
    assert r2["teal_ppl"] == r["teal_ppl"] and r2["base_ppl"] != r["base_ppl"]
    with pytest.raises(ValueError, match="no texts"):
        P.text_perplexity(model, [], base_lm_params=base)
    with pytest.raises(ValueError, match="pass base_lm_params"):
        P.text_perplexity(model, texts)


def test_base_lm_params_from_the_runs_base_workdir(model, tmp_path):
    """text_perplexity without base_lm_params reads config.model.base_lm_workdir (here a 'teal' checkpoint: its
    params['model']['lm'])."""
    from test_teal_api import tiny_parts

    from teal_jax.checkpoint import Checkpointer

    p = tiny_parts()
    ckpt = Checkpointer(str(tmp_path / "base"), async_save=False)
    ckpt.save(1, {"params": {"model": jax.tree.map(np.asarray, p["params"])}}, {}, p["config"])
    ckpt.close()
    loaded = lineage.load_base_lm_params(str(tmp_path / "base"))
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, p["params"]["lm"]))
    cfg = p["config"].copy_and_resolve_references()
    cfg.model.base_lm_workdir = str(tmp_path / "base")
    m = TealModel(p["teal_config"], p["params"], p["text"], run_config=cfg)
    r = P.text_perplexity(m, ["one two three", "seven", "the sum of two and three is"], batch_size=2)
    assert r["logits_bitwise_equal"] and r["base_ppl"] == r["teal_ppl"]
    other = p["image_run"].copy_and_resolve_references()
    ckpt = Checkpointer(str(tmp_path / "img"), async_save=False)
    ckpt.save(0, {"params": {"model": {"w": np.zeros(2, np.float32)}}}, {}, other)
    ckpt.close()
    with pytest.raises(ValueError, match="checkpoint of objective 'image_vq', expected 'lm' or 'teal'"):
        lineage.load_base_lm_params(str(tmp_path / "img"))


def test_likelihood_conditioning_metrics_against_a_direct_computation(model):
    """caption forced choice = argmax of the digit words' first-id logits after the caption prompt; t2i likelihood
    NLLs = float64 sums of -log softmax over the image ids after each prompt (the tiny random model)."""
    from test_teal_api import digit_images

    images, labels = digit_images(3), [3, 4, 5]
    ids = model.vocab.image_to_unified(np.asarray(model.image_tokenizer.encode(images)))
    tok, tpl = model.text_tokenizer, model.templates
    first = [tok.encode(w)[0] for w in DIGITS]
    r = E.caption_forced_choice(model, images, labels, batch_size=2)  # two batches
    direct = [int(np.argmax(model.logits(np.asarray([tpl.prompt("caption", row)]))[0, -1, first])) for row in ids]
    assert r["predictions"] == direct and r["n"] == 3
    assert r["accuracy"] == pytest.approx(np.mean(np.asarray(direct) == np.asarray(labels)))

    def nll(prompt, span):
        toks = np.asarray([[*prompt, *span, model.vocab.eoi]])
        lg = model.logits(toks)[0].astype(np.float64)
        lp = lg - (np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1, keepdims=True)) + lg.max(-1, keepdims=True))
        return -sum(lp[len(prompt) - 1 + i, t] for i, t in enumerate(span))

    r = E.t2i_likelihood_accuracy(model, images, labels, batch_size=2)
    table = np.asarray([[nll(tpl.prompt("t2i", tok.encode(DIGITS[d])), row) for d in range(10)] for row in ids])
    assert r["nll_true"] == pytest.approx(table[np.arange(3), labels].mean(), rel=1e-6)
    assert r["nll_mean"] == pytest.approx(table.mean(), rel=1e-6)
    assert r["nll_null"] == pytest.approx(np.mean([nll(tpl.null_prompt("t2i"), row) for row in ids]), rel=1e-6)
    assert r["accuracy"] == pytest.approx(np.mean(table.argmin(1) == np.asarray(labels)))
    with pytest.raises(ValueError, match="t2i_likelihood_accuracy"):
        E.t2i_likelihood_accuracy(model, images, [1, 2])


# ---- sample grids and spectrograms -------------------------------------------------------------------------------
def test_image_grid_one_row_per_asked_digit_with_judged_frames(tmp_path):
    labels = [7, 3, 7, 3, 3, 9]
    images = np.stack([np.full((6, 5), 10 * (i + 1), np.uint8) for i in range(6)])  # [n, H, W]: grayscale
    preds = [7, 3, 1, 3, 3, 9]
    mosaic, rows, right = SM.image_grid(images, labels, preds, pad=2)
    assert rows == [3, 7, 9] and right == [3, 1, 1]
    ch, cw = 6 + 4, 5 + 4
    assert mosaic.shape == (3 * ch, 3 * cw, 3) and mosaic.dtype == np.uint8  # 3 rows; 3 = most images of one digit
    # row 0 = digit 3: images 1, 3, 4 in order, all judged right (green frames)
    for c, i in enumerate((1, 3, 4)):
        cell = mosaic[0:ch, c * cw : (c + 1) * cw]
        assert tuple(cell[0, 0]) == SM.GRID_RIGHT and np.all(cell[2:8, 2:7] == 10 * (i + 1))
    # row 1 = digit 7: image 0 right, image 2 wrong (red); its third cell is blank
    assert tuple(mosaic[ch, 0]) == SM.GRID_RIGHT and tuple(mosaic[ch, cw]) == SM.GRID_WRONG
    assert np.all(mosaic[ch : 2 * ch, 2 * cw :] == 255)
    # no predictions: white frames; float images in [0, 1] become uint8
    mosaic, rows, right = SM.image_grid(np.ones((2, 4, 4, 1), np.float32), [0, 0])
    assert mosaic.shape == (8, 16, 3) and rows == [0] and right == [0] and np.all(mosaic == 255)
    with pytest.raises(ValueError, match="non-empty"):
        SM.image_grid(np.zeros((0, 4, 4), np.uint8), [])
    with pytest.raises(ValueError, match="2 examples but 1 labels"):
        SM.image_grid(np.zeros((2, 4, 4), np.uint8), [1])

    path = SM.write_image_grid(str(tmp_path / "g" / "grid.png"), np.zeros((20, 32, 32, 1), np.uint8),
                              [d for d in range(10) for _ in range(2)], [0] * 20, title="t2i")
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
    assert w >= 2 * 36 and h >= 10 * 36  # at least the mosaic's pixels: 10 rows x 2 samples of 32 + 2 * 2


def test_spectrogram_shape_and_a_tone_lands_in_its_bin(tmp_path):
    rate = 16000
    t = np.arange(rate) / rate
    wave = (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    db = SM.spectrogram(wave, rate)
    n_fft, hop = 512, 64  # 32 ms at 16 kHz
    assert db.shape == (n_fft // 2 + 1, 1 + rate // hop)  # centred frames
    assert db.max() == 0.0 and db.min() >= -80.0
    assert int(np.argmax(db.mean(1))) == round(1000 * n_fft / rate)  # bin 32
    img = SM.spectrogram_image(wave, rate)
    assert img.shape == db.shape + (3,) and img.dtype == np.uint8
    row = db.shape[0] - 1 - 32  # low frequencies at the bottom
    assert img[row].astype(int).sum() > img[5].astype(int).sum()
    assert SM.spectrogram(np.zeros(100), 8000).shape == (129, 1 + 256 // 32)  # shorter than a window: padded
    path = SM.write_spectrogram(str(tmp_path / "a" / "s.png"), wave, rate)
    from PIL import Image

    with Image.open(path) as im:
        assert im.size == (db.shape[1], db.shape[0]) and im.mode == "RGB"
    with pytest.raises(ValueError, match="NaN"):
        SM.spectrogram(np.array([0.0, np.nan]), rate)


# ---- guidance chosen on validation prompts ------------------------------------------------------------------------
class GuidedStub(StubModel):
    """Draws / says the right answer (the digit prompt's digit, or a + b of a sum question) only at ``best`` guidance;
    at ``partly`` for digit prompts only; otherwise one off. Records every call."""

    def __init__(self, best: float, partly: float | None = None):
        super().__init__()
        self.best, self.partly = best, partly

    @staticmethod
    def answer(text: str) -> int:
        w = S.words(text)
        if w[:3] == ["the", "sum", "of"]:
            return DIGITS.index(w[3]) + DIGITS.index(w[5])
        return DIGITS.index(w[0])

    def _digits(self, texts, scale):
        out = []
        for t in texts:
            right = scale == self.best or (scale == self.partly and not t.startswith("the sum"))
            out.append(self.answer(t) if right else (self.answer(t) + 1) % 10)
        return out

    def generate_image(self, texts, *, guidance_scale=1.0, seed=0, **kw):
        self.asked.append(("t2i", list(texts), dict(kw, guidance_scale=guidance_scale, seed=seed)))
        return np.stack([np.full((8, 8, 1), 20 * d, np.uint8) for d in self._digits(texts, guidance_scale)])

    def generate_speech(self, texts, *, guidance_scale=1.0, seed=0, **kw):
        self.asked.append(("tts", list(texts), dict(kw, guidance_scale=guidance_scale, seed=seed)))
        return np.stack([np.full(800, 0.01 * (d + 1), np.float32) for d in self._digits(texts, guidance_scale)])


class LoudnessClassifier:
    def predict(self, audio):
        return np.round(np.asarray(audio, np.float64).mean(1) * 100 - 1).astype(int)


HELD_OUT_QUESTIONS = {T.sum_question(a, b, m) for a, b in T.REASONING_EVAL_PAIRS for m in ("image", "audio")}


@pytest.mark.parametrize("modality,judge", [("image", BrightnessClassifier()), ("audio", LoudnessClassifier())])
def test_choose_guidance_picks_the_best_validation_scale_and_never_sees_held_out_prompts(modality, judge):
    model = GuidedStub(best=2.0, partly=3.0)
    r = G.choose_guidance(model, judge, modality, scales=(3, 1, 2), seed=7, heldout_seed=0, per_class=2,
                          pairs=T.REASONING_VALIDATION_PAIRS[:10], temperature=0.7, top_p=0.9)
    assert r["chosen"] == 2.0 and r["scales"] == [1.0, 2.0, 3.0]
    assert r["accuracy"] == {"1": 0.0, "2": 1.0, "3": pytest.approx(20 / 30)}
    assert r["digit_accuracy"]["3"] == 1.0 and r["reasoning_accuracy"]["3"] == 0.0
    assert (r["n"], r["n_digit"], r["n_reasoning"], r["seed"]) == (30, 20, 10, 7)
    assert [call[2]["guidance_scale"] for call in model.asked] == [1.0, 2.0, 3.0]
    for _, prompts, kw in model.asked:
        assert kw["seed"] == 7 and kw["temperature"] == 0.7 and kw["top_p"] == 0.9
        assert not set(prompts) & HELD_OUT_QUESTIONS and len(prompts) == 30
        assert [p for p in prompts if p.startswith("the sum")] == [T.sum_question(a, b, modality)
                                                                   for a, b in T.REASONING_VALIDATION_PAIRS[:10]]


def test_pick_guidance_ties_go_to_the_smaller_scale_and_validation_refuses_held_out_data():
    assert G.pick_guidance({3.0: 0.5, 1.0: 0.5, 2.0: 0.4}) == 1.0
    assert G.pick_guidance({1.0: 0.1, 2.0: 0.6, 3.0: 0.6}) == 2.0
    with pytest.raises(ValueError, match="no scores"):
        G.pick_guidance({})
    prompts, labels, reasoning = G.validation_prompts("image", per_class=1, pairs=[(1, 2)])
    assert prompts == list(DIGITS) + ["the sum of one and two is"] and labels == [*range(10), 3]
    assert reasoning.tolist() == [False] * 10 + [True]
    with pytest.raises(ValueError, match=r"\(3, 4\)\] are held-out"):
        G.validation_prompts("image", pairs=[(1, 2), (3, 4)])
    model = GuidedStub(best=1.0)
    with pytest.raises(ValueError, match="held-out evaluation's"):
        G.choose_guidance(model, BrightnessClassifier(), "image", seed=0, heldout_seed=0)
    with pytest.raises(ValueError, match="not in \\*\\*sampling"):
        G.choose_guidance(model, BrightnessClassifier(), "image", seed=1, guidance_scale=2.0)
    with pytest.raises(ValueError, match="positive"):
        G.choose_guidance(model, BrightnessClassifier(), "image", seed=1, scales=(0.0, 1.0))
    with pytest.raises(ValueError, match="modality"):
        G.choose_guidance(model, BrightnessClassifier(), "video", seed=1)
    assert model.asked == []  # every check runs before any sampling


def test_lm_sum_answers_scores_the_first_generated_word():
    class TextStub:
        def __init__(self):
            self.asked = None

        def generate_text(self, prompts, max_new_tokens=4):
            self.asked = list(prompts)
            # right for the first pair (0 + 7), a numeral for the second (1 + 5 = '6'), wrong for the third (2 + 2)
            return ["seven.", " 6 and", "five"][: len(prompts)]

    m = TextStub()
    r = E.lm_sum_answers(m, pairs=((0, 7), (1, 5), (2, 2)))
    assert m.asked == ["the sum of zero and seven is", "the sum of one and five is", "the sum of two and two is"]
    assert r["n"] == 3 and r["accuracy"] == pytest.approx(2 / 3)


def test_reasoning_prompts_with_the_answer_appended():
    prompts, labels = E.reasoning_prompts("image", ((3, 4), (0, 2)), answer_in_prompt=True)
    assert prompts == ["the sum of three and four is seven", "the sum of zero and two is two"] and labels == [7, 2]
    assert E.reasoning_prompts("audio", ((3, 4),))[0] == ["the sum of three and four is"]
