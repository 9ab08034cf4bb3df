"""Whisper's audio encoder (pure Flax linen, no I/O) and its log-mel front end.

Front end (what ``transformers.WhisperFeatureExtractor`` computes, per clip): the waveform (16 kHz) is zero-padded or
cut to ``window_samples`` (30 s = 480,000 samples), framed like ``torch.stft(center=True)`` (reflect padding of
``n_fft // 2``, periodic Hann window, ``n_fft`` 400, hop 160), the power spectrum ``|X|^2`` of all frames but the
last goes through 80 (or 128) Slaney-normalised triangular mel filters on the Slaney mel scale (0-8 kHz), then
``L = log10(max(mel, 1e-10))``, ``L = max(L, max(L) - 8)`` (the max over the whole window of that clip) and
``(L + 4) / 4``. Output layout here is ``[batch, frames, mels]`` (transformers: ``[batch, mels, frames]``).

Encoder (``WhisperEncoder`` of transformers): ``gelu(conv1(mel))`` (k 3, pad 1), ``gelu(conv2(.))`` (k 3, stride 2,
pad 1: one frame per 320 samples, 50 frames/s), plus learned positions, then pre-LN blocks
``x + attn(LN(x))``, ``x + fc2(gelu(fc1(LN(x))))`` (exact erf GELU; q/v/out projections have biases, k has none; q is
scaled by ``head_dim^-0.5``) and a final LayerNorm (eps 1e-5 everywhere).

Hidden states follow transformers' ``output_hidden_states`` numbering: index 0 is the input of the first block
(conv features + positions), index ``i`` for ``1 <= i < layers`` is the output of block ``i``, and the last index
(``layers``) is the output of the final block *after* the final LayerNorm (= ``last_hidden_state``). TEAL's "layer 11
of Whisper-small" (12 blocks) is index 11: the output of block 11, before block 12.

transformers requires exactly ``2 * max_source_positions`` mel frames (30 s); this module also accepts fewer (the
first positions are used), which changes the features because attention is global: the tokenizers pad every clip to
the full window, as Whisper was trained.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from teal_jax.models.audio_layers import centered_stft

Array = jax.Array


# ---- log-mel front end -------------------------------------------------------------------------------------------
def _hz_to_mel_slaney(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above (27 mels per octave of 6.4)."""
    f = np.asarray(f, np.float64)
    min_log_hz, min_log_mel, logstep = 1000.0, 15.0, 27.0 / np.log(6.4)
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-12) / min_log_hz) * logstep, 3.0 * f / 200)


def _mel_to_hz_slaney(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    min_log_hz, min_log_mel, logstep = 1000.0, 15.0, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), 200.0 * m / 3)


def mel_filters(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float = 8000.0) -> np.ndarray:
    """float32 ``[n_fft // 2 + 1, n_mels]``: triangular filters with centres equally spaced on the Slaney mel scale,
    each scaled by ``2 / (f_right - f_left)`` (Slaney area normalisation), as librosa's ``mel(htk=False)``."""
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(f_min), _hz_to_mel_slaney(f_max), n_mels + 2))
    lower = (freqs[:, None] - edges[None, :-2]) / (edges[1:-1] - edges[:-2])[None, :]
    upper = (edges[None, 2:] - freqs[:, None]) / (edges[2:] - edges[1:-1])[None, :]
    fb = np.maximum(0.0, np.minimum(lower, upper))
    return (fb * (2.0 / (edges[2:] - edges[:-2]))[None, :]).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class LogMelConfig:
    """``WhisperFeatureExtractor``'s fields (``feature_size`` -> ``n_mels``, ``chunk_length`` seconds ->
    ``window_samples``)."""

    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 80
    window_samples: int = 480_000

    @property
    def frames(self) -> int:
        return self.window_samples // self.hop_length


def log_mel(waveform: Array, cfg: LogMelConfig = LogMelConfig()) -> Array:
    """float ``[batch, samples]`` (any length: zero-padded or cut to ``cfg.window_samples``) -> float32
    ``[batch, window_samples // hop, n_mels]`` Whisper log-mel features (see the module docstring)."""
    x = jnp.asarray(waveform, jnp.float32)
    if x.ndim != 2:
        raise ValueError(f"log_mel: waveform must be [batch, samples], got shape {x.shape}")
    n = cfg.window_samples
    x = x[:, :n] if x.shape[1] >= n else jnp.pad(x, ((0, 0), (0, n - x.shape[1])))
    spec = centered_stft(x, cfg.n_fft, cfg.hop_length)[:, :-1]  # [b, frames, bins]; the last frame is dropped
    power = jnp.square(spec.real) + jnp.square(spec.imag)
    mel = jnp.einsum("bfk,km->bfm", power, mel_filters(cfg.sample_rate, cfg.n_fft, cfg.n_mels),
                     precision=jax.lax.Precision.HIGHEST)
    logm = jnp.log10(jnp.maximum(mel, 1e-10))
    logm = jnp.maximum(logm, jnp.max(logm, axis=(1, 2), keepdims=True) - 8.0)
    return (logm + 4.0) / 4.0


# ---- encoder -----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class WhisperEncoderConfig:
    """Whisper encoder shape (transformers ``WhisperConfig`` names in brackets)."""

    num_mel_bins: int = 80  # [num_mel_bins]
    d_model: int = 768  # [d_model]
    num_layers: int = 12  # [encoder_layers]
    num_heads: int = 12  # [encoder_attention_heads]
    ffn_dim: int = 3072  # [encoder_ffn_dim]
    max_source_positions: int = 1500  # [max_source_positions]: encoder frames of one window
    activation: str = "gelu"  # [activation_function]: 'gelu' (erf), 'gelu_new' (tanh), 'relu'
    layer_norm_eps: float = 1e-5
    dtype: Any = jnp.float32

    @property
    def mel_frames(self) -> int:
        """Mel frames of one full window (what transformers requires): ``2 * max_source_positions``."""
        return 2 * self.max_source_positions

    def __post_init__(self):
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r}: supported {sorted(_ACTIVATIONS)}")


_ACTIVATIONS = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": nn.relu,
}


def activation_fn(name: str):
    """The activation called ``name`` in transformers' ``ACT2FN``."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not supported (supported: {sorted(_ACTIVATIONS)})")
    return _ACTIVATIONS[name]


class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention ``[b, t, d] -> [b, t, d]`` (q scaled by ``head_dim^-0.5``)."""

    num_heads: int
    k_bias: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        hd = d // self.num_heads
        dense = lambda name, bias=True: nn.DenseGeneral((self.num_heads, hd), use_bias=bias, dtype=self.dtype,
                                                        name=name)
        q = dense("q_proj")(x) * (hd**-0.5)
        k = dense("k_proj", self.k_bias)(x)
        v = dense("v_proj")(x)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
        w = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        o = jnp.einsum("bhqk,bkhd->bqhd", w, v)
        return nn.DenseGeneral(d, axis=(-2, -1), dtype=self.dtype, name="out_proj")(o)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: ``x + attn(LN(x))``, then ``x + fc2(act(fc1(LN(x))))``."""

    num_heads: int
    ffn_dim: int
    activation: str = "gelu"
    k_bias: bool = False
    layer_norm_eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        ln = lambda name: nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name=name)
        x = x + SelfAttention(self.num_heads, self.k_bias, self.dtype, name="self_attn")(ln("attn_norm")(x))
        h = nn.Dense(self.ffn_dim, dtype=self.dtype, name="fc1")(ln("mlp_norm")(x))
        h = nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(activation_fn(self.activation)(h))
        return x + h


class WhisperEncoder(nn.Module):
    """``mel [batch, frames, num_mel_bins]`` -> hidden states (see the module docstring for the numbering).

    ``__call__(mel, layer=None)``: ``layer=None`` returns the list of all ``num_layers + 1`` hidden states
    ``[batch, frames // 2, d_model]``; ``layer=i`` returns only hidden state ``i`` and skips the blocks after it.
    """

    config: WhisperEncoderConfig

    @nn.compact
    def __call__(self, mel: Array, layer: int | None = None):
        cfg = self.config
        if mel.ndim != 3 or mel.shape[-1] != cfg.num_mel_bins:
            raise ValueError(f"mel must be [batch, frames, {cfg.num_mel_bins}], got shape {mel.shape}")
        if mel.shape[1] > cfg.mel_frames:
            raise ValueError(f"mel has {mel.shape[1]} frames; this encoder takes at most {cfg.mel_frames} "
                             f"(2 * max_source_positions)")
        if layer is not None and not 0 <= layer <= cfg.num_layers:
            raise ValueError(f"layer={layer} must be in [0, {cfg.num_layers}] (hidden-state index)")
        dt = cfg.dtype
        gelu = _ACTIVATIONS["gelu"]
        x = gelu(nn.Conv(cfg.d_model, (3,), padding=((1, 1),), dtype=dt, name="conv1")(mel.astype(dt)))
        x = gelu(nn.Conv(cfg.d_model, (3,), strides=(2,), padding=((1, 1),), dtype=dt, name="conv2")(x))
        pos = self.param("embed_positions", nn.initializers.normal(0.02), (cfg.max_source_positions, cfg.d_model))
        x = x + pos[: x.shape[1]].astype(dt)
        states = [x]
        last = cfg.num_layers if layer is None else layer
        for i in range(min(last, cfg.num_layers)):
            x = EncoderBlock(cfg.num_heads, cfg.ffn_dim, cfg.activation, False, cfg.layer_norm_eps, dt,
                             name=f"layers_{i}")(x)
            if i + 1 == cfg.num_layers:
                x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dt, name="final_norm")(x)
            states.append(x)
        return states if layer is None else states[layer]


def encoder_frames(samples: int, hop_length: int = 160) -> int:
    """Encoder frames that cover ``samples`` waveform samples (one per ``2 * hop_length``)."""
    return math.ceil(samples / (2 * hop_length))
