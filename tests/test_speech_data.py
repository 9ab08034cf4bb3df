"""Spoken-words tfds builder (espeak-ng), grain pipeline (crops, exact resume), tfds record adapter."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from teal_jax.data import speech


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("speech"))
    speech.build_spoken_words(d, "tiny")
    return d


def _src(d, split):
    return tfds.data_source("spoken_words/tiny", split=split, data_dir=d)


def test_builder_stores_int16_speech_transcripts_and_heldout_voices(data_dir):
    train, test = _src(data_dir, "train"), _src(data_dir, "test")
    assert len(train) == 10 * len(speech.TRAIN_VARIANTS) + 8 and len(test) == 10 * len(speech.HELDOUT_VARIANTS) + 4
    r = train[0]
    assert r["audio"].dtype == np.int16 and r["audio"].ndim == 1 and r["audio"].size > 1600
    assert np.abs(r["audio"]).max() > 1000  # real speech, not silence
    variant = lambda rec: rec["voice"].decode().split("+")[1]  # noqa: E731
    train_v = {variant(train[i]) for i in range(len(train))}
    test_v = {variant(test[i]) for i in range(len(test))}
    assert train_v <= set(speech.TRAIN_VARIANTS) and test_v <= set(speech.HELDOUT_VARIANTS) and not train_v & test_v
    for i in range(len(train)):  # the label is the digit spoken in single-digit clips
        rec = train[i]
        if rec["label"] >= 0:
            assert rec["text"].decode() == speech.DIGITS[rec["label"]]


def test_plan_is_deterministic_and_number_words():
    a = speech.utterance_plan("train", digit_repeats=1, others=5)
    assert a == speech.utterance_plan("train", digit_repeats=1, others=5)
    assert speech.number_words(42) == "forty two" and speech.number_words(13) == "thirteen"
    with pytest.raises(ValueError, match="100"):
        speech.number_words(100)


def test_iterator_crops_and_resumes_exactly(data_dir):
    it = speech.make_speech_iterator(_src(data_dir, "train"), batch_size=4, crop_samples=4000, train=True, seed=3)
    next(it)
    state = it.get_state()
    want = [next(it) for _ in range(2)]
    it2 = speech.make_speech_iterator(_src(data_dir, "train"), batch_size=4, crop_samples=4000, train=True, seed=3)
    it2.set_state(state)
    for w in want:
        got = next(it2)
        for k in w:
            np.testing.assert_array_equal(got[k], w[k])
    assert want[0]["audio"].shape == (4, 4000) and want[0]["audio"].dtype == np.int16
    assert np.all(want[0]["length"] <= 4000)


def test_eval_iterator_pads_from_start(data_dir):
    it = speech.make_speech_iterator(_src(data_dir, "test"), batch_size=8, crop_samples=40000, train=False)
    b = next(it)
    n = int(b["length"][0])
    assert n < 40000 and np.all(b["audio"][0, n:] == 0)
    np.testing.assert_array_equal(b["audio"][0, :n], _src(data_dir, "test")[0]["audio"])


def test_librispeech_shaped_records_through_the_adapter():
    # tfds.testing.mock_data cannot build 'librispeech' here: its features.Audio imports TensorFlow. A list of
    # records shaped like its decoded examples (speech: int64 PCM, text: bytes) stands in for the data source.
    rng = np.random.default_rng(0)
    src = [{"speech": rng.integers(-3000, 3000, 24000 + 100 * i).astype(np.int64), "text": b"HELLO WORLD",
            "speaker_id": 1, "id": b"x"} for i in range(4)]
    adapter = speech.RecordAdapter(audio_key="speech", text_key="text", label_key=None, source_rate=16000)
    r = adapter.map(src[0])
    assert r["audio"].dtype == np.int16 and r["label"] == -1 and r["text"] == "HELLO WORLD"
    np.testing.assert_array_equal(r["audio"], src[0]["speech"])
    it = speech.make_speech_iterator(src, batch_size=2, crop_samples=8000, train=True, adapter=adapter)
    assert next(it)["audio"].shape == (2, 8000)
    r8 = speech.RecordAdapter(audio_key="speech", label_key=None, source_rate=8000).map(src[0])
    assert r8["audio"].shape == (48000,)  # resampled 8 kHz -> 16 kHz


def test_adapter_errors_name_the_field():
    with pytest.raises(ValueError, match="'speech'"):
        speech.RecordAdapter(audio_key="speech").map({"audio": np.zeros(3, np.int16)})
