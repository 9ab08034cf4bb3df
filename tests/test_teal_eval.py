"""TEAL demo evaluation: scoring rules on hand-checked cases (stub models), prompts of every generation metric,
WER against hand-counted edits (jiwer), and the metrics on the tiny random TealModel of test_teal_api (files written,
perplexity vs a direct computation, bitwise text-logit flag)."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from teal_jax.data import templates as T
from teal_jax.evaluate import teal_eval as E
from teal_jax.teal import TealModel

DIGITS = T.DIGITS


# ---- scoring rules ---------------------------------------------------------------------------------------------
def test_caption_rule():
    assert E.caption_correct("seven", 7) and E.caption_correct("A Seven.", 7) and E.caption_correct("7", 7)
    assert E.caption_correct("a handwritten seven digit", 7)
    assert not E.caption_correct("seven or one", 7)  # names another digit too
    assert not E.caption_correct("one", 7) and not E.caption_correct("", 7)
    assert not E.caption_correct("sevens", 7) and not E.caption_correct("17", 7)  # not the word / numeral
    assert E.words("Seven, 3 and TWO!") == ["seven", "three", "and", "two"]


def test_word_error_rate_hand_checked():
    # "one two three" vs "one too three": 1 substitution; "four five" vs "four five six": 1 insertion; 5 ref words
    r = E.word_error_rate(["one two three", "four five"], ["one too three", "four five six"])
    assert (r["substitutions"], r["deletions"], r["insertions"], r["reference_words"]) == (1, 0, 1, 5)
    assert r["wer"] == pytest.approx(2 / 5) and r["exact_match"] == 0.0 and r["n"] == 2
    r = E.word_error_rate(["Seven!", "one two", "a b"], ["seven", "one", ""])  # case/punctuation ignored
    assert (r["substitutions"], r["deletions"], r["insertions"]) == (0, 3, 0)
    assert r["wer"] == pytest.approx(3 / 5) and r["exact_match"] == pytest.approx(1 / 3)
    assert E.word_error_rate(["the number is 3"], ["the number is three"])["wer"] == 0.0
    with pytest.raises(ValueError, match=r"references \[1\] have no words"):
        E.word_error_rate(["one", "..."], ["one", "two"])
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        E.word_error_rate(["one", "two"], ["one"])


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
        d = [next((w for w in E.words(t) if w in DIGITS), "zero") for t in texts]
        return np.stack([np.full((32, 32, 1), 20 * DIGITS.index(w), np.uint8) for w in d])

    def generate_speech(self, texts, **kw):
        self.asked.append(("tts", list(texts), kw))
        return np.stack([np.full(self.sample_rate // 2, 0.05 * (1 + len(t) % 5), np.float32) for t in texts])

    save_png = staticmethod(TealModel.save_png)

    def save_wav(self, waves, paths):
        from teal_jax.audio_io import write_wav

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
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".png")]) == 20 and (tmp_path / "t2i.tsv").exists()

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
    assert model.asked[0][1] == ["say the sum of one and two", "say the sum of zero and nine"]
    assert seen == [(2, 8000)] and r["accuracy"] == 0.5 and r["n"] == 2
    assert sorted(os.listdir(tmp_path / "s")) == ["reasoning_speech.tsv", "reasoning_speech_000_three_as_three.wav",
                                                 "reasoning_speech_001_nine_as_three.wav"]
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
    pngs = sorted(f for f in os.listdir(tmp_path / "img") if f.endswith(".png"))
    assert len(pngs) == 2 and pngs[0].startswith("t2i_000_seven_as_")

    class SpeechStub:
        def predict(self, audio):
            assert np.asarray(audio).shape == (2, 800)
            return np.array([7, 0])

    r = E.speech_prompt_accuracy(model, SpeechStub(), TEXTS, [7, 5], sample_dir=str(tmp_path / "wav"),
                                 temperature=0.8, top_k=20, seed=2)
    assert r["accuracy"] == 0.5 and len(os.listdir(tmp_path / "wav")) == 3


def test_text_perplexity_bitwise_and_against_a_direct_computation(model):
    texts = ["one two three", "seven", "draw the sum of two and three"]
    base = model.params["lm"]
    r = E.text_perplexity(model, texts, base_lm_params=base, batch_size=2)  # 2 batches, the last padded
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
    r2 = E.text_perplexity(model, texts, base_lm_params=other, batch_size=2)
    assert not r2["logits_bitwise_equal"] and r2["max_abs_logit_diff"] > 0
    assert r2["teal_ppl"] == r["teal_ppl"] and r2["base_ppl"] != r["base_ppl"]
    with pytest.raises(ValueError, match="no texts"):
        E.text_perplexity(model, [], base_lm_params=base)
    with pytest.raises(ValueError, match="pass base_lm_params"):
        E.text_perplexity(model, texts)


def test_base_lm_params_from_the_runs_base_workdir(model, tmp_path):
    """text_perplexity without base_lm_params reads config.model.base_lm_workdir (here a 'teal' checkpoint: its
    params['model']['lm'])."""
    from test_teal_api import tiny_parts

    from teal_jax.checkpoint import Checkpointer

    p = tiny_parts()
    ckpt = Checkpointer(str(tmp_path / "base"), async_save=False)
    ckpt.save(1, {"params": {"model": jax.tree.map(np.asarray, p["params"])}}, {}, p["config"])
    ckpt.close()
    loaded = E.load_base_lm_params(str(tmp_path / "base"))
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, p["params"]["lm"]))
    cfg = p["config"].copy_and_resolve_references()
    cfg.model.base_lm_workdir = str(tmp_path / "base")
    m = TealModel(p["teal_config"], p["params"], p["text"], run_config=cfg)
    r = E.text_perplexity(m, ["one two three", "seven", "draw the sum of two and three"], batch_size=2)
    assert r["logits_bitwise_equal"] and r["base_ppl"] == r["teal_ppl"]
    other = p["image_run"].copy_and_resolve_references()
    ckpt = Checkpointer(str(tmp_path / "img"), async_save=False)
    ckpt.save(0, {"params": {"model": {"w": np.zeros(2, np.float32)}}}, {}, other)
    ckpt.close()
    with pytest.raises(ValueError, match="checkpoint of objective 'image_vq', expected 'lm' or 'teal'"):
        E.load_base_lm_params(str(tmp_path / "img"))


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
