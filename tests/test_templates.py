"""TEAL task templates: the layout of every task, loss masks, null prompts (= the sampler's), id-range errors,
reasoning pairs, fixed-length audio spans."""

import numpy as np
import pytest

from teal_jax.data import templates as T
from teal_jax.inference import constraints as teal_generate
from teal_jax.vocab import UnifiedVocab

VOCAB = UnifiedVocab(text_size=40, image_codebook_size=12, audio_codebook_size=5, audio_num_levels=2)
BOS, EOS = 2, 3
TPL = T.Templates(VOCAB, BOS, EOS)
TEXT = [7, 8, 9]
IMAGE = VOCAB.image_to_unified(np.arange(6).reshape(2, 3)).tolist()
AUDIO = VOCAB.audio_to_unified(np.asarray([[0, 4], [3, 1]])).tolist()


def _split(ids, mask):
    """(condition, target): the mask must be 0...0 1...1 with at least one 1."""
    mask = np.asarray(mask)
    assert set(np.unique(mask)) <= {0.0, 1.0}
    first = int(np.argmax(mask))
    assert mask[first] == 1 and np.all(mask[:first] == 0) and np.all(mask[first:] == 1)
    return list(ids[:first]), list(ids[first:])


@pytest.mark.parametrize("task,cond,tgt,want_cond,want_tgt", [
    ("caption", IMAGE, TEXT, [BOS, VOCAB.special_id("<task:caption>"), VOCAB.boi, *IMAGE, VOCAB.eoi], TEXT + [EOS]),
    ("t2i", TEXT, IMAGE, [BOS, VOCAB.special_id("<task:t2i>"), *TEXT, VOCAB.boi], IMAGE + [VOCAB.eoi]),
    ("asr", AUDIO, TEXT, [BOS, VOCAB.special_id("<task:asr>"), VOCAB.boa, *AUDIO, VOCAB.eoa], TEXT + [EOS]),
    ("tts", TEXT, AUDIO, [BOS, VOCAB.special_id("<task:tts>"), *TEXT, VOCAB.boa], AUDIO + [VOCAB.eoa]),
    ("lm", [], TEXT, [BOS], TEXT + [EOS]),
])
def test_layouts_and_loss_masks(task, cond, tgt, want_cond, want_tgt):
    ids, mask = TPL.example(task, cond, tgt)
    assert len(ids) == len(mask)
    got_cond, got_tgt = _split(ids, mask)
    assert got_cond == want_cond and got_tgt == want_tgt
    if task != "lm":
        assert TPL.prompt(task, cond) == want_cond  # a generation prompt is exactly the condition
    assert TPL.target(task, tgt) == want_tgt


def test_prompts_end_in_the_span_opener_and_the_sampler_starts_inside_it():
    assert TPL.prompt("t2i", TEXT)[-1] == VOCAB.boi and TPL.prompt("tts", TEXT)[-1] == VOCAB.boa
    assert teal_generate.null_prompt(VOCAB, TPL.prompt("caption", IMAGE)) == [VOCAB.null]  # closed span: no opener


@pytest.mark.parametrize("task,target", [("t2i", IMAGE), ("tts", AUDIO)])
def test_null_prompt_is_the_samplers_and_dropped_examples_are_null_prompt_plus_target(task, target):
    for text in (TEXT, [5], list(range(4, 30))):
        prompt = TPL.prompt(task, text)
        assert TPL.null_prompt(task) == teal_generate.null_prompt(VOCAB, prompt)
        ids, mask = TPL.example(task, text, target, drop_condition=True)
        cond, tgt = _split(ids, mask)
        assert cond == teal_generate.null_prompt(VOCAB, prompt) and tgt == TPL.target(task, target)
    with pytest.raises(ValueError, match="no unconditional form"):
        TPL.null_prompt("caption")


def test_id_range_errors_name_the_modality_and_range():
    with pytest.raises(ValueError, match=r"t2i text: text ids must be in \[0, 40\)"):
        TPL.example("t2i", [VOCAB.text_size], IMAGE)
    with pytest.raises(ValueError, match="caption image: image ids"):
        TPL.example("caption", [VOCAB.audio_offset], TEXT)  # an audio id where image ids belong
    with pytest.raises(ValueError, match="t2i target: image ids"):
        TPL.example("t2i", TEXT, [5])  # raw codes, not unified ids
    with pytest.raises(ValueError, match="tts target: audio ids"):
        TPL.example("tts", TEXT, IMAGE)
    with pytest.raises(ValueError, match="asr target: text ids"):
        TPL.example("asr", AUDIO, [VOCAB.boi])
    with pytest.raises(ValueError, match="lm examples have no condition"):
        TPL.example("lm", [1], TEXT)
    with pytest.raises(ValueError, match="unknown task"):
        TPL.example("translate", TEXT, TEXT)
    with pytest.raises(ValueError, match=r"Templates.eos=40 is not a text id"):
        T.Templates(VOCAB, BOS, VOCAB.text_size)


def test_parse_text_stops_at_eos_or_a_non_text_id():
    assert TPL.parse_text([7, 8, EOS, 9]) == [7, 8]
    assert TPL.parse_text([7, VOCAB.boi, 8]) == [7]
    assert TPL.parse_text([]) == []


def test_reasoning_pairs_are_disjoint_cover_every_sum_and_answer_with_a_digit():
    train, held = set(T.REASONING_TRAIN_PAIRS), set(T.REASONING_EVAL_PAIRS)
    assert not train & held and train | held == set(T.SUM_PAIRS)
    assert len(T.REASONING_EVAL_PAIRS) == len(held)  # no duplicates
    assert all(0 <= a + b <= 9 for a, b in T.SUM_PAIRS)
    assert len(T.SUM_PAIRS) == 55
    assert {a + b for a, b in train} == set(range(10))  # every answer digit is a training target
    assert len({a + b for a, b in held}) >= 5  # held-out prompts ask for several different answers
    # the question ends where the text corpus states the answer ("the sum of three and four is seven.")
    assert T.sum_question(3, 4, "image") == "the sum of three and four is"
    assert T.sum_question(0, 9, "audio") == "the sum of zero and nine is"
    # the modality is told by the task marker and the span opener, not by the text
    assert all(T.sum_question(a, b, "image") == T.sum_question(a, b, "audio") for a, b in T.SUM_PAIRS)
    with pytest.raises(ValueError, match="not a digit"):
        T.sum_question(5, 5, "image")
    with pytest.raises(ValueError, match="modality"):
        T.sum_question(1, 1, "video")


def test_sum_question_is_a_prefix_of_the_text_corpus_sentence():
    """The frozen LM read 'the sum of a and b is <answer>.' in pretraining: the prompt stops right before the answer."""
    import random

    from teal_jax.data import text_corpus

    r = random.Random(0)
    found = 0
    for _ in range(2000):
        sentence = text_corpus._arithmetic(r)
        if not sentence.startswith("the sum of "):
            continue
        words = sentence.rstrip(".").split()  # the sum of A and B is C
        names = [text_corpus.number_to_words(n) for n in range(11)]
        a, b = names.index(words[3]), names.index(words[5])
        if a + b <= 9:
            assert sentence == f"{T.sum_question(a, b, 'image')} {T.DIGITS[a + b]}."
            found += 1
    assert found > 20


def test_validation_pairs_are_the_training_pairs_round_robin_over_answers():
    v = T.REASONING_VALIDATION_PAIRS
    assert sorted(v) == sorted(T.REASONING_TRAIN_PAIRS) and len(v) == len(set(v))
    assert not set(v) & set(T.REASONING_EVAL_PAIRS)
    assert [a + b for a, b in v[:10]] == list(range(10))  # the first ten ask for every digit once
    assert {a + b for a, b in v[:30]} == set(range(10))


def test_audio_span_and_fit_audio():
    frames, samples = T.audio_span(0.5, 16000, 160)
    assert (frames, samples) == (50, 8000)
    frames, samples = T.audio_span(1.0, 24000, 320)  # 75 frames exactly
    assert (frames, samples) == (75, 24000)
    frames, samples = T.audio_span(0.01, 16000, 320)  # shorter than a frame: one frame
    assert (frames, samples) == (1, 320)
    assert T.audio_span(0.33, 16000, 160)[1] % 160 == 0
    for bad in ((0, 16000, 160), (1, 0, 160), (1, 16000, 0), (-1, 16000, 160)):
        with pytest.raises(ValueError, match="must be > 0"):
            T.audio_span(*bad)
    x = np.arange(1, 11, dtype=np.int16)
    np.testing.assert_array_equal(T.fit_audio(x, 4), x[:4])
    padded = T.fit_audio(x, 13)
    assert padded.dtype == np.int16 and padded.shape == (13,)
    np.testing.assert_array_equal(padded[:10], x)
    assert np.all(padded[10:] == 0)
    batch = T.fit_audio(np.ones((2, 3, 5), np.float32), 7)
    assert batch.shape == (2, 3, 7) and batch[..., 5:].sum() == 0 and batch[..., :5].sum() == 30


def test_task_names_are_stated_once_and_span_examples_put_the_span_where_the_layout_says():
    assert T.TASKS == tuple(T.TASK_SPANS) and set(T.SPAN_TASKS) == set(T.TASKS) - {"lm"}
    assert set(T.GENERATION_TASKS) <= set(T.SPAN_TASKS) and set(T.REASONING_TASKS.values()) <= set(T.GENERATION_TASKS)
    assert T.SPAN_MODALITIES == ("image", "audio") and set(T.TASK_SPANS.values()) == {"text", *T.SPAN_MODALITIES}
    assert all(VOCAB.special_id(f"<task:{t}>") for t in T.TASKS)  # every task has its marker (else ValueError)
    assert T.layout("reason_tts") == "tts" and T.layout("caption") == "caption"
    assert TPL.span_example("caption", TEXT, IMAGE) == TPL.example("caption", IMAGE, TEXT)
    assert TPL.span_example("asr", TEXT, AUDIO) == TPL.example("asr", AUDIO, TEXT)
    assert TPL.span_example("reason_t2i", TEXT, IMAGE, drop_condition=True) == TPL.example(
        "t2i", TEXT, IMAGE, drop_condition=True)
    with pytest.raises(ValueError, match="no image/audio span"):
        TPL.span_example("lm", TEXT, TEXT)
