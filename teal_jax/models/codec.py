"""SEANet/EnCodec-class neural audio codec (pure Flax linen, no I/O): conv encoder -> residual VQ -> conv decoder.

Waveforms are ``[batch, samples, channels]`` float in about [-1, 1]; latents ``[batch, frames, hidden]`` with
``frames = ceil(samples / hop)``, ``hop = prod(ratios)``; codes ``int32 [batch, frames, levels]``.

Encoder (EnCodec's layer list; submodules are named ``layers_<i>`` after the index in transformers' ``nn.ModuleList``,
counting the parameter-free activations, so the importer maps names one to one)::

    conv(k=7, C) -> for r in reversed(ratios): [resblock(dim)] * n_res, act, conv(k=2r, stride r, dim -> 2 dim)
                 -> LSTM (+ input) -> act -> conv(k=7, -> hidden)
    resblock(dim): act, conv(k=3, dilation d, dim -> dim/compress), act, conv(k=1, -> dim); + shortcut (1x1 conv
                   or identity)

The decoder mirrors it with transposed convs (``k = 2r, stride r``).

Frame-rate variant (``encoder='stft'``, ``decoder='istft'``; Vocos-style, for CPUs): every learned layer runs at the
code frame rate, where width is cheap (the SEANet stacks spend most of their time in thin full-rate convs)::

    stft encoder:  log|STFT(x)| (Hann n_fft, hop = prod(ratios), frames centred on each hop) -> dense -> LN
                   -> [ConvNeXt block] * encoder_frame_layers -> LN -> dense(hidden)
    istft decoder: dense -> LN -> [ConvNeXt block] * decoder_frame_layers -> LN -> dense(n_fft + 2 per channel)
                   -> magnitude exp(min(m, 7)), phase p -> iSTFT (windowed overlap-add) -> frames * hop samples

The quantizer is
:class:`teal_jax.models.quantizers.ResidualVQ` (shared with the image tokenizer) with quantizer dropout, so a model
trained with dropout serves every bitrate ``n_levels * log2(K) * frame_rate`` bit/s for n_levels in [1, L].
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
from flax import linen as nn

from teal_jax.models.audio_layers import LSTM, Conv1d, ConvNeXtBlock, ConvTranspose1d, activation, istft, stft
from teal_jax.models.quantizers import QuantizerOutput, ResidualVQ

Array = jax.Array
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class CodecConfig:
    """Hyper-parameters (names follow transformers' ``EncodecConfig`` where they mean the same)."""

    sample_rate: int = 16000
    channels: int = 1
    num_filters: int = 32
    hidden_size: int = 128
    ratios: tuple[int, ...] = (8, 5, 4, 2)  # decoder order (upsampling_ratios); the encoder uses them reversed
    num_residual_layers: int = 1
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_growth_rate: int = 2
    compress: int = 2
    num_lstm_layers: int = 2
    lstm_unroll: int = 1  # time steps per lax.scan iteration of the LSTM (speed only; see audio_layers.LSTM)
    use_conv_shortcut: bool = True
    causal: bool = True
    pad_mode: str = "reflect"
    trim_right_ratio: float = 1.0
    activation: str = "elu"
    weight_norm: bool = True
    # architecture: 'seanet' (EnCodec's conv stacks) or the frame-rate 'stft' encoder / 'istft' decoder
    encoder: str = "seanet"
    decoder: str = "seanet"
    n_fft: int = 0  # (i)STFT size of the frame-rate variants; 0 = 4 * hop
    frame_dim: int = 256  # ConvNeXt width of the frame-rate variants
    frame_mlp_ratio: int = 3
    frame_kernel_size: int = 7
    encoder_frame_layers: int = 4
    decoder_frame_layers: int = 8
    # residual VQ
    num_levels: int = 8
    codebook_size: int = 1024
    code_dim: int | None = None  # None: codes live in the latent space (EnCodec); else factorised (DAC)
    l2_normalize: bool = False
    use_ema: bool = False
    ema_decay: float = 0.99
    beta: float = 0.25
    restart_after: int = 0
    kmeans_init: bool = False  # k-means codebook initialisation on the first training batch (see quantizers.py)
    kmeans_iters: int = 10
    quantizer_dropout: float = 0.0
    dtype: str = "float32"

    @property
    def hop_length(self) -> int:
        return int(math.prod(self.ratios))

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def fft_size(self) -> int:
        return self.n_fft or 4 * self.hop_length

    def num_frames(self, samples: int) -> int:
        return math.ceil(samples / self.hop_length)

    @classmethod
    def from_config(cls, cfg: Any, dtype: str | None = None) -> CodecConfig:
        """From a ``config.model`` ConfigDict/dict; unknown keys are ignored (the objective has its own)."""
        d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in fields}
        if dtype is not None:
            kw["dtype"] = dtype
        out = cls(**kw)
        out.validate()
        return out

    def validate(self) -> None:
        if not self.ratios or any(int(r) < 1 for r in self.ratios):
            raise ValueError(f"model.ratios={self.ratios} must be a non-empty list of positive integers")
        if self.encoder not in ("seanet", "stft"):
            raise ValueError(f"model.encoder={self.encoder!r}: choose 'seanet' or 'stft'")
        if self.decoder not in ("seanet", "istft"):
            raise ValueError(f"model.decoder={self.decoder!r}: choose 'seanet' or 'istft'")
        if (self.encoder, self.decoder) != ("seanet", "seanet"):
            if self.fft_size < 2 * self.hop_length:
                raise ValueError(f"model.n_fft={self.n_fft} must be >= 2 * hop ({2 * self.hop_length}) or 0 "
                                 "(the Hann window must cover every sample)")
            for name in ("frame_dim", "frame_mlp_ratio", "frame_kernel_size"):
                if getattr(self, name) < 1:
                    raise ValueError(f"model.{name}={getattr(self, name)} must be >= 1")
            if min(self.encoder_frame_layers, self.decoder_frame_layers) < 0:
                raise ValueError("model.encoder_frame_layers / decoder_frame_layers must be >= 0")
        if self.activation not in ("elu", "snake"):
            raise ValueError(f"model.activation={self.activation!r}: choose 'elu' or 'snake'")
        if self.pad_mode not in ("reflect", "constant"):
            raise ValueError(f"model.pad_mode={self.pad_mode!r}: choose 'reflect' or 'constant'")
        if self.num_levels < 1 or self.codebook_size < 2:
            raise ValueError(f"model.num_levels={self.num_levels} must be >= 1 and model.codebook_size="
                             f"{self.codebook_size} >= 2")
        if self.lstm_unroll < 1:
            raise ValueError(f"model.lstm_unroll={self.lstm_unroll} must be >= 1")
        if self.kmeans_iters < 0:
            raise ValueError(f"model.kmeans_iters={self.kmeans_iters} must be >= 0")
        if self.dtype not in _DTYPES:
            raise ValueError(f"model dtype {self.dtype!r}: choose one of {sorted(_DTYPES)}")
        if not self.causal and self.trim_right_ratio != 1.0:
            raise ValueError("model.trim_right_ratio != 1 only makes sense with causal=True")


class _Stack(nn.Module):
    """Shared helpers for encoder and decoder."""

    config: CodecConfig

    def conv(self, name, features, kernel, stride=1, dilation=1):
        c = self.config
        return Conv1d(features, kernel, stride, dilation, causal=c.causal, pad_mode=c.pad_mode,
                      weight_norm=c.weight_norm, dtype=_DTYPES[c.dtype], name=name)

    def act(self, name):
        return activation(self.config.activation, module_name=name)

    def resblock(self, x, name, dim, dilation):
        """SEANet residual unit; submodule names ``<name>/block_<i>`` follow transformers' indices (1 and 3)."""
        c = self.config
        hidden = dim // c.compress
        h = self.act(f"{name}_block_0")(x)
        h = self.conv(f"{name}_block_1", hidden, c.residual_kernel_size, dilation=dilation)(h)
        h = self.act(f"{name}_block_2")(h)
        h = self.conv(f"{name}_block_3", dim, 1)(h)
        short = self.conv(f"{name}_shortcut", dim, 1)(x) if c.use_conv_shortcut else x
        return short + h


class Encoder(_Stack):
    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``[batch, samples, channels] -> [batch, ceil(samples / hop), hidden]``."""
        c = self.config
        i = 0
        h = self.conv(f"layers_{i}", c.num_filters, c.kernel_size)(x)
        scale = 1
        for ratio in reversed(c.ratios):
            dim = scale * c.num_filters
            for j in range(c.num_residual_layers):
                i += 1
                h = self.resblock(h, f"layers_{i}", dim, c.dilation_growth_rate**j)
            i += 1
            h = self.act(f"layers_{i}")(h)
            i += 1
            h = self.conv(f"layers_{i}", dim * 2, 2 * ratio, stride=ratio)(h)
            scale *= 2
        if c.num_lstm_layers > 0:
            i += 1
            h = LSTM(c.num_lstm_layers, dtype=_DTYPES[c.dtype], unroll=c.lstm_unroll, name=f"layers_{i}")(h)
        i += 1
        h = self.act(f"layers_{i}")(h)
        i += 1
        return self.conv(f"layers_{i}", c.hidden_size, c.last_kernel_size)(h)


class Decoder(_Stack):
    @nn.compact
    def __call__(self, z: Array) -> Array:
        """``[batch, frames, hidden] -> [batch, frames * hop, channels]``."""
        c = self.config
        scale = 2 ** len(c.ratios)
        i = 0
        h = self.conv(f"layers_{i}", scale * c.num_filters, c.kernel_size)(z)
        if c.num_lstm_layers > 0:
            i += 1
            h = LSTM(c.num_lstm_layers, dtype=_DTYPES[c.dtype], unroll=c.lstm_unroll, name=f"layers_{i}")(h)
        for ratio in c.ratios:
            dim = scale * c.num_filters
            i += 1
            h = self.act(f"layers_{i}")(h)
            i += 1
            h = ConvTranspose1d(dim // 2, 2 * ratio, ratio, causal=c.causal, trim_right_ratio=c.trim_right_ratio,
                                weight_norm=c.weight_norm, dtype=_DTYPES[c.dtype], name=f"layers_{i}")(h)
            for j in range(c.num_residual_layers):
                i += 1
                h = self.resblock(h, f"layers_{i}", dim // 2, c.dilation_growth_rate**j)
            scale //= 2
        i += 1
        h = self.act(f"layers_{i}")(h)
        i += 1
        return self.conv(f"layers_{i}", c.channels, c.last_kernel_size)(h)


class _FrameStack(nn.Module):
    """dense(frame_dim) -> LN -> ConvNeXt blocks -> LN -> dense(features): the frame-rate trunk."""

    config: CodecConfig
    layers: int
    features: int

    @nn.compact
    def __call__(self, h: Array) -> Array:
        c = self.config
        dt = _DTYPES[c.dtype]
        dense = lambda n, name: nn.Dense(n, dtype=dt, name=name,  # noqa: E731
                                         kernel_init=nn.initializers.truncated_normal(0.02))
        h = nn.LayerNorm(epsilon=1e-6, dtype=dt, name="norm_in")(dense(c.frame_dim, "embed")(h.astype(dt)))
        for i in range(self.layers):
            h = ConvNeXtBlock(c.frame_mlp_ratio * c.frame_dim, c.frame_kernel_size,
                              layer_scale=1.0 / max(self.layers, 1), dtype=dt, name=f"blocks_{i}")(h)
        h = nn.LayerNorm(epsilon=1e-6, dtype=dt, name="norm_out")(h)
        # lecun-normal output layer (unit-scale outputs, as Vocos' torch-default head): the iSTFT decoder starts from
        # spread phases (noise-like output); near-zero phases would put every frame's pulse where the window is 0.
        return nn.Dense(self.features, dtype=dt, name="out")(h)


class STFTEncoder(nn.Module):
    """``[batch, samples, channels] -> [batch, ceil(samples / hop), hidden]`` from log STFT magnitudes."""

    config: CodecConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        feats = []
        for ch in range(x.shape[-1]):
            spec = stft(x[..., ch].astype(jnp.float32), c.fft_size, c.hop_length, c.pad_mode)
            # sqrt(re^2 + im^2 + eps): finite gradients at silent bins (|z| has a NaN gradient at 0)
            mag = jnp.sqrt(jnp.real(spec) ** 2 + jnp.imag(spec) ** 2 + 1e-10)
            feats.append(jnp.log(jnp.maximum(mag, 1e-5)))
        return _FrameStack(c, c.encoder_frame_layers, c.hidden_size, name="trunk")(jnp.concatenate(feats, -1))


class ISTFTDecoder(nn.Module):
    """``[batch, frames, hidden] -> [batch, frames * hop, channels]`` through per-frame magnitude and phase."""

    config: CodecConfig

    @nn.compact
    def __call__(self, z: Array) -> Array:
        c = self.config
        bins = c.fft_size // 2 + 1
        out = _FrameStack(c, c.decoder_frame_layers, 2 * bins * c.channels, name="trunk")(z).astype(jnp.float32)
        out = out.reshape(*out.shape[:2], c.channels, 2, bins)
        mag = jnp.exp(jnp.minimum(out[..., 0, :], 7.0))  # Vocos clips the magnitude (exp(7) ~ 1100)
        phase = out[..., 1, :]
        spec = jax.lax.complex(mag * jnp.cos(phase), mag * jnp.sin(phase))  # [b, f, channels, bins]
        wav = [istft(spec[:, :, ch], c.fft_size, c.hop_length) for ch in range(c.channels)]
        return jnp.stack(wav, -1).astype(_DTYPES[c.dtype])


class Codec(nn.Module):
    """Encoder + ResidualVQ + decoder. ``__call__(audio, train) -> (reconstruction, QuantizerOutput)``."""

    config: CodecConfig

    def setup(self):
        c = self.config
        self.encoder = STFTEncoder(c) if c.encoder == "stft" else Encoder(c)
        self.decoder = ISTFTDecoder(c) if c.decoder == "istft" else Decoder(c)
        self.quantizer = ResidualVQ(
            num_levels=c.num_levels, codebook_size=c.codebook_size,
            code_dim=c.code_dim or c.hidden_size, features=c.hidden_size, l2_normalize=c.l2_normalize,
            use_ema=c.use_ema, ema_decay=c.ema_decay, beta=c.beta, restart_after=c.restart_after,
            dropout_rate=c.quantizer_dropout, kmeans_init=c.kmeans_init, kmeans_iters=c.kmeans_iters,
            dtype=_DTYPES[c.dtype])

    def _check(self, audio: Array) -> None:
        if audio.ndim != 3 or audio.shape[-1] != self.config.channels:
            raise ValueError(f"audio must be [batch, samples, {self.config.channels}], got shape {audio.shape}")

    def encode_latents(self, audio: Array) -> Array:
        """``[batch, samples, channels] -> float [batch, frames, hidden]`` (before quantization)."""
        self._check(audio)
        z = self.encoder(audio.astype(_DTYPES[self.config.dtype]))
        chex.assert_shape(z, (audio.shape[0], self.config.num_frames(audio.shape[1]), self.config.hidden_size))
        return z

    def quantize(self, z: Array, *, train: bool = False, num_levels: int | None = None) -> QuantizerOutput:
        return self.quantizer(z.astype(jnp.float32), train=train, num_levels=num_levels)

    def encode(self, audio: Array, num_levels: int | None = None) -> Array:
        """``[batch, samples, channels] -> int32 codes [batch, frames, levels]`` (the first ``num_levels``)."""
        codes = self.quantize(self.encode_latents(audio), num_levels=num_levels).codes
        return codes if num_levels is None else codes[..., :num_levels]

    def decode_codes(self, codes: Array) -> Array:
        """``int32 [batch, frames, n<=levels] -> float32 [batch, frames * hop, channels]``."""
        z = self.quantizer.decode_codes(codes)
        return self.decoder(z.astype(_DTYPES[self.config.dtype])).astype(jnp.float32)

    def __call__(self, audio: Array, *, train: bool = False,
                 num_levels: int | None = None) -> tuple[Array, QuantizerOutput]:
        """``audio [batch, samples, channels]`` -> (reconstruction ``[batch, samples, channels]`` float32,
        quantizer output). The decoder's extra samples (frames * hop - samples) are cut off."""
        z = self.encode_latents(audio)
        q = self.quantize(z, train=train, num_levels=num_levels)
        y = self.decoder(q.quantized.astype(_DTYPES[self.config.dtype])).astype(jnp.float32)
        return y[:, : audio.shape[1]], q


def frames_for(samples: int | Sequence[int], hop: int):
    """Number of code frames for ``samples`` input samples (int or a sequence of lengths)."""
    if isinstance(samples, int):
        return math.ceil(samples / hop)
    return [math.ceil(s / hop) for s in samples]
