"""Audio tokenizer / de-tokenizer: a trained (or imported) :class:`Codec` plus pre- and post-processing.

``encode(waveform, sample_rate) -> (codes int32 [batch, frames, levels], frame_lengths int32 [batch])`` and
``decode(codes, frame_lengths=None) -> (float32 [batch, samples], sample_lengths int32 [batch])``; the codec calls
are ``jax.jit``-compiled and batched.

Accepted waveforms: one clip ``[samples]``, a stereo clip ``[samples, 2]`` (only when ``channels_last=True``), a
batch ``[batch, samples]`` / ``[batch, samples, channels]``, or a list of 1-D/2-D clips of different lengths
(ragged: zero-padded to the longest; the returned lengths say how many frames/samples are real). int16 input is
scaled by 1/32768 (int32 by 1/2^31, uint8 centred), float input must lie in [-1, 1]; channels are averaged to
mono after scaling (:func:`teal_jax.media.audio.to_mono_float`, the one waveform rule); other sample rates are
resampled (windowed sinc) to the codec's. Clips longer than ``chunk_seconds`` are encoded in chunks of whole
frames (each chunk sees its own padding: with a non-causal model the codes at chunk seams differ slightly from a
one-pass encoding). Empty audio, NaN/Inf samples, a truncated or non-audio file each raise a ValueError naming it.

Shapes (:mod:`teal_jax.tokenizers.bucketing`): with ``bucket=True`` (default) a batch of ``n`` clips runs padded to
the next power of two rows, at most ``max_batch``, bigger batches in pieces of ``max_batch``; rows are independent,
so the codes equal the unpadded call's. With ``length_bucket_frames=k > 0`` the last (shorter) time chunk is also
zero-padded to a multiple of ``k`` frames (``k * hop`` samples; codes: padding code 0), so a new clip length reuses
a compiled program; the padded frames are sliced off. Length padding is exact only where the padding is outside a
frame's receptive field: with a causal codec every code equals the unpadded call's except a partial last frame
(length not a multiple of hop: unpadded, EnCodec reflects its own edge there; padded, it sees zeros) and the decoded
samples of real frames are equal within float rounding; a non-causal codec also changes its last few frames (the
same effect as sharing a ragged batch with a longer clip). It is therefore off by default. ``traces`` counts how
often each call was traced (= compiled). ``dtype='bfloat16'`` runs the codec in bfloat16 (float32 parameters,
float32 codebook search, float32 output); the default is float32.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from teal_jax.media.audio import read_wav, resample, to_mono_float
from teal_jax.models.codec import Codec, CodecConfig
from teal_jax.tokenizers import bucketing


class AudioTokenizer:
    """Holds ``(config, params[, model_state])`` of a :class:`Codec`.

    Args:
      config: a :class:`CodecConfig`, or the ``model`` ConfigDict of an ``audio_codec`` config.
      params: the codec's parameters (``params['model']`` of a train state, or :func:`load_encodec`'s output).
      model_state: non-parameter collections (``{'quantizer_state': ...}``: EMA codebooks, restart offsets).
      num_levels: RVQ levels to emit (a bitrate choice; default all).
      chunk_seconds: longest audio encoded in one pass.
      dtype: compute dtype ('float32', 'bfloat16', 'float16'); None: float32 for a ConfigDict, a CodecConfig's own.
      bucket: pad batches to power-of-two shape buckets (module docstring) so new batch sizes do not recompile.
      max_batch: the largest batch bucket; bigger batches run in pieces of this many clips.
      length_bucket_frames: pad the last time chunk to a multiple of this many frames (0: off; see the module
        docstring for what it changes).
    """

    def __init__(self, config: CodecConfig | ml_collections.ConfigDict | dict, params: Any,
                 model_state: dict | None = None, *, num_levels: int | None = None, chunk_seconds: float = 30.0,
                 dtype: str | None = None, bucket: bool = True, max_batch: int = 64, length_bucket_frames: int = 0):
        if not isinstance(config, CodecConfig):
            config = CodecConfig.from_config(config, dtype=dtype or "float32")
        elif dtype is not None:
            config = dataclasses.replace(config, dtype=dtype)
        config.validate()  # names a bad dtype
        if int(max_batch) < 1 or int(length_bucket_frames) < 0:
            raise ValueError(f"AudioTokenizer: max_batch={max_batch} must be >= 1 and length_bucket_frames="
                             f"{length_bucket_frames} >= 0")
        self.config = config
        self.bucket, self.max_batch, self.length_bucket_frames = bool(bucket), int(max_batch), int(length_bucket_frames)
        self.traces: collections.Counter = collections.Counter()
        self.model = Codec(config)
        self.variables = {"params": params, **(model_state or {})}
        self.num_levels = config.num_levels if num_levels is None else int(num_levels)
        if not 1 <= self.num_levels <= config.num_levels:
            raise ValueError(f"num_levels={num_levels} must be in [1, {config.num_levels}]")
        hop = config.hop_length
        self.chunk_samples = max(1, int(chunk_seconds * config.sample_rate) // hop) * hop
        n = self.num_levels

        def encode(v, x):
            self.traces["encode"] += 1  # runs only while tracing
            return self.model.apply(v, x[..., None], n, method=Codec.encode)

        def decode(v, c):
            self.traces["decode"] += 1
            return self.model.apply(v, c, method=Codec.decode_codes)[..., 0]

        self._encode = jax.jit(encode)
        self._decode = jax.jit(decode)

    @classmethod
    def from_checkpoint(cls, workdir: str, step: int | None = None, **kwargs) -> AudioTokenizer:
        """Loads the newest (or ``step``) checkpoint of an ``audio_codec`` training run in ``workdir``."""
        from teal_jax import checkpoint

        config, params, model_state = checkpoint.load_params(workdir, step)
        if config.objective != "audio_codec":
            raise ValueError(f"{workdir}: checkpoint of objective {config.objective!r}, expected 'audio_codec'")
        return cls(config.model, params["model"], model_state or None, **kwargs)

    def code_vectors(self) -> np.ndarray:
        """float32 ``[num_levels, codebook_size, D]``: each RVQ level's codes decoded to the latent space (a
        level's ``decode_codes``; the sum over levels of one code per level is the quantized latent). TEAL's
        codebook-initialised joint embedding projects these (``embedding_init='codebook'``)."""
        codes = jnp.arange(self.codebook_size, dtype=jnp.int32)

        def per_level(m, c):
            return jnp.stack([m.quantizer.levels[l].decode_codes(c) for l in range(self.num_levels)])

        return np.asarray(self.model.apply(self.variables, codes, method=per_level), np.float32)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    # ---- input handling ------------------------------------------------------------------------------------
    def _clip(self, a, sample_rate: int, name: str, channels_last: bool) -> np.ndarray:
        """One clip -> float32 mono [samples] at the codec's rate."""
        x = to_mono_float(a, name=name, channels_last=channels_last)
        if sample_rate != self.sample_rate:
            x = resample(x, sample_rate, self.sample_rate)
        return x

    def prepare(self, waveform, sample_rate: int, *, channels_last: bool = True
                ) -> tuple[np.ndarray, np.ndarray]:
        """Any accepted input -> (float32 [batch, samples] zero-padded, int32 sample lengths [batch])."""
        if int(sample_rate) <= 0:
            raise ValueError(f"sample_rate={sample_rate} must be positive")
        if isinstance(waveform, (list, tuple)):
            if not waveform:
                raise ValueError("empty batch: no clips given")
            clips = [self._clip(w, sample_rate, f"clip {i}", channels_last) for i, w in enumerate(waveform)]
        else:
            w = np.asarray(waveform)
            if w.ndim == 1 or (w.ndim == 2 and channels_last and w.shape[1] <= 2 and w.shape[0] > 2):
                clips = [self._clip(w, sample_rate, "waveform", channels_last)]
            elif w.ndim in (2, 3):
                if w.shape[0] == 0:
                    raise ValueError("empty batch: no clips given")
                clips = [self._clip(c, sample_rate, f"clip {i}", channels_last) for i, c in enumerate(w)]
            else:
                raise ValueError(f"waveform: expected [samples], [batch, samples] or [batch, samples, channels], "
                                 f"got shape {w.shape}")
        lengths = np.asarray([c.shape[0] for c in clips], np.int32)
        out = np.zeros((len(clips), int(lengths.max())), np.float32)
        for i, c in enumerate(clips):
            out[i, : c.shape[0]] = c
        return out, lengths

    # ---- API -----------------------------------------------------------------------------------------------
    def encode(self, waveform, sample_rate: int, *, channels_last: bool = True) -> tuple[jax.Array, np.ndarray]:
        """Waveform(s) -> (codes ``int32 [batch, frames, levels]``, real frames per clip ``int32 [batch]``)."""
        x, lengths = self.prepare(waveform, sample_rate, channels_last=channels_last)
        hop = self.config.hop_length
        frames = np.asarray([math.ceil(n / hop) for n in lengths], np.int32)
        return self._run(self._encode, x, self.chunk_samples, hop * self.length_bucket_frames, (1, hop)), frames

    def _batch_rows(self, x) -> list[tuple[int, int, int]]:
        n = x.shape[0]
        if not self.bucket or bucketing.spans_devices(x):
            return [(0, n, n)]
        return bucketing.batch_pieces(n, self.max_batch)

    def _run(self, fn, x, chunk: int, length_bucket: int, ratio: tuple[int, int]) -> jax.Array:
        """``fn(variables, piece)`` over batch buckets x time chunks of ``x [batch, time, ...]`` (numpy pieces are
        padded on the host), each output piece cut to ``ceil(time * ratio[0] / ratio[1])`` steps and the padding rows
        dropped; all calls are dispatched before anything is read back."""
        rows_out = []
        for start, stop, rows in self._batch_rows(x):
            xb = bucketing.pad_axis(x[start:stop], rows, 0)
            cols = []
            for s in range(0, x.shape[1], chunk):
                part = xb[:, s : s + chunk]
                t = part.shape[1]
                part = bucketing.pad_axis(part, bucketing.round_up(t, length_bucket, cap=chunk), 1)
                y = fn(self.variables, jnp.asarray(part))
                keep = -(-t * ratio[0] // ratio[1])
                cols.append(y if y.shape[1] == keep else y[:, :keep])
            y = bucketing.concat(cols, 1)
            rows_out.append(y if rows == stop - start else y[: stop - start])
        return bucketing.concat(rows_out, 0)

    def decode(self, codes, frame_lengths: Sequence[int] | None = None) -> tuple[jax.Array, np.ndarray]:
        """Codes ``int [batch, frames, n<=levels]`` -> (float32 ``[batch, frames * hop]``, real samples per clip).

        Frames beyond ``frame_lengths[i]`` are padding: their samples are zeroed."""
        c = codes if isinstance(codes, jax.Array) else np.asarray(codes)
        if c.ndim != 3 or c.dtype.kind not in "iu":
            raise ValueError(f"codes must be integer [batch, frames, levels], got {c.dtype} {c.shape}")
        if not 1 <= c.shape[2] <= self.config.num_levels:
            raise ValueError(f"codes have {c.shape[2]} levels; this codec has {self.config.num_levels}")
        if c.shape[1] == 0:
            raise ValueError("codes have 0 frames")
        def range_error(lo, hi):
            return ValueError(f"codes must lie in [0, {self.codebook_size}); got [{lo}, {hi}]")

        on_device = isinstance(c, jax.Array)
        if on_device:  # checked on the device; read back once, after every chunk is dispatched
            bounds = jnp.stack([jnp.min(c), jnp.max(c)])
            c = c.astype(jnp.int32)
        else:
            lo, hi = int(c.min()), int(c.max())
            if lo < 0 or hi >= self.codebook_size:
                raise range_error(lo, hi)
            c = c.astype(np.int32)
        hop = self.config.hop_length
        fl = np.full((c.shape[0],), c.shape[1], np.int32) if frame_lengths is None else np.asarray(frame_lengths)
        y = self._run(self._decode, c, self.chunk_samples // hop, self.length_bucket_frames, (hop, 1))
        mask = jnp.arange(y.shape[1])[None, :] < jnp.asarray(fl * hop)[:, None]
        out = jnp.where(mask, y, 0.0)
        if on_device:
            lo, hi = (int(b) for b in np.asarray(bounds))
            if lo < 0 or hi >= self.codebook_size:
                raise range_error(lo, hi)
        return out, (fl * hop).astype(np.int32)

    def encode_files(self, paths: Sequence[str | os.PathLike]) -> tuple[jax.Array, np.ndarray]:
        """Reads WAV files (any PCM rate/channels) and encodes them as one ragged batch."""
        if not paths:
            raise ValueError("encode_files: no paths given")
        clips, rates = [], []
        for p in paths:
            x, rate = read_wav(p)  # raises ValueError naming the file (missing, truncated, not a WAV)
            if x.shape[0] == 0:
                raise ValueError(f"{os.fspath(p)}: empty audio (0 samples)")
            clips.append(resample(x.mean(axis=1), rate, self.sample_rate))
            rates.append(rate)
        return self.encode(clips, self.sample_rate)
