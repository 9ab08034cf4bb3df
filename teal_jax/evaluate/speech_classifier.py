"""An independent spoken-word (digit) classifier that scores the intelligibility of any 16 kHz waveform.

It is trained only on the *uncoded* training audio of the spoken-words dataset (never on a codec's or a TTS model's
output) and saved on its own (``<dir>/speech_classifier.msgpack``; training loop and file format:
:mod:`teal_jax.evaluate.judges`), so it judges every model from outside.
Intelligibility of a waveform set = its accuracy over the word labels.

Input: float ``[n, samples]`` (1 s, zero-padded/cropped). Features: log-mel (40 bands, 32 ms window, 10 ms hop),
normalised per utterance (zero mean, unit variance: invariant to gain). Model: three 1-D convs over time (ReLU,
max-pool 2) -> mean and max over time -> dense -> 10 logits. Training: Adam, random circular shifts, gains and
white noise at 15-40 dB SNR (clean audio only; the noise makes it judge content, not fine waveform detail).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from teal_jax.evaluate.audio import log_mel
from teal_jax.evaluate.judges import Judge, standardize

CLIP_SAMPLES = 16000
SAMPLE_RATE = 16000
NUM_CLASSES = 10
FILENAME = "speech_classifier.msgpack"


def features(audio: jax.Array) -> jax.Array:
    """float ``[n, CLIP_SAMPLES]`` -> normalised log-mel ``[n, 101, 40]``."""
    return standardize(log_mel(audio, SAMPLE_RATE, 512, 160, 40, floor=1e-4), 1e-5)


class WordNet(nn.Module):
    width: int = 64

    @nn.compact
    def __call__(self, feats: jax.Array) -> jax.Array:
        h = feats
        for w in (self.width, self.width, 2 * self.width):
            h = nn.relu(nn.Conv(w, (5,))(h))
            h = nn.max_pool(h, (2,), (2,))
        h = jnp.concatenate([jnp.mean(h, axis=1), jnp.max(h, axis=1)], axis=-1)
        return nn.Dense(NUM_CLASSES)(nn.relu(nn.Dense(self.width)(h)))


def to_float(audio: np.ndarray) -> np.ndarray:
    """int16 or float audio ``[n, samples]`` -> float32 ``[n, CLIP_SAMPLES]`` (cropped / zero-padded)."""
    a = np.asarray(audio)
    x = a.astype(np.float32) / 32768.0 if a.dtype == np.int16 else a.astype(np.float32)
    if x.ndim != 2:
        raise ValueError(f"classifier input must be [n, samples], got shape {x.shape}")
    if x.shape[1] >= CLIP_SAMPLES:
        return x[:, :CLIP_SAMPLES]
    return np.pad(x, ((0, 0), (0, CLIP_SAMPLES - x.shape[1])))


class SpeechClassifier(Judge):
    """Trained WordNet parameters + prediction; build with :meth:`train`, :meth:`load` or :func:`train_or_load`."""

    FILENAME, WHAT, UNIT, DEFAULT_WIDTH = FILENAME, "speech classifier", "clip", 64
    TRAIN_DEFAULTS = {"steps": 600, "batch_size": 64, "lr": 2e-3}

    make_model = staticmethod(WordNet)
    prepare = staticmethod(to_float)
    preprocess = staticmethod(features)

    def init_params(self, seed, example):
        key = jax.random.PRNGKey(seed)
        return key, self.model.init(key, features(jnp.zeros((1, CLIP_SAMPLES))))["params"]

    def optimizer(self, lr, steps):
        return optax.adam(optax.cosine_decay_schedule(lr, steps, 0.05))

    def augment(self, k, xb):
        """Random circular shifts (+-0.1 s), gains and white noise at 15-40 dB SNR."""
        k1, k2, k3, k4 = jax.random.split(k, 4)
        shift = jax.random.randint(k1, (xb.shape[0],), -1600, 1600)
        xb = jax.vmap(jnp.roll)(xb, shift)
        xb = xb * jnp.exp(jax.random.uniform(k2, (xb.shape[0], 1), minval=-1.0, maxval=0.7))
        snr_db = jax.random.uniform(k3, (xb.shape[0], 1), minval=15.0, maxval=40.0)
        power = jnp.mean(xb**2, axis=1, keepdims=True)
        return xb + jnp.sqrt(power / 10 ** (snr_db / 10)) * jax.random.normal(k4, xb.shape)

    def predict(self, audio: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """int32 ``[n]`` predicted digits for ``audio [n, samples]`` (int16 or float)."""
        self._check_params()
        x = to_float(audio)
        out = []
        for i in range(0, x.shape[0], batch_size):
            out.append(np.asarray(jnp.argmax(self._logits(self.params, jnp.asarray(x[i : i + batch_size])), -1)))
        return np.concatenate(out).astype(np.int32)


def cache_dir(data_dir: str, builder_config: str) -> str:
    """Where the judge trained on ``spoken_words/<builder_config>`` is cached under a data dir (one per builder
    config: a data dir may hold several, and a judge trained on one must not be read back for another)."""
    return os.path.join(data_dir, "classifier" if builder_config == "small" else f"classifier_{builder_config}")


def train_or_load(directory: str, train_audio: np.ndarray, train_labels: np.ndarray, **kwargs) -> SpeechClassifier:
    """Loads ``directory/speech_classifier.msgpack`` if present, else trains on the clean audio and saves it."""
    return SpeechClassifier.train_or_load(directory, train_audio, train_labels, **kwargs)
