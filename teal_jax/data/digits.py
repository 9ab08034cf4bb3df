"""The demo images: scikit-learn's 1,797 handwritten 8x8 digit scans, upscaled, as a tfds dataset (array_record).

``DigitsImages`` is a ``tfds.core.GeneratorBasedBuilder`` (no TensorFlow: ``file_format='array_record'``, images
stored as PNG bytes encoded with Pillow). Splits: ``'train'`` and ``'test'``; the test split is a fixed, seeded
(seed 0) set of ``HELD_OUT`` scans that no training step ever sees. Values 0..16 are scaled to 0..255 and the
8x8 grid is resized (bicubic) to the config's ``image_size``.

Read back with :func:`teal_jax.data.image_pipeline.make_image_iterator` (``tfds.data_source`` + grain).
"""

from __future__ import annotations

import io
import os
import time

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from teal_jax.data import tfds_build

HELD_OUT = 256
SPLIT_SEED = 0


class DigitsConfig(tfds.core.BuilderConfig):
    def __init__(self, *, image_size: int, **kwargs):
        super().__init__(name=f"{image_size}px", description=f"digits upscaled to {image_size}x{image_size}",
                         **kwargs)
        self.image_size = image_size


def digits_split_indices() -> dict[str, np.ndarray]:
    """Indices into ``sklearn.datasets.load_digits()`` for each split (fixed permutation, seed ``SPLIT_SEED``)."""
    from sklearn.datasets import load_digits

    n = len(load_digits().images)
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    return {"test": np.sort(perm[:HELD_OUT]), "train": np.sort(perm[HELD_OUT:])}


def upscale_digit(image: np.ndarray, size: int) -> np.ndarray:
    """float 8x8 in [0, 16] -> uint8 [size, size] (bicubic, clipped)."""
    u8 = np.clip(np.round(np.asarray(image, np.float64) * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    big = Image.fromarray(u8, mode="L").resize((size, size), Image.BICUBIC)
    return np.asarray(big, np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 [H, W] or [H, W, C] -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[-1] == 1 else image).save(buf, "PNG")
    return buf.getvalue()


class DigitsImages(tfds.core.GeneratorBasedBuilder):
    """sklearn digits as PNG images + labels; splits 'train' and held-out 'test'."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [DigitsConfig(image_size=s) for s in (8, 16, 32, 64)]

    def _info(self) -> tfds.core.DatasetInfo:
        s = self.builder_config.image_size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(s, s, 1), encoding_format="png"),
                "label": tfds.features.ClassLabel(num_classes=10),
                "index": np.int32,  # row in load_digits(): lets a test prove the splits are disjoint
            }),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the scans ship inside scikit-learn
        idx = digits_split_indices()
        return {"train": self._generate_examples(idx["train"]), "test": self._generate_examples(idx["test"])}

    def _generate_examples(self, indices):
        from sklearn.datasets import load_digits

        digits = load_digits()
        s = self.builder_config.image_size
        for i in indices:
            img = upscale_digit(digits.images[i], s)[..., None]
            yield int(i), {"image": png_bytes(img), "label": int(digits.target[i]), "index": int(i)}


def build_digits(data_dir: str, image_size: int = 32) -> DigitsImages:
    """Builds (once; later calls reuse the files) and returns the builder for ``image_size``."""
    if image_size not in (8, 16, 32, 64):
        raise ValueError(f"data.image_size={image_size}: the digits builder has configs 8, 16, 32, 64")
    os.makedirs(data_dir, exist_ok=True)
    builder = DigitsImages(data_dir=data_dir, config=f"{image_size}px", file_format="array_record")
    if not builder.is_prepared():
        t0 = time.time()
        tfds_build.prepare(builder)
        print(f"[data] built digits_images/{image_size}px under {data_dir} ({time.time() - t0:.1f}s)", flush=True)
    return builder
