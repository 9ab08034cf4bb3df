"""Building blocks of the SEANet/EnCodec audio codec (pure Flax linen, no I/O). Layout: ``[batch, time, channels]``.

* :class:`Conv1d` / :class:`ConvTranspose1d`: weight-normalised (``w = g v / ||v||``) 1-D convolutions with
  EnCodec's padding: ``padding_total = (k - 1) d + 1 - stride``, all on the left when causal, split
  ``(total - total // 2, total // 2)`` otherwise, plus extra right padding so that the last window is whole
  (``reflect`` or zero padding). Transposed convs trim ``padding_total`` afterwards (causal: ``ceil(total * r)`` on
  the right). Kernels are stored in Flax layout ``v [k, in, out]``; ``g`` is per output channel for convs and per
  *input* channel for transposed convs (torch's dim 0 of ``[in, out, k]``).
* :class:`LSTM`: stacked unidirectional LSTM in torch's parameterisation (gates [i, f, g, o], ``b_ih + b_hh``)
  with EnCodec's residual add (``lstm(x) + x``).
* :class:`Snake` (``x + sin^2(alpha x) / alpha``, per-channel alpha, DAC) and ELU activations.
* Frame-rate building blocks (Vocos-style codec: all learned layers at the code frame rate, waveform through
  (i)STFT): :func:`frame_signal` / :func:`stft` (analysis), :func:`istft` (windowed overlap-add synthesis),
  :class:`ConvNeXtBlock` (depthwise conv, LayerNorm, MLP, layer scale, residual).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Array = jax.Array


def _pad1d(x: Array, left: int, right: int, mode: str) -> Array:
    """Pads axis 1 of ``x [batch, time, c]``. Reflect padding of a signal shorter than the pad first zero-pads on the
    right (EnCodec's ``_pad1d`` quirk) so the reflection is defined."""
    if left == 0 and right == 0:
        return x
    if mode == "constant":
        return jnp.pad(x, ((0, 0), (left, right), (0, 0)))
    if mode != "reflect":
        raise ValueError(f"pad_mode={mode!r}: choose 'reflect' or 'constant'")
    length = x.shape[1]
    extra = 0
    if length <= max(left, right):
        extra = max(left, right) - length + 1
        x = jnp.pad(x, ((0, 0), (0, extra), (0, 0)))
    y = jnp.pad(x, ((0, 0), (left, right), (0, 0)), mode="reflect")
    return y[:, : y.shape[1] - extra]


def conv1d(x: Array, w: Array, stride: int = 1, dilation: int = 1) -> Array:
    """VALID 1-D correlation ``x [b, t, i]`` * ``w [k, i, o]`` -> ``[b, (t - (k-1)d - 1) // stride + 1, o]``.

    Stride-1 convs with many channels (in * out >= 2048) run as one matmul over stacked shifted slices (im2col):
    XLA's CPU convolution computes their kernel gradient up to 50x slower (1.6 s vs 0.03 s for
    [16, 1000, 32] x [2, 32, 128]); thin full-rate and strided convs are faster with ``lax.conv``.
    """
    k = w.shape[0]
    if stride != 1 or w.shape[1] * w.shape[2] < 2048:
        return jax.lax.conv_general_dilated(x, w, (stride,), "VALID", rhs_dilation=(dilation,),
                                            dimension_numbers=("NWC", "WIO", "NWC"))
    t_out = (x.shape[1] - (k - 1) * dilation - 1) // stride + 1
    if k == 1:
        return jnp.einsum("bti,io->bto", x[:, : (t_out - 1) * stride + 1 : stride], w[0])
    cols = jnp.stack([x[:, j * dilation : j * dilation + (t_out - 1) * stride + 1 : stride] for j in range(k)], 2)
    return jnp.einsum("btki,kio->bto", cols, w)


def conv_padding(length: int, kernel: int, stride: int, dilation: int, causal: bool) -> tuple[int, int]:
    """EnCodec's (left, right) padding of a strided conv for an input of ``length`` samples."""
    k = (kernel - 1) * dilation + 1
    total = k - stride
    n_frames = math.ceil((length - k + total) / stride + 1) - 1
    extra = n_frames * stride + k - total - length
    if causal:
        return total, extra
    right = total // 2
    return total - right, right + extra


def _norm_except(v: Array, axis: int) -> Array:
    """||v|| over every axis but ``axis`` (kept as size 1 elsewhere)."""
    axes = tuple(a for a in range(v.ndim) if a != axis)
    return jnp.sqrt(jnp.sum(jnp.square(v), axis=axes, keepdims=True))


class Conv1d(nn.Module):
    """Weight-normalised 1-D conv with EnCodec padding: ``[batch, time, in] -> [batch, ceil(time/stride), out]``."""

    features: int
    kernel_size: int
    stride: int = 1
    dilation: int = 1
    causal: bool = True
    pad_mode: str = "reflect"
    weight_norm: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        # weight norm over (k, in): torch's dim 0 is the output channel
        w = _conv_kernel(self, (self.kernel_size, x.shape[-1], self.features), self.weight_norm, 2)
        b = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
                       (self.features,), self.param_dtype)
        left, right = conv_padding(x.shape[1], self.kernel_size, self.stride, self.dilation, self.causal)
        x = _pad1d(x, left, right, self.pad_mode)
        y = conv1d(x.astype(self.dtype), w.astype(self.dtype), self.stride, self.dilation)
        return y + b.astype(self.dtype)


def _conv_kernel(module: nn.Module, shape: tuple[int, int, int], weight_norm: bool, g_axis: int) -> Array:
    """A 1-D conv kernel ``[k, in, out]`` created on ``module``: ``kernel``, or with weight norm ``weight_v`` and
    ``weight_g`` (``g`` along ``g_axis``; the norm is over the other axes), ``w = g * v / ||v||``."""
    init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=(0, 1), out_axis=2)
    names = (None, "conv_in", "conv_out")
    dtype = module.param_dtype
    if not weight_norm:
        return module.param("kernel", nn.with_logical_partitioning(init, names), shape, dtype)
    v = module.param("weight_v", nn.with_logical_partitioning(init, names), shape, dtype)
    g = module.param("weight_g", nn.with_logical_partitioning(
        lambda _, s, d: _norm_except(v, g_axis).reshape(s).astype(d), (names[g_axis],)), (shape[g_axis],), dtype)
    return g.reshape([n if i == g_axis else 1 for i, n in enumerate(shape)]) * v / _norm_except(v, g_axis)


class ConvTranspose1d(nn.Module):
    """Weight-normalised transposed 1-D conv: ``[batch, time, in] -> [batch, time * stride, out]`` (after trimming
    ``kernel - stride`` samples; EnCodec's ``trim_right_ratio`` decides where when causal)."""

    features: int
    kernel_size: int
    stride: int = 1
    causal: bool = True
    trim_right_ratio: float = 1.0
    weight_norm: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c_in = x.shape[-1]
        k = self.kernel_size
        # v[k, i, o] = torch weight[i, o, k]; g per input channel (torch's dim 0 of [in, out, k])
        w = _conv_kernel(self, (k, c_in, self.features), self.weight_norm, 1)
        b = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
                       (self.features,), self.param_dtype)
        # y[t] = sum_{s, j: t = s*stride + j} x[s] w[j], full length (T-1)*stride + k. Polyphase form (much faster
        # on CPU than a conv over a stride-dilated input): with k padded to a*stride and t = m*stride + r,
        # y[m*stride + r] = sum_{d<a} x[m - d] w[d*stride + r]: one ordinary conv with a taps and stride*out
        # output channels (phase-major), then interleave the phases.
        s_, a = self.stride, -(-k // self.stride)
        w_pad = jnp.pad(w, ((0, a * s_ - k), (0, 0), (0, 0))).reshape(a, s_, c_in, self.features)
        kern = jnp.flip(w_pad, 0).transpose(0, 2, 1, 3).reshape(a, c_in, s_ * self.features)
        xp = jnp.pad(x.astype(self.dtype), ((0, 0), (a - 1, a - 1), (0, 0)))
        y = conv1d(xp, kern.astype(self.dtype))
        y = y.reshape(y.shape[0], y.shape[1] * s_, self.features)[:, : (x.shape[1] - 1) * s_ + k]
        y = y + b.astype(self.dtype)
        total = k - self.stride
        right = math.ceil(total * self.trim_right_ratio) if self.causal else total // 2
        left = total - right
        return y[:, left : y.shape[1] - right]


class LSTM(nn.Module):
    """``num_layers`` stacked LSTMs over ``x [batch, time, dim]`` plus the input (EnCodec's residual add).

    Per layer: ``gates = x W_ih + b_ih + h W_hh + b_hh`` split as [i, f, g, o] (torch's order);
    ``c' = sigma(f) c + sigma(i) tanh(g)``, ``h' = sigma(o) tanh(c')``. Kernels are stored ``[in, 4H]``.

    The input projection ``x W_ih + b_ih + b_hh`` of a layer is one matmul over all frames, outside the recurrence;
    the ``lax.scan`` carries only ``h W_hh`` and the gate arithmetic, with ``unroll`` steps per loop iteration
    (fewer loop trips and kernel launches on an accelerator; the per-step arithmetic is the same, but XLA may fuse
    an unrolled body differently: on CPU float32 outputs moved by up to 2.4e-7 with unroll >= 4, so the default 1
    keeps earlier numbers exactly).
    """

    num_layers: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    unroll: int = 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dim = x.shape[-1]
        bound = 1.0 / math.sqrt(dim)  # torch's U(-1/sqrt(H), 1/sqrt(H))
        init = nn.initializers.uniform(2 * bound)
        shifted = lambda key, shape, dt: init(key, shape, dt) - bound  # noqa: E731
        h = x.astype(self.dtype)
        for layer in range(self.num_layers):
            w_ih = self.param(f"weight_ih_l{layer}", nn.with_logical_partitioning(shifted, ("embed", "mlp")),
                              (dim, 4 * dim), self.param_dtype)
            w_hh = self.param(f"weight_hh_l{layer}", nn.with_logical_partitioning(shifted, ("embed", "mlp")),
                              (dim, 4 * dim), self.param_dtype)
            b_ih = self.param(f"bias_ih_l{layer}", nn.with_logical_partitioning(shifted, ("mlp",)), (4 * dim,),
                              self.param_dtype)
            b_hh = self.param(f"bias_hh_l{layer}", nn.with_logical_partitioning(shifted, ("mlp",)), (4 * dim,),
                              self.param_dtype)
            xw = h @ w_ih.astype(self.dtype) + (b_ih + b_hh).astype(self.dtype)  # input projection for all steps
            w_hh_c = w_hh.astype(self.dtype)

            def step(carry, xw_t, w_hh_c=w_hh_c):
                hh, cc = carry
                z = xw_t + hh @ w_hh_c
                i, f, g, o = jnp.split(z, 4, axis=-1)
                cc = jax.nn.sigmoid(f) * cc + jax.nn.sigmoid(i) * jnp.tanh(g)
                hh = jax.nn.sigmoid(o) * jnp.tanh(cc)
                return (hh, cc), hh

            zeros = jnp.zeros((x.shape[0], dim), self.dtype)
            _, out = jax.lax.scan(step, (zeros, zeros), jnp.swapaxes(xw, 0, 1),
                                  unroll=max(1, min(self.unroll, x.shape[1])))
            h = jnp.swapaxes(out, 0, 1)
        return h + x.astype(self.dtype)


class Snake(nn.Module):
    """``x + sin^2(alpha x) / alpha`` with a learned per-channel ``alpha`` (init 1); periodic inductive bias."""

    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        alpha = self.param("alpha", nn.initializers.ones, (x.shape[-1],), self.param_dtype).astype(x.dtype)
        return x + jnp.square(jnp.sin(alpha * x)) / (alpha + 1e-9)


def activation(name: str, param_dtype: Any = jnp.float32, module_name: str | None = None):
    """'elu' -> jax.nn.elu; 'snake' -> a :class:`Snake` module (named ``module_name``)."""
    if name == "elu":
        return jax.nn.elu
    if name == "snake":
        return Snake(param_dtype=param_dtype, name=module_name)
    raise ValueError(f"model.activation={name!r}: choose 'elu' or 'snake'")


# ---- frame-rate (STFT / iSTFT) blocks --------------------------------------------------------------------------


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window (torch.hann_window's default), float32 ``[n]``."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)


def frame_padding(n_fft: int, hop: int) -> int:
    """Left padding of :func:`frame_signal`: frame ``f`` covers samples ``[f hop - p, f hop - p + n_fft)`` with
    ``p = (n_fft - hop) // 2``, so it is centred on the hop-long block ``[f hop, (f + 1) hop)``."""
    return (n_fft - hop) // 2


def frame_signal(x: Array, n_fft: int, hop: int, pad_mode: str = "reflect") -> Array:
    """``x [batch, samples]`` -> ``[batch, ceil(samples / hop), n_fft]`` frames (see :func:`frame_padding`); the
    signal is padded (``reflect`` or ``constant``) by ``p`` on the left and up to the last frame's end on the
    right."""
    if n_fft < hop:
        raise ValueError(f"n_fft={n_fft} must be >= hop={hop}")
    t = x.shape[1]
    n_frames = -(-t // hop)
    left = frame_padding(n_fft, hop)
    right = (n_frames - 1) * hop + n_fft - left - t
    xp = _pad1d(x[..., None], left, right, pad_mode)[..., 0]
    idx = np.arange(n_frames)[:, None] * hop + np.arange(n_fft)[None, :]
    return xp[:, idx]


def stft(x: Array, n_fft: int, hop: int, pad_mode: str = "reflect") -> Array:
    """Complex ``[batch, ceil(samples / hop), n_fft // 2 + 1]``: ``rfft(frame * hann)`` of :func:`frame_signal`."""
    return jnp.fft.rfft(frame_signal(x.astype(jnp.float32), n_fft, hop, pad_mode) * hann_window(n_fft), axis=-1)


def centered_stft(x: Array, n_fft: int, hop: int) -> Array:
    """torch.stft's ``center=True`` framing (reflect-pad ``n_fft // 2`` on both sides; frames = 1 + samples // hop),
    periodic Hann window: complex ``[batch, frames, n_fft // 2 + 1]``. The losses, discriminators and metrics use
    this one; the codec's own encoder/decoder use the block-centred :func:`stft` / :func:`istft` pair."""
    pad = n_fft // 2
    xp = jnp.pad(x.astype(jnp.float32), ((0, 0), (pad, pad)), mode="reflect")
    n_frames = 1 + (xp.shape[1] - n_fft) // hop
    idx = np.arange(n_frames)[:, None] * hop + np.arange(n_fft)[None, :]
    return jnp.fft.rfft(xp[:, idx] * hann_window(n_fft), axis=-1)


def istft(spec: Array, n_fft: int, hop: int) -> Array:
    """Inverse of :func:`stft` (least-squares overlap-add): ``spec [batch, frames, n_fft // 2 + 1]`` complex ->
    float32 ``[batch, frames * hop]``: ``y = OLA(irfft(spec) * w) / OLA(w^2)`` with the Hann window ``w``, trimmed
    to the samples the frames are centred on. ``istft(stft(x))[:, :samples]`` equals ``x`` (needs ``n_fft >= 2 hop``
    so that the window covers every sample)."""
    b, f = spec.shape[0], spec.shape[1]
    w = hann_window(n_fft)
    frames = jnp.fft.irfft(spec, n=n_fft, axis=-1).astype(jnp.float32) * w  # [b, f, n_fft]
    a = -(-n_fft // hop)  # hop-long chunks per frame
    frames = jnp.pad(frames, ((0, 0), (0, 0), (0, a * hop - n_fft))).reshape(b, f, a, hop)
    length = (f + a - 1) * hop
    out = jnp.zeros((b, length), jnp.float32)
    for j in range(a):  # chunk j of frame m lands on block m + j
        out = out.at[:, j * hop : (j + f) * hop].add(frames[:, :, j].reshape(b, f * hop))
    w2 = np.pad(w**2, (0, a * hop - n_fft)).reshape(a, hop).astype(np.float64)
    env = np.zeros((f + a - 1, hop))
    for j in range(a):
        env[j : j + f] += w2[j]
    left = frame_padding(n_fft, hop)
    env = env.reshape(-1)[left : left + f * hop]
    if np.min(env) < 1e-6:
        raise ValueError(f"istft: n_fft={n_fft}, hop={hop} leave samples uncovered by the window")
    return out[:, left : left + f * hop] / env.astype(np.float32)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt-1D block (Vocos): ``x + gamma * W2 gelu(W1 LN(dwconv_k(x)))``; ``x [batch, frames, dim]``.

    The depthwise conv (zero 'same' padding) is a sum of shifted, per-channel scaled copies (elementwise work; XLA's
    CPU grouped convolution is slower). ``gamma`` (layer scale) starts at ``layer_scale``.
    """

    mlp_dim: int
    kernel_size: int = 7
    layer_scale: float = 0.1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dim, k = x.shape[-1], self.kernel_size
        w = self.param("dw_kernel", nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=0, out_axis=1),
            (None, "conv_out")), (k, dim), self.param_dtype)
        b = self.param("dw_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)), (dim,),
                       self.param_dtype)
        h = x.astype(self.dtype)
        left = (k - 1) // 2
        hp = jnp.pad(h, ((0, 0), (left, k - 1 - left), (0, 0)))
        t = h.shape[1]
        h = sum(hp[:, j : j + t] * w[j].astype(self.dtype) for j in range(k)) + b.astype(self.dtype)
        h = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(h)
        dense = lambda n, name: nn.Dense(n, dtype=self.dtype, param_dtype=self.param_dtype, name=name,  # noqa: E731
                                         kernel_init=nn.initializers.truncated_normal(0.02))
        h = dense(dim, "pw2")(jax.nn.gelu(dense(self.mlp_dim, "pw1")(h)))
        gamma = self.param("gamma", nn.initializers.constant(self.layer_scale), (dim,), self.param_dtype)
        return x + gamma.astype(self.dtype) * h
