"""Demo-scale semantic tokenizers, where no pretrained encoder can be downloaded: k-means over features this project
computes or trains itself. Both are input-only and follow :mod:`teal_jax.tokenizers.kmeans`' protocol (same fit,
checkpoint, ``from_checkpoint`` and pre-tokenization paths).

* :class:`FrameKMeansTokenizer` (``config.tokenizer.kind='mfcc'``): HuBERT's first iteration (k-means over MFCC
  frames), at the demo codec's frame rate. Per 20 ms frame (hop 320 at 16 kHz: 50 frames/s, ``ceil(samples / 320)``
  frames, the grid of ``configs/audio/speech_tiny.py:coarse``): ``|STFT|^2`` of a Hann window of ``n_fft`` samples
  (``audio_layers.stft`` with zero padding: frame ``f`` is centred on samples ``[f hop, (f + 1) hop)``, so a clip's
  frames do not depend on how much silence follows it in a batch), Slaney mel filters (``whisper.mel_filters``),
  ``ln(max(mel, log_floor))`` (1e-6), then (``features='mfcc'``) the first ``n_mfcc`` coefficients of the
  orthonormal DCT-II over the mel bins, optionally deltas and delta-deltas (the regression over +-2 frames of HTK /
  Kaldi / ``torchaudio.functional.compute_deltas``), and the frames ``t - context .. t + context`` stacked into one
  vector.
  At a clip's ends the edge frame is repeated (deltas and context), so padding frames never leak in.
  ``encode(waveform, rate) -> (codes int32 [batch, frames, 1], frames)``; no encoder parameters.
* :class:`LatentKMeansTokenizer` (``kind='vqgan'``): k-means over the pre-quantisation latents of the demo's own image
  tokenizer (an ``image_vq`` run: :class:`~teal_jax.models.vqgan.VQGAN`'s encoder, trained here without labels on
  reconstruction only). ``layer='encoder'``: the encoder trunk's output (``latent_channels`` wide); ``'quant_conv'``:
  its projection to ``embed_dim``, what the quantizer rounds. One code per latent cell: ``encode(images) -> int32
  [batch, h, w]`` on the VQ tokenizer's own grid. The judging classifiers (``teal_jax.evaluate.digit_classifier`` /
  ``speech_classifier``) are never an encoder here: they must stay independent of every model they judge, so a
  directory holding one is refused, and so is any checkpoint that is not an ``image_vq`` run.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from teal_jax.models.audio_layers import stft
from teal_jax.models.vqgan import VQGAN, Encoder, VQGANConfig
from teal_jax.models.whisper import mel_filters
from teal_jax.tokenizers.image import ImageTokenizer, _prepare
from teal_jax.tokenizers.kmeans import AudioKMeansTokenizer, ImageKMeansTokenizer, _KMeansTokenizer

_HIGHEST = jax.lax.Precision.HIGHEST
# the judges' file names (teal_jax.evaluate.digit_classifier.FILENAME / speech_classifier.FILENAME; a test checks
# they agree): tokenizers sit below evaluate in the layering, so they cannot import them
JUDGE_FILES = ("digit_classifier.msgpack", "speech_classifier.msgpack")


# ---- audio: MFCC / log-mel frames with context ----------------------------------------------------------------
def dct_matrix(n_in: int, n_out: int) -> np.ndarray:
    """float32 ``[n_in, n_out]``: ``x @ D`` = the first ``n_out`` coefficients of the orthonormal DCT-II of ``x``
    over its last axis (``scipy.fft.dct(x, type=2, norm='ortho')[..., :n_out]``)."""
    if not 1 <= n_out <= n_in:
        raise ValueError(f"n_mfcc={n_out} must be in [1, n_mels={n_in}]")
    m, k = np.arange(n_in)[:, None], np.arange(n_out)[None, :]
    d = np.sqrt(2.0 / n_in) * np.cos(np.pi / n_in * (m + 0.5) * k)
    d[:, 0] = np.sqrt(1.0 / n_in)
    return d.astype(np.float32)


def _edge_gather(x: jax.Array, offset: int, frames: jax.Array) -> jax.Array:
    """``x [b, T, D]`` shifted by ``offset`` frames, the clip's first/last real frame repeated past its ends
    (``frames [b]`` real frames per clip)."""
    t = jnp.arange(x.shape[1])[None, :] + offset
    idx = jnp.clip(t, 0, jnp.maximum(frames[:, None] - 1, 0))
    return jnp.take_along_axis(x, idx[..., None], axis=1)


def deltas(x: jax.Array, frames: jax.Array, n: int = 2) -> jax.Array:
    """Regression deltas over +-``n`` frames: ``sum_k k (x[t+k] - x[t-k]) / (2 sum_k k^2)``, edge frames repeated."""
    num = sum(k * (_edge_gather(x, k, frames) - _edge_gather(x, -k, frames)) for k in range(1, n + 1))
    return num / (2.0 * sum(k * k for k in range(1, n + 1)))


@dataclasses.dataclass(frozen=True)
class FrameFeatureConfig:
    """The front end of :class:`FrameKMeansTokenizer` (see the module docstring) and its number of codes."""

    num_codes: int
    features: str = "mfcc"  # 'mfcc' | 'log_mel'
    sample_rate: int = 16000
    hop_length: int = 320  # 50 frames/s at 16 kHz: the demo codec's (speech_tiny.py:coarse) frame rate
    n_fft: int = 640
    n_mels: int = 40
    n_mfcc: int = 13
    delta_order: int = 2  # 0: none, 1: + deltas, 2: + deltas and delta-deltas
    context: int = 2  # frames stacked on each side
    f_max: float = 8000.0
    log_floor: float = 1e-6  # mel power floor before the log (digital silence: ln 1e-6, not -inf)

    def __post_init__(self):
        if self.features not in ("mfcc", "log_mel"):
            raise ValueError(f"config.tokenizer.features={self.features!r}: choose 'mfcc' or 'log_mel'")
        if self.features == "mfcc":
            dct_matrix(self.n_mels, self.n_mfcc)  # range check
        if self.delta_order not in (0, 1, 2):
            raise ValueError(f"config.tokenizer.delta_order={self.delta_order}: choose 0, 1 or 2")
        if self.context < 0:
            raise ValueError(f"config.tokenizer.context={self.context} must be >= 0")
        if self.n_fft < self.hop_length:
            raise ValueError(f"config.tokenizer.n_fft={self.n_fft} must be >= hop_length={self.hop_length}")
        if not self.log_floor > 0:
            raise ValueError(f"config.tokenizer.log_floor={self.log_floor} must be > 0")
        if not 0 < self.f_max <= self.sample_rate / 2:
            raise ValueError(f"config.tokenizer.f_max={self.f_max} must lie in (0, sample_rate / 2]")

    @property
    def frame_dim(self) -> int:
        """Width of one frame's coefficients, deltas included (before context stacking)."""
        return (self.n_mfcc if self.features == "mfcc" else self.n_mels) * (1 + self.delta_order)


class FrameKMeansTokenizer(_KMeansTokenizer):
    """k-means over MFCC (or log-mel) frames with deltas and context; see the module docstring."""

    kind = "mfcc"
    num_levels = 1
    prepare = AudioKMeansTokenizer.prepare  # the one waveform rule (to_mono_float, resampling, ragged batches)
    _clip = AudioKMeansTokenizer._clip
    encode_files = AudioKMeansTokenizer.encode_files
    code_vectors = AudioKMeansTokenizer.code_vectors
    encode = AudioKMeansTokenizer.encode  # (codes int32 [batch, frames, 1], real frames)
    encode_features = AudioKMeansTokenizer.encode_features  # (float32 [batch, frames, feature_dim], real frames)

    def __init__(self, config: FrameFeatureConfig, encoder_params: Any = None, codebook: np.ndarray | None = None):
        super().__init__(config, {} if encoder_params is None else encoder_params, codebook)
        self._mel = mel_filters(config.sample_rate, config.n_fft, config.n_mels, 0.0, config.f_max)
        self._dct = dct_matrix(config.n_mels, config.n_mfcc) if config.features == "mfcc" else None

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.config.sample_rate / self.config.hop_length

    @property
    def feature_dim(self) -> int:
        return self.config.frame_dim * (2 * self.config.context + 1)

    def frame_features(self, x: jax.Array, lengths: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """float ``[batch, samples]`` -> (per-frame coefficients + deltas ``[batch, ceil(samples / hop),
        frame_dim]``, real frames ``[batch]``), before context stacking (traceable)."""
        cfg = self.config
        x = jnp.asarray(x, jnp.float32)
        b, s = x.shape
        n = jnp.full((b,), s, jnp.int32) if lengths is None else jnp.asarray(lengths, jnp.int32)
        x = jnp.where(jnp.arange(s)[None, :] < n[:, None], x, 0.0)
        spec = stft(x, cfg.n_fft, cfg.hop_length, pad_mode="constant")
        power = jnp.square(spec.real) + jnp.square(spec.imag)
        c = jnp.log(jnp.maximum(jnp.einsum("btk,km->btm", power, self._mel, precision=_HIGHEST), cfg.log_floor))
        if self._dct is not None:
            c = jnp.einsum("btm,mc->btc", c, self._dct, precision=_HIGHEST)
        frames = -(-n // cfg.hop_length)
        parts = [c]
        for _ in range(cfg.delta_order):
            parts.append(deltas(parts[-1], frames))
        return jnp.concatenate(parts, axis=-1), frames

    def _feature_fn(self, params, x, lengths):
        del params
        f, frames = self.frame_features(x, lengths)
        ctx = self.config.context
        h = jnp.concatenate([_edge_gather(f, o, frames) for o in range(-ctx, ctx + 1)], axis=-1)
        return h, jnp.arange(f.shape[1])[None, :] < frames[:, None]



# ---- images: the demo image tokenizer's own encoder --------------------------------------------------------------
LATENT_LAYERS = ("encoder", "quant_conv")


@dataclasses.dataclass(frozen=True)
class LatentKMeansConfig:
    encoder: VQGANConfig
    layer: str  # 'encoder' | 'quant_conv'
    num_codes: int

    def __post_init__(self):
        if self.layer not in LATENT_LAYERS:
            raise ValueError(f"config.tokenizer.layer={self.layer!r}: choose one of {LATENT_LAYERS} (the VQ "
                             "encoder's output, or its projection that the quantizer reads)")

    @property
    def image_size(self) -> int:
        return self.encoder.image_size

    @property
    def in_channels(self) -> int:
        return self.encoder.in_channels


def _latents(model: VQGAN, x: jax.Array, layer: str) -> jax.Array:
    h = model.encoder(x)
    return model.quant_conv(h) if layer == "quant_conv" else h


class LatentKMeansTokenizer(_KMeansTokenizer):
    """k-means over the pre-quantisation latents of a VQ/FSQ image tokenizer trained here; see the module
    docstring. Images are prepared exactly as :class:`ImageTokenizer` prepares them."""

    kind = "vqgan"
    has_decoder = False
    encode_files = ImageTokenizer.encode_files  # the one file rule (read_image, crop/resize, mixed channels)
    code_vectors = ImageKMeansTokenizer.code_vectors
    encode = ImageKMeansTokenizer.encode  # codes int32 [batch, h, w] (token_grid)
    encode_features = ImageKMeansTokenizer.encode_features  # float32 [batch, h*w, feature_dim]
    encoder_module = Encoder  # what computes the features (tests assert it is no judge)

    def __init__(self, config: LatentKMeansConfig, encoder_params: Any, codebook: np.ndarray | None = None,
                 *, resize: bool = True):
        self.resize = resize
        want = {"encoder", "quant_conv"} if config.layer == "quant_conv" else {"encoder"}
        if set(encoder_params) != want:
            raise ValueError(f"encoder params hold {sorted(encoder_params)}; layer={config.layer!r} reads "
                             f"{sorted(want)} of a VQGAN")
        super().__init__(config, encoder_params, codebook)

    @classmethod
    def from_workdir(cls, workdir: str, *, layer: str = "encoder", num_codes: int, codebook=None,
                     step: int | None = None) -> LatentKMeansTokenizer:
        """The encoder of the ``image_vq`` run in ``workdir`` (its newest checkpoint, or ``step``)."""
        from teal_jax import checkpoint

        field = "config.tokenizer.checkpoint"
        judges = [f for f in JUDGE_FILES if os.path.exists(os.path.join(workdir, f))]
        if judges:
            raise ValueError(f"{field}={workdir!r} holds a judging classifier ({judges[0]}): the judges must stay "
                             "independent of every model they judge, so they never encode tokens; point it at the "
                             "demo's image tokenizer run (objective 'image_vq', e.g. <demo>/image_tokenizer)")
        config, params, _ = checkpoint.load_params(workdir, step)
        if config.get("objective") != "image_vq":
            raise ValueError(f"{field}={workdir!r}: a checkpoint of objective {config.get('objective')!r}; the "
                             "latent k-means tokenizer reads the encoder of an 'image_vq' run")
        model = params["model"]
        keep = ("encoder", "quant_conv") if layer == "quant_conv" else ("encoder",)
        return cls(LatentKMeansConfig(VQGANConfig.from_config(config.model), str(layer), int(num_codes)),
                   {k: model[k] for k in keep}, codebook)

    def _kwargs(self) -> dict:
        return {"resize": self.resize}

    @property
    def feature_dim(self) -> int:
        e = self.config.encoder
        return e.embed_dim if self.config.layer == "quant_conv" else e.latent_channels

    @property
    def token_grid(self) -> tuple[int, int]:
        return self.config.encoder.token_grid

    @property
    def vocab_size(self) -> int:
        return self.config.num_codes

    def _feature_fn(self, params, images, lengths):
        del lengths
        cfg = self.config
        x = _prepare(images, cfg.in_channels, cfg.image_size, self.resize)
        h = VQGAN(cfg.encoder).apply({"params": params}, x, cfg.layer, method=_latents)
        h = h.reshape(h.shape[0], -1, h.shape[-1]).astype(jnp.float32)
        return h, jnp.ones(h.shape[:2], bool)



# ---- building from a config section ----------------------------------------------------------------------------
FRAME_FIELDS = tuple(f.name for f in dataclasses.fields(FrameFeatureConfig) if f.name != "num_codes")


def tokenizer_from_section(s: Mapping[str, Any], codebook=None) -> _KMeansTokenizer:
    """``config.tokenizer`` of kind 'mfcc' (fields of :class:`FrameFeatureConfig`) or 'vqgan' (``checkpoint``: an
    ``image_vq`` workdir, ``layer``, ``num_codes``)."""
    if s.get("num_codes") in ("", None) or int(s["num_codes"]) < 2:
        raise ValueError(f"config.tokenizer.num_codes={s.get('num_codes')!r} must be >= 2")
    if s["kind"] == "mfcc":
        unknown = sorted(set(s) - set(FRAME_FIELDS) - {"kind", "num_codes"})
        if unknown:
            raise ValueError(f"config.tokenizer: field(s) {unknown} do not apply to kind 'mfcc' (no encoder "
                             f"checkpoint or layer); its fields: {FRAME_FIELDS}")
        fields = {k: s[k] for k in FRAME_FIELDS if k in s}
        return FrameKMeansTokenizer(FrameFeatureConfig(num_codes=int(s["num_codes"]), **fields), codebook=codebook)
    if s["kind"] == "vqgan":
        path = s.get("checkpoint") or ""
        if not path or not os.path.isdir(path):
            raise FileNotFoundError(f"config.tokenizer.checkpoint={path!r}: no such directory (the workdir of an "
                                    "'image_vq' run, e.g. <demo>/image_tokenizer)")
        return LatentKMeansTokenizer.from_workdir(path, layer=str(s.get("layer") or "encoder"),
                                                  num_codes=int(s["num_codes"]), codebook=codebook)
    raise ValueError(f"config.tokenizer.kind={s['kind']!r} is not a demo-scale kind ('mfcc', 'vqgan')")

