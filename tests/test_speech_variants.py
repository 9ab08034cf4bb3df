"""The 'medium' spoken-words plan (more training voices, held-out voices kept out) and the 50 frames/s codec
variant (speech_tiny:coarse). Fast: no synthesis, one tiny codec forward pass."""

from __future__ import annotations

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.audio import speech_tiny
from teal_jax.data import speech
from teal_jax.models.codec import Codec, CodecConfig


def _config(name):
    return next(c for c in speech.SpokenWords.BUILDER_CONFIGS if c.name == name)


def _variant(u):
    return u["voice"].split("+", 1)[1]


def _digest(plan):
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]


def test_small_and_tiny_plans_are_unchanged():
    # Built datasets and the TEAL demo depend on these plans: the digests are those of the original code.
    want = {("small", "train"): "490bbd1f5e803ff9", ("small", "test"): "ca58dd3cba98a473",
            ("tiny", "train"): "24488638cf8a1503", ("tiny", "test"): "cd6644e0751a8ecf"}
    for (name, split), digest in want.items():
        assert _digest(_config(name).plan(split)) == digest, (name, split)


def test_medium_plan_keeps_heldout_voices_out_of_training_and_is_deterministic():
    c = _config("medium")
    train, test = c.plan("train"), c.plan("test")
    assert train == c.plan("train") and _digest(train) == "6634b2374a37d858"
    train_v, test_v = {_variant(u) for u in train}, {_variant(u) for u in test}
    assert train_v == set(speech.TRAIN_VARIANTS + speech.EXTRA_TRAIN_VARIANTS)
    assert not train_v & set(speech.HELDOUT_VARIANTS) and not train_v & set(speech.EXCLUDED_VARIANTS)
    assert test_v == set(speech.HELDOUT_VARIANTS)
    assert test == _config("small").plan("test")  # held-out figures stay comparable with 'small'
    digits = [u for u in train if u["label"] >= 0]
    assert len(digits) == 12 * 10 * len(train_v) and len(train) == len(digits) + 2400
    assert all(u["text"] == speech.DIGITS[u["label"]] for u in digits)
    # more voices, wider styles, and more multi-word transcripts than 'small' (a quarter of the held-out clips)
    small = _config("small").plan("train")
    assert len(train) > 5 * len(small)
    multi = lambda plan: sum(u["label"] < 0 and len(u["text"].split()) > 1 for u in plan)  # noqa: E731
    assert multi(train) > 4 * multi(small)
    assert min(u["rate"] for u in train) >= 110 and max(u["rate"] for u in train) <= 250
    assert min(u["pitch"] for u in train) < 20 and max(u["pitch"] for u in train) > 80


def test_plan_rejects_heldout_variants_in_train_and_unknown_configs(tmp_path):
    with pytest.raises(ValueError, match="held-out"):
        speech.utterance_plan("train", digit_repeats=1, others=0, variants=("m1", "m4"))
    with pytest.raises(ValueError, match="'small', 'tiny', 'medium'"):
        speech.build_spoken_words(str(tmp_path), "large")
    assert set(speech.CONFIG_NAMES) == {"small", "tiny", "medium"}


def test_extra_variants_exist_in_the_espeak_wheel():
    # espeak-ng silently falls back to its default voice for an unknown variant name
    loader = pytest.importorskip("espeakng_loader")
    have = set(os.listdir(os.path.join(loader.get_data_path(), "voices", "!v")))
    named = speech.TRAIN_VARIANTS + speech.EXTRA_TRAIN_VARIANTS + speech.HELDOUT_VARIANTS
    assert set(named) <= have, sorted(set(named) - have)
    assert len(set(named)) == len(named)


def test_coarse_codec_runs_at_50_frames_per_second():
    default, coarse = speech_tiny.get_config(), speech_tiny.get_config("coarse")
    cc = CodecConfig.from_config(coarse.model)
    assert (cc.hop_length, cc.frame_rate, cc.fft_size) == (320, 50, 1280)
    assert (cc.num_levels, cc.codebook_size) == (4, 64) and cc.num_frames(16000) == 50
    assert CodecConfig.from_config(default.model).frame_rate == 100  # the default is unchanged
    assert coarse.train.steps == default.train.steps and coarse.data.config == "small"
    model = Codec(CodecConfig.from_config(speech_tiny.get_config("coarse,smoke").model))
    x = jnp.asarray(np.random.default_rng(0).uniform(-0.5, 0.5, (1, 3200, 1)), jnp.float32)  # 0.2 s
    variables = jax.jit(lambda x: model.init({"params": jax.random.PRNGKey(0)}, x, train=False))(x)
    codes = jax.jit(lambda v, x: model.apply(v, x, method=Codec.encode))(variables, x)
    assert codes.shape == (1, 10, 4) and codes.dtype == jnp.int32
    wave = jax.jit(lambda v, c: model.apply(v, c, method=Codec.decode_codes))(variables, codes)
    assert wave.shape == (1, 3200, 1)
