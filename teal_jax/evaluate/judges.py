"""The base of the independent judges (the digit-image and spoken-word classifiers): one training loop, one file
format, one set of errors.

A judge is a small linen classifier over 10 classes, trained only on real data of its own (never on a model's
output), so it scores every generated sample from outside. A subclass states its network (:meth:`Judge.make_model`),
its input conversion (:meth:`Judge.prepare`, host numpy), an optional traced feature step (``preprocess``), its
parameter init, optimizer and training augmentation; this class owns the rest:

* training: ``steps`` Adam-family updates on batches of ``batch_size`` rows drawn with replacement
  (``numpy.random.default_rng(seed)``), each augmented with the key ``fold_in(key, step)``; softmax cross-entropy;
* the forward pass: :func:`teal_jax.models.forward.jitted_apply` (judges of one width share their compilations);
* the file ``<dir>/<FILENAME>``: msgpack of ``{'params', 'width'}``, written to a temporary name then renamed (a killed
  run never leaves half a file); :meth:`Judge.load` raises FileNotFoundError when it is missing and ValueError when it
  is not a judge file; :meth:`Judge.train_or_load` loads it when present, else trains and saves.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, ClassVar

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from teal_jax.models.forward import jitted_apply

NUM_CLASSES = 10


def standardize(x: jax.Array, eps: float) -> jax.Array:
    """``[n, a, b]`` -> zero mean, unit variance per example (over the last two axes; ``eps`` added to the std):
    the judges' input normalisation, so a judge sees shapes, not levels."""
    mu = jnp.mean(x, axis=(1, 2), keepdims=True)
    sd = jnp.std(x, axis=(1, 2), keepdims=True)
    return (x - mu) / (sd + eps)


class Judge:
    """Trained parameters + prediction; subclasses set the class attributes and hooks below."""

    FILENAME: ClassVar[str]
    WHAT: ClassVar[str]  # 'digit classifier', for messages
    UNIT: ClassVar[str]  # 'image' / 'clip', for messages
    DEFAULT_WIDTH: ClassVar[int]
    TRAIN_DEFAULTS: ClassVar[dict[str, Any]]  # steps, batch_size, lr
    preprocess: ClassVar[Callable | None] = None  # traced features between the input and the network

    def __init__(self, params=None, width: int | None = None):
        self.width = int(self.DEFAULT_WIDTH if width is None else width)
        self.model = self.make_model(self.width)
        self.params = params
        self._logits = jitted_apply(self.model, type(self).preprocess)

    # ---- hooks -------------------------------------------------------------------------------------------------
    @staticmethod
    def make_model(width: int) -> nn.Module:
        raise NotImplementedError

    @staticmethod
    def prepare(inputs) -> np.ndarray:
        """Accepted inputs -> the float32 array the network (after ``preprocess``) reads."""
        raise NotImplementedError

    def init_params(self, seed: int, example: np.ndarray) -> tuple[jax.Array, Any]:
        """``(key, params)``: the training key (batch augmentation keys are ``fold_in(key, step)``) and the init."""
        raise NotImplementedError

    def optimizer(self, lr: float, steps: int) -> optax.GradientTransformation:
        raise NotImplementedError

    def augment(self, key: jax.Array, x: jax.Array) -> jax.Array:
        """Random distortions of a training batch (traced)."""
        raise NotImplementedError

    # ---- training ----------------------------------------------------------------------------------------------
    @classmethod
    def train(cls, inputs, labels, *, steps: int | None = None, batch_size: int | None = None,
              lr: float | None = None, seed: int = 0, width: int | None = None) -> Judge:
        """Trains on real ``inputs`` ``[n, ...]`` with digit ``labels`` ``[n]`` in 0..9 (defaults:
        ``TRAIN_DEFAULTS``)."""
        d = cls.TRAIN_DEFAULTS
        steps = int(d["steps"] if steps is None else steps)
        batch_size = int(d["batch_size"] if batch_size is None else batch_size)
        lr = float(d["lr"] if lr is None else lr)
        x = cls.prepare(inputs)
        y = np.asarray(labels).astype(np.int32)
        if y.shape != (x.shape[0],) or np.any((y < 0) | (y >= NUM_CLASSES)):
            raise ValueError(f"classifier training: need one label in 0..9 per {cls.UNIT} ({x.shape[0]} "
                             f"{cls.UNIT}s, labels of shape {y.shape})")
        clf = cls(width=width)
        key, params = clf.init_params(seed, x[:1])
        tx = clf.optimizer(lr, steps)
        opt = tx.init(params)
        pre = cls.preprocess or (lambda a: a)

        @jax.jit
        def step(params, opt, k, xb, yb):
            def loss_fn(p):
                logits = clf.model.apply({"params": p}, pre(clf.augment(k, xb)))
                return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

            loss, g = jax.value_and_grad(loss_fn)(params)
            upd, opt = tx.update(g, opt, params)
            return optax.apply_updates(params, upd), opt, loss

        rng = np.random.default_rng(seed)
        for i in range(steps):
            idx = rng.integers(0, x.shape[0], batch_size)
            params, opt, _ = step(params, opt, jax.random.fold_in(key, i), jnp.asarray(x[idx]), jnp.asarray(y[idx]))
        clf.params = params
        return clf

    # ---- prediction --------------------------------------------------------------------------------------------
    def _check_params(self) -> None:
        if self.params is None:
            raise ValueError(f"{type(self).__name__} has no parameters (train or load it first)")

    def predict(self, inputs) -> np.ndarray:
        """int32 ``[n]`` predicted digits."""
        raise NotImplementedError

    def accuracy(self, inputs, labels) -> float:
        """Fraction of ``inputs`` predicted as their ``labels`` ``[n]``."""
        labels = np.asarray(labels)
        if labels.shape != (np.shape(inputs)[0],):
            raise ValueError(f"{np.shape(inputs)[0]} {self.UNIT}s but labels of shape {labels.shape}")
        return float(np.mean(self.predict(inputs) == labels))

    # ---- files -------------------------------------------------------------------------------------------------
    def save(self, directory: str) -> str:
        """Writes ``directory/FILENAME`` atomically -> its path."""
        self._check_params()
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, self.FILENAME)
        blob = {"params": jax.device_get(self.params), "width": np.asarray(self.width, np.int32)}
        tmp = path + f".tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(flax.serialization.msgpack_serialize(blob))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: str) -> Judge:
        path = os.path.join(directory, cls.FILENAME)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no trained {cls.WHAT} there")
        with open(path, "rb") as f:
            try:
                blob = flax.serialization.msgpack_restore(f.read())
            except Exception as e:  # msgpack raises several types on a corrupt file
                raise ValueError(f"{path}: not a {cls.WHAT} file ({type(e).__name__}: {e})") from e
        if not isinstance(blob, dict) or "params" not in blob or "width" not in blob:
            raise ValueError(f"{path}: not a {cls.WHAT} file (no params/width)")
        return cls(blob["params"], width=int(blob["width"]))

    @classmethod
    def train_or_load(cls, directory: str, inputs, labels, **kwargs) -> Judge:
        """Loads ``directory/FILENAME`` if present, else trains on ``inputs``/``labels`` and saves it there."""
        if os.path.exists(os.path.join(directory, cls.FILENAME)):
            return cls.load(directory)
        clf = cls.train(inputs, labels, **kwargs)
        clf.save(directory)
        return clf
