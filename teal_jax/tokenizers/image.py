"""Image tokenizer / de-tokenizer: a trained (or imported) :class:`VQGAN` plus pre- and post-processing.

``encode(images) -> int32 [batch, h, w]`` codes and ``decode(codes) -> uint8 [batch, H, W, C]`` images, both
``jax.jit``-compiled and batched; inputs may be numpy or (sharded) jax arrays, the outputs keep the batch sharding.

Accepted images: ``[batch, H, W]`` or ``[batch, H, W, 1|3|4]``, uint8 in [0, 255] or float in [0, 1]. Channels are
converted to the model's by :func:`teal_jax.media.image.mix_channels` (gray -> RGB repeats, RGB -> gray is ITU-R
601 luma, RGBA is composited over black). Images whose size differs from ``config.image_size`` are center-cropped
to a square and resized (bicubic) when ``resize=True``, otherwise rejected with a ValueError naming both sizes.

Shapes: with ``bucket=True`` (default) a batch of ``n`` images (or code grids) runs padded to the next power of two,
at most ``max_batch``, and bigger batches in pieces of ``max_batch`` (:mod:`teal_jax.tokenizers.bucketing`), so a
new batch size reuses a compiled program; the padding rows are sliced off (rows are independent: the codes equal the
unpadded call's). A batch already laid out over several devices runs as given. ``traces`` counts how often each
call was traced (= compiled). ``dtype='bfloat16'`` computes the VQGAN in bfloat16 (parameters stay float32; the
codebook search is float32 either way); the default keeps the config's dtype.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from teal_jax.media.image import check_pixels, mix_channels, read_image
from teal_jax.models.vqgan import VQGAN, VQGANConfig
from teal_jax.tokenizers import bucketing

_DTYPES = ("float32", "bfloat16", "float16")


def _prepare(images: jax.Array, channels: int, size: int, resize: bool) -> jax.Array:
    """Any accepted image batch -> float32 ``[batch, size, size, channels]`` in [-1, 1] (traceable)."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"images must be [batch, H, W] or [batch, H, W, 1|3|4], got shape {images.shape}")
    x = images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images.astype(jnp.float32)
    x = mix_channels(x, channels)
    h, w = x.shape[1:3]
    if (h, w) != (size, size):
        if not resize:
            raise ValueError(
                f"images are {h}x{w} but the tokenizer expects {size}x{size} (pass resize=True to resize them)")
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        x = x[:, top : top + s, left : left + s]
        x = jnp.clip(jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), "bicubic"), 0.0, 1.0)
    return x * 2.0 - 1.0


class ImageTokenizer:
    """Holds ``(config, params)`` of a :class:`VQGAN`; see the module docstring.

    Args:
      config: a :class:`VQGANConfig`, or the ``model`` ConfigDict of an ``image_vq`` config.
      params: the VQGAN's parameters (``params['model']`` of a train state, or a converter's output).
      model_state: non-parameter collections (e.g. ``{'quantizer_state': ...}`` for an EMA codebook).
      resize: resize mismatching images (True) or raise (False).
      dtype: compute dtype ('float32', 'bfloat16', 'float16'); None keeps the config's.
      bucket: pad batches to shape buckets (see the module docstring) so new batch sizes do not recompile.
      max_batch: the largest bucket; bigger batches run in pieces of this many rows.
    """

    def __init__(self, config: VQGANConfig | ml_collections.ConfigDict | dict, params: Any,
                 model_state: dict | None = None, *, resize: bool = True, dtype: str | None = None,
                 bucket: bool = True, max_batch: int = 64):
        if not isinstance(config, VQGANConfig):
            config = VQGANConfig.from_config(config)
        if dtype is not None:
            if dtype not in _DTYPES:
                raise ValueError(f"ImageTokenizer: dtype={dtype!r}; choose one of {_DTYPES}")
            config = dataclasses.replace(config, dtype=dtype)
        if int(max_batch) < 1:
            raise ValueError(f"ImageTokenizer: max_batch={max_batch} must be >= 1")
        self.config = config
        self.bucket, self.max_batch = bool(bucket), int(max_batch)
        self.traces: collections.Counter = collections.Counter()
        self.model = VQGAN(config)
        self.variables = {"params": params, **(model_state or {})}
        self.resize = resize
        self.has_decoder = "decoder" in params
        cfg = config

        def encode(variables, images):
            self.traces["encode"] += 1  # runs only while tracing
            x = _prepare(images, cfg.in_channels, cfg.image_size, self.resize)
            return self.model.apply(variables, x, method=VQGAN.encode).codes

        def decode(variables, codes):
            self.traces["decode"] += 1
            y = self.model.apply(variables, codes, method=VQGAN.decode_codes).astype(jnp.float32)
            return jnp.clip(jnp.round((y + 1.0) * 127.5), 0, 255).astype(jnp.uint8)

        self._encode = jax.jit(encode)
        self._decode = jax.jit(decode)

    @classmethod
    def from_checkpoint(cls, workdir: str, step: int | None = None, **kwargs) -> ImageTokenizer:
        """Loads the newest (or ``step``) checkpoint of an ``image_vq`` training run in ``workdir``."""
        from teal_jax import checkpoint

        config, params, model_state = checkpoint.load_params(workdir, step)
        if config.objective != "image_vq":
            raise ValueError(f"{workdir}: checkpoint of objective {config.objective!r}, expected 'image_vq'")
        return cls(config.model, params["model"], model_state or None, **kwargs)

    @property
    def token_grid(self) -> tuple[int, int]:
        return self.config.token_grid

    @property
    def vocab_size(self) -> int:
        return self.config.num_codes

    def code_vectors(self) -> np.ndarray:
        """float32 ``[num_codes, embed_dim]``: what each code decodes to in the latent space (the quantizer's
        ``decode_codes`` of every code; for FSQ the grid values, projected out when factorised). TEAL's
        codebook-initialised joint embedding projects these (``embedding_init='codebook'``)."""
        codes = jnp.arange(self.vocab_size, dtype=jnp.int32)
        out = self.model.apply(self.variables, codes, method=lambda m, c: m.quantizer.decode_codes(c))
        return np.asarray(out, np.float32)

    def _bucketed(self, fn, x) -> jax.Array:
        """``fn(variables, x)`` on shape buckets of x's batch axis, padding rows sliced off."""
        if not self.bucket or x.ndim == 0 or x.shape[0] == 0 or bucketing.spans_devices(x):
            return fn(self.variables, x)
        n = x.shape[0]
        out = []
        for start, stop, rows in bucketing.batch_pieces(n, self.max_batch):
            y = fn(self.variables, bucketing.pad_axis(x[start:stop], rows, 0))
            out.append(y if rows == stop - start else y[: stop - start])
        return bucketing.concat(out, 0)

    def encode(self, images) -> jax.Array:
        """Images (see module docstring) -> codes ``int32 [batch, h, w]``."""
        images = images if isinstance(images, jax.Array) else np.asarray(images)
        check_pixels(images)
        return self._bucketed(self._encode, images)

    def decode(self, codes) -> jax.Array:
        """Codes ``int32 [batch, h, w]`` -> images ``uint8 [batch, H, W, C]``."""
        if not self.has_decoder:
            raise ValueError("these parameters have no decoder (e.g. an imported ChameleonVQVAE): decode is "
                             "unavailable")
        codes = codes if isinstance(codes, jax.Array) else np.asarray(codes)
        if codes.ndim != 3 or codes.dtype.kind not in "iu":
            raise ValueError(f"codes must be integer [batch, h, w], got {codes.dtype} {codes.shape}")
        if not isinstance(codes, jax.Array) and codes.size and (codes.min() < 0 or codes.max() >= self.vocab_size):
            raise ValueError(f"codes must lie in [0, {self.vocab_size}); got [{codes.min()}, {codes.max()}]")
        return self._bucketed(self._decode, codes.astype(np.int32) if not isinstance(codes, jax.Array)
                              else codes.astype(jnp.int32))

    def encode_files(self, paths: Sequence[str | os.PathLike]) -> jax.Array:
        """Reads image files (PNG, JPEG, ...) with Pillow and encodes them as one batch.

        Every image is brought to the model's size first (center crop + resize when ``resize`` is set), so files
        of different sizes can share a batch. An unreadable or corrupt file raises ValueError naming it.
        """
        if not paths:
            raise ValueError("encode_files: no paths given")
        size, images = self.config.image_size, []
        for p in paths:
            p = os.fspath(p)
            arr = read_image(p)  # every Pillow mode converted by rule or rejected, errors naming the file
            if arr.shape[:2] != (size, size):
                if not self.resize:
                    raise ValueError(f"{p}: image is {arr.shape[0]}x{arr.shape[1]}, the tokenizer expects "
                                     f"{size}x{size} (resize=False)")
                from teal_jax.media.image import center_crop_resize

                arr = center_crop_resize(arr, size)
            images.append(arr)
        chans = {a.shape[-1] for a in images}
        if len(chans) > 1:  # mixed gray/RGB/RGBA files: bring all to the model's channels on the host
            from teal_jax.media.image import convert_channels

            c = self.config.in_channels
            images = [convert_channels(a, c, name=os.fspath(p)) for a, p in zip(images, paths, strict=True)]
        return self.encode(np.stack(images))
