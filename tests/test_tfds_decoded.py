"""LibriSpeech without TensorFlow (teal_jax.data.tfds_decoded) on mock data.

The stand-in: a prepared tfds dataset under librispeech's real name and feature keys, with ``features.json`` saying
what tfds' own librispeech writes for ``speech``: an ``Audio`` feature (int16, shape [-1], 16 kHz), serialised here
from tfds' own ``AudioFeature`` proto. Without TensorFlow (not installed in this environment), tfds' files-only
reader cannot open it; the converter's copy opens through the same reader and the project's TEAL source path, and
its records equal what was written.
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from google.protobuf import json_format
from tensorflow_datasets.core import read_only_builder
from tensorflow_datasets.core.proto import feature_pb2

from teal_jax.data import tfds_decoded
from teal_jax.data.speech import RecordAdapter
from teal_jax.data.teal import sources as TS

RNG = np.random.default_rng(0)
CLIPS = {split: [(RNG.integers(-30000, 30000, size=int(n)).astype(np.int16), f"CLIP {split} {i}")
                 for i, n in enumerate(RNG.integers(20, 200, size=k))]
         for split, k in (("train_clean100", 4), ("dev_clean", 3))}


class Librispeech(tfds.core.GeneratorBasedBuilder):
    """librispeech's keys; ``speech`` written as the int16 Tensor a non-lazy Audio feature stores."""

    VERSION = tfds.core.Version("2.1.2")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "speech": tfds.features.Tensor(shape=(None,), dtype=np.int16),
            "text": tfds.features.Text(),
            "speaker_id": np.int64,
            "chapter_id": np.int64,
            "id": tfds.features.Text(),
        }), supervised_keys=("speech", "text"))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in CLIPS}

    def _generate_examples(self, split):
        for i, (pcm, text) in enumerate(CLIPS[split]):
            yield f"{split}-{i}", {"speech": pcm, "text": text, "speaker_id": i, "chapter_id": 7, "id": f"{i}-7-{i}"}


def _audio_json(lazy: bool = False) -> dict:
    proto = feature_pb2.AudioFeature(shape=feature_pb2.Shape(dimensions=[-1]), dtype="int16", sample_rate=16000,
                                     encoding="none", lazy_decode=lazy)
    return {"pythonClassName": tfds_decoded.AUDIO_CLASS, "audio": json_format.MessageToDict(proto)}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tfds"))
    Librispeech(data_dir=d, file_format="array_record").download_and_prepare()
    root = os.path.join(d, "librispeech", "2.1.2")
    path = os.path.join(root, "features.json")
    with open(path) as f:
        features = json.load(f)
    features["featuresDict"]["features"]["speech"] = _audio_json()  # what tfds' librispeech describes
    with open(path, "w") as f:
        json.dump(features, f)
    return d


def test_the_stand_in_needs_tensorflow_as_the_real_one_does(prepared):
    assert importlib.util.find_spec("tensorflow") is None
    with pytest.raises(Exception) as e:  # noqa: PT011 - whatever tfds raises when TF is missing
        read_only_builder.builder_from_files("librispeech", data_dir=prepared).as_data_source(split="dev_clean")
    assert "tensorflow" in f"{type(e.value).__name__} {e.value}".lower()


def test_the_copy_reads_without_tensorflow_through_the_teal_source_path(prepared, tmp_path):
    dst = tfds_decoded.write_decoded_copy(prepared, "librispeech", "librispeech_decoded")
    assert dst == os.path.join(prepared, "librispeech_decoded", "2.1.2")
    src_shards = sorted(f for f in os.listdir(os.path.join(prepared, "librispeech", "2.1.2")) if "array_record" in f)
    assert sorted(os.listdir(dst)) == sorted(["dataset_info.json", "features.json"]
                                             + [f.replace("librispeech-", "librispeech_decoded-") for f in src_shards])
    info = json.load(open(os.path.join(dst, "dataset_info.json")))
    assert info["name"] == "librispeech_decoded" and "speech at 16000 Hz" in info["description"]
    source = dict(kind="tfds", name="librispeech_decoded", config="", audio_key="speech", text_key="text",
                  data_dir=prepared, train_split="train_clean100", eval_split="dev_clean")
    opened = TS.open_sources(source, "audio")
    adapter = RecordAdapter(audio_key="speech", text_key="text", label_key=None)
    for ours, theirs in (("train", "train_clean100"), ("test", "dev_clean")):
        got = {}
        for i in range(len(opened[ours])):
            rec = opened[ours][i]
            got[rec["text"].decode() if isinstance(rec["text"], bytes) else rec["text"]] = rec
        assert sorted(got) == sorted(t for _, t in CLIPS[theirs])
        for pcm, text in CLIPS[theirs]:
            assert got[text]["speech"].dtype == np.int16 and np.array_equal(got[text]["speech"], pcm)
            mapped = adapter.map(got[text])  # what the codec and TEAL pipelines read: int16 PCM + transcript
            assert np.array_equal(mapped["audio"], pcm) and mapped["text"] == text


def test_errors_name_the_problem(prepared, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no prepared tfds dataset 'nope'"):
        tfds_decoded.write_decoded_copy(prepared, "nope", "x")
    with pytest.raises(ValueError, match="out_name='librispeech'"):
        tfds_decoded.write_decoded_copy(prepared, "librispeech", "librispeech")
    tfds_decoded.write_decoded_copy(prepared, "librispeech", "ls_again", out_data_dir=str(tmp_path))
    with pytest.raises(FileExistsError, match="already exists"):
        tfds_decoded.write_decoded_copy(prepared, "librispeech", "ls_again", out_data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="lazy_decode"):
        tfds_decoded.decode_features({"featuresDict": {"features": {"speech": _audio_json(lazy=True)}}}, "f", {})
    # A dataset with no Audio feature needs no copy; the command line says so and exits 2.
    plain = tmp_path / "plain"
    Librispeech(data_dir=str(plain), file_format="array_record").download_and_prepare()
    assert tfds_decoded.main(["--data_dir", str(plain), "--name", "librispeech", "--out_name", "x"]) == 2
    assert "no Audio feature" in capsys.readouterr().err


def test_asr_wer_reads_the_copy_as_the_runs_audio_source(prepared, tmp_path):
    """The asr_wer evaluator with no data of its own reads the run's audio source, here the TF-free copy (its
    'dev_clean' split); a stand-in model answers each clip by its length: right for some, wrong for one."""
    import ml_collections

    from teal_jax.evaluate.evaluators import make_evaluators

    dst = tmp_path / "tfds"
    tfds_decoded.write_decoded_copy(prepared, "librispeech", "librispeech_decoded", out_data_dir=str(dst))
    truth = {len(pcm): text for pcm, text in CLIPS["dev_clean"]}
    wrong = len(CLIPS["dev_clean"][0][0])

    class Model:
        def transcribe(self, clips, rate, max_new_tokens):
            assert rate == 16000
            return ["completely different words" if len(c) == wrong else truth[len(c)] for c in clips]

    config = ml_collections.ConfigDict({
        "data": {"audio_source": dict(kind="tfds", name="librispeech_decoded", config="", audio_key="speech",
                                      text_key="text", data_dir=str(dst), train_split="train_clean100",
                                      eval_split="dev_clean")},
        "evals": {"wer": {"kind": "asr_wer", "split": "dev_clean", "batch_size": 2}}})
    (ev,) = make_evaluators(config)
    result = ev.run(Model(), workdir=str(tmp_path / "run"), step=1)
    words = sum(len(t.split()) for _, t in CLIPS["dev_clean"])
    assert result["wer"] == pytest.approx(len(CLIPS["dev_clean"][0][1].split()) / words), result
    config.data.audio_source.kind = "spoken_words"
    with pytest.raises(ValueError, match="config.evals.wer.data is empty and the run's data.audio_source is "
                                         "'spoken_words', not a tfds dataset"):
        make_evaluators(config)[0].run(Model(), workdir=str(tmp_path / "run"), step=1)
