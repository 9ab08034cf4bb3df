"""Image batches from any tfds image dataset (``tfds.data_source`` + grain; no TensorFlow), checkpointable.

Works for the digits builder (:mod:`teal_jax.data.digits`) and for standard tfds image datasets such as
``coco_captions``, ``imagenet2012`` or ``cifar10`` prepared in array_record format under ``data_dir``.

Per example: take ``record[image_key]`` (decoded by tfds with Pillow), convert channels (grayscale <-> RGB, RGBA ->
RGB over black), center-crop to a square and resize (bicubic) to ``image_size``. Batches are
``{'image': uint8 [batch, S, S, C], 'label': int32 [batch]}`` (label -1 when the dataset has none); the objective
maps uint8 to [-1, 1] on the device.

Host sharding: process p of P reads records p, p + P, ... before shuffling, so hosts never share an example.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image

from teal_jax.data.iterator import GrainBatches
from teal_jax.media.image import center_crop_resize, convert_channels


def random_affine(image: np.ndarray, rng: np.random.Generator, *, max_rotate: float = 10.0,
                  max_shift: float = 0.08, scale: tuple[float, float] = (0.9, 1.1)) -> np.ndarray:
    """A small random affine jitter of a uint8 ``[H, W, C]`` image about its centre (bicubic, zero fill): rotation
    in +-``max_rotate`` degrees, isotropic ``scale`` in the range, shift in +-``max_shift`` of the size."""
    h, w, c = image.shape
    angle = np.deg2rad(rng.uniform(-max_rotate, max_rotate))
    s = rng.uniform(*scale)
    tx, ty = rng.uniform(-max_shift, max_shift, 2) * (w, h)
    # Pillow maps each output pixel (x, y) to the input pixel A @ (x, y, 1): the inverse of the forward transform
    # "scale and rotate about the centre, then shift".
    cos, sin = np.cos(angle) / s, np.sin(angle) / s
    cx, cy = (w - 1) / 2, (h - 1) / 2
    a, b = cos, sin
    d, e = -sin, cos
    x0, y0 = cx + tx, cy + ty
    coeffs = (a, b, cx - a * x0 - b * y0, d, e, cy - d * x0 - e * y0)
    pil = Image.fromarray(image[..., 0] if c == 1 else image)
    out = np.asarray(pil.transform((w, h), Image.AFFINE, coeffs, resample=Image.BICUBIC, fillcolor=0), np.uint8)
    return out[..., None] if c == 1 else out


class _Preprocess(grain.transforms.Map):
    def __init__(self, image_key: str, label_key: str | None, image_size: int, channels: int):
        self.image_key, self.label_key, self.image_size, self.channels = image_key, label_key, image_size, channels

    def map(self, record: dict[str, Any]) -> dict[str, np.ndarray]:
        if self.image_key not in record:
            raise ValueError(f"record has no field {self.image_key!r} (fields: {sorted(record)}); set data.image_key")
        img = convert_channels(record[self.image_key], self.channels, name=f"record[{self.image_key!r}]")
        img = center_crop_resize(img.astype(np.uint8), self.image_size)
        label = record.get(self.label_key, -1) if self.label_key else -1
        return {"image": img, "label": np.int32(label if np.ndim(label) == 0 else -1)}


def make_image_iterator(
    source: Sequence[dict[str, Any]],
    *,
    batch_size: int,
    image_size: int,
    channels: int,
    train: bool,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    image_key: str = "image",
    label_key: str | None = "label",
) -> GrainBatches:
    """Batches from a random-access ``source`` (e.g. ``tfds.data_source(...)``).

    train=True: shuffled with ``seed``, repeated forever, full batches. train=False: one pass in order, the last
    partial batch dropped (evaluation averages over whole batches).
    """
    if len(source) == 0:
        raise ValueError("the image source is empty")
    ds = grain.MapDataset.source(source)[process_index::process_count]
    if len(ds) < batch_size and not train:
        raise ValueError(f"eval split has {len(ds)} examples on this host, fewer than batch_size={batch_size}")
    if train:
        ds = ds.shuffle(seed=seed).repeat()
    ds = ds.map(_Preprocess(image_key, label_key, image_size, channels))
    return GrainBatches(ds.batch(batch_size, drop_remainder=True), "image")


def tfds_image_source(name: str, split: str, data_dir: str | None = None):
    """``tfds.data_source`` for a prepared (array_record) tfds image dataset, e.g. ``'coco_captions'``."""
    import tensorflow_datasets as tfds

    return tfds.data_source(name, split=split, data_dir=data_dir)
