"""An independent digit-image classifier that judges generated 32x32 grayscale digits (text-to-image and reasoning
accuracy of the TEAL demo).

Independence: it is trained only on *real* digit scans of the train split (``load_digit_arrays('train')``: the same
images the digits dataset builder stores, never a tokenizer's reconstruction or a generated image), shares no code or
parameters with the image tokenizer or the TEAL model, and is saved on its own
(``<dir>/digit_classifier.msgpack``; training loop and file format: :mod:`teal_jax.evaluate.judges`), so it judges
every model from outside.

Input: uint8 [0, 255] or float [0, 1] images ``[n, H, W]`` or ``[n, H, W, 1|3|4]`` (channels converted by
``teal_jax.media.image.mix_channels``, the project's one pixel rule: RGB -> ITU-R 601 luma, RGBA composited over
black first); other sizes are resized (bilinear) to 32x32. Each image is standardised (zero mean, unit variance), so a
gain or offset does not change the decision.

Model (w = 16): 2x2 average pool (the scans are 8x8 upscaled: 16x16 keeps all their detail and discards generation
noise finer than it) -> conv 3x3 (w) -> max-pool -> conv 3x3 (2w) -> max-pool -> conv 3x3 (4w) -> dense 128 -> 10
logits (ReLU between).

Robustness (why a CNN with augmentation rather than a pixel classifier): generated digits are reconstructions through
a tokenizer, blurrier or noisier, thicker or thinner, a little off-centre. Training augments every batch with a
random affine map (rotation +-12 deg, scale 0.85-1.15, shear +-0.15, shift +-3 px), stroke thickening/thinning
(blend with a 3x3 dilation/erosion), blur, gamma and Gaussian noise, so the decision rests on the digit's shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from teal_jax.evaluate.judges import Judge, standardize
from teal_jax.media.image import mix_channels

IMAGE_SIZE = 32
NUM_CLASSES = 10  # = judges.NUM_CLASSES
FILENAME = "digit_classifier.msgpack"


def load_digit_arrays(split: str, image_size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Real digit scans of ``split`` ('train' or 'test', the digits dataset's fixed held-out split) as
    ``(uint8 [n, image_size, image_size], int32 labels [n])``, exactly as the dataset builder upscales them."""
    from sklearn.datasets import load_digits

    from teal_jax.data.digits import digits_split_indices, upscale_digit

    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}: choose 'train' or 'test'")
    digits = load_digits()
    idx = digits_split_indices()[split]
    images = np.stack([upscale_digit(digits.images[i], image_size) for i in idx])
    return images, digits.target[idx].astype(np.int32)


def to_gray(images) -> np.ndarray:
    """Accepted images (see module docstring) -> float32 ``[n, 32, 32]`` in [0, 1]."""
    x = np.asarray(images)
    if x.ndim == 4:
        if x.shape[-1] not in (1, 3, 4):
            raise ValueError(f"images [n, H, W, C] need C in 1, 3, 4; got shape {x.shape}")
    elif x.ndim != 3:
        raise ValueError(f"images must be [n, H, W] or [n, H, W, C], got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError("no images given")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    elif x.dtype.kind == "f":
        x = x.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise ValueError("images contain NaN/Inf values")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"float images must lie in [0, 1]; got values in [{lo:.3g}, {hi:.3g}]")
    else:
        raise ValueError(f"images must be uint8 or float, got dtype {x.dtype}")
    if x.ndim == 4:
        x = mix_channels(x, 1)[..., 0]  # the one pixel rule: RGBA composited over black, RGB -> ITU-R 601 luma
    if x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        x = np.asarray(jax.image.resize(x, (x.shape[0], IMAGE_SIZE, IMAGE_SIZE), "linear"))
    return np.clip(x, 0.0, 1.0)


class DigitNet(nn.Module):
    """float [n, 32, 32] in [0, 1] -> logits [n, 10]."""

    width: int = 16

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = standardize(x, 1e-3)[..., None]
        h = nn.avg_pool(h, (2, 2), (2, 2))  # 16x16
        h = nn.relu(nn.Conv(self.width, (3, 3))(h))
        h = nn.max_pool(h, (2, 2), (2, 2))  # 8x8
        h = nn.relu(nn.Conv(2 * self.width, (3, 3))(h))
        h = nn.max_pool(h, (2, 2), (2, 2))  # 4x4
        h = nn.relu(nn.Conv(4 * self.width, (3, 3))(h))
        h = nn.relu(nn.Dense(128)(h.reshape(h.shape[0], -1)))
        return nn.Dense(NUM_CLASSES)(h)


def _affine(image: jax.Array, angle: jax.Array, scale: jax.Array, shear: jax.Array, shift: jax.Array) -> jax.Array:
    """One [H, W] image under a rotation/scale/shear/shift about its centre (bilinear, zeros outside)."""
    c, s = jnp.cos(angle), jnp.sin(angle)
    m = jnp.array([[c, -s], [s, c]]) @ jnp.array([[1.0, shear], [0.0, 1.0]]) * scale  # output = m @ input
    det = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]  # closed form: jnp.linalg.inv compiles an LU solver (slow on CPU)
    inv = jnp.array([[m[1, 1], -m[0, 1]], [-m[1, 0], m[0, 0]]]) / det
    h, w = image.shape
    centre = jnp.array([(h - 1) / 2, (w - 1) / 2])
    grid = jnp.stack(jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij"), 0).reshape(2, -1)
    src = inv @ (grid - centre[:, None] - shift[:, None]) + centre[:, None]
    return jax.scipy.ndimage.map_coordinates(image, [src[0], src[1]], order=1, cval=0.0).reshape(h, w)


def augment(key: jax.Array, x: jax.Array) -> jax.Array:
    """Random distortions of a batch ``[n, 32, 32]`` in [0, 1] (see module docstring)."""
    n = x.shape[0]
    ka, ksc, ksh, kt, kb, kg, kn, ks, kx = jax.random.split(key, 9)
    u = lambda k, lo, hi, shape=(n,): jax.random.uniform(k, shape, minval=lo, maxval=hi)  # noqa: E731
    x = jax.vmap(_affine)(x, u(ka, -0.21, 0.21), u(ksc, 0.85, 1.15), u(ksh, -0.15, 0.15), u(kx, -3.0, 3.0, (n, 2)))
    pool = lambda a: nn.max_pool(a[..., None], (3, 3), (1, 1), "SAME")[..., 0]  # noqa: E731
    dilated, eroded = pool(x), -pool(-x)
    t = u(kt, -0.8, 0.8, (n, 1, 1))
    x = jnp.where(t > 0, x + t * (dilated - x), x - t * (eroded - x))
    blurred = nn.avg_pool(x[..., None], (3, 3), (1, 1), "SAME")[..., 0]
    x = x + u(kb, 0.0, 0.8, (n, 1, 1)) * (blurred - x)
    x = jnp.clip(x, 0.0, 1.0) ** jnp.exp(u(kg, -0.5, 0.5, (n, 1, 1)))
    sigma = u(ks, 0.0, 0.15, (n, 1, 1))
    return jnp.clip(x + sigma * jax.random.normal(kn, x.shape), 0.0, 1.0)


class DigitClassifier(Judge):
    """Trained DigitNet parameters + prediction; build with :meth:`train`, :meth:`load` or :func:`train_or_load`."""

    FILENAME, WHAT, UNIT, DEFAULT_WIDTH = FILENAME, "digit classifier", "image", 16
    TRAIN_DEFAULTS = {"steps": 1000, "batch_size": 128, "lr": 3e-3}

    make_model = staticmethod(DigitNet)
    prepare = staticmethod(to_gray)

    def init_params(self, seed, example):
        # rbg keys: XLA:CPU compiles threefry draws slowly (seconds each); the augmentation makes ten of them.
        key = jax.random.key(seed, impl="rbg")
        return key, jax.jit(self.model.init)(key, jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE)))["params"]

    def optimizer(self, lr, steps):
        return optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, min(100, steps // 10), steps, lr * 0.02),
                           weight_decay=1e-4)

    def augment(self, key, x):
        return augment(key, x)

    def logits(self, images, batch_size: int = 256) -> np.ndarray:
        """float32 ``[n, 10]`` logits (batches padded to ``batch_size`` rows: one compilation)."""
        self._check_params()
        x = to_gray(images)
        n = x.shape[0]
        size = min(batch_size, n)
        out = []
        for i in range(0, n, size):
            xb = x[i : i + size]
            if xb.shape[0] < size:
                xb = np.concatenate([xb, np.zeros((size - xb.shape[0],) + xb.shape[1:], xb.dtype)])
            out.append(np.asarray(self._logits(self.params, jnp.asarray(xb))))
        return np.concatenate(out)[:n]

    def predict(self, images, batch_size: int = 256) -> np.ndarray:
        """int32 ``[n]`` predicted digits."""
        return np.argmax(self.logits(images, batch_size), -1).astype(np.int32)

    def predict_proba(self, images, batch_size: int = 256) -> np.ndarray:
        """float32 ``[n, 10]`` class probabilities."""
        return np.asarray(jax.nn.softmax(self.logits(images, batch_size), -1))


def train_or_load(directory: str, images, labels, **kwargs) -> DigitClassifier:
    """Loads ``directory/digit_classifier.msgpack`` if present, else trains on the real ``images``/``labels``
    (the train split) and saves it there."""
    return DigitClassifier.train_or_load(directory, images, labels, **kwargs)
