"""Discrete bottlenecks shared by the image tokenizer and the audio codec (pure Flax linen, no I/O).

* :class:`VectorQuantizer`: nearest-neighbour VQ (VQ-VAE / VQGAN / LlamaGen), optionally factorised
  (project to a small ``code_dim`` and back) and l2-normalised (cosine-similarity lookup), codebook
  learned by loss or by EMA, dead-code restart, commitment loss, straight-through gradients.
* :class:`ResidualVQ`: ``num_levels`` VQs on successive residuals (SoundStream / EnCodec / DAC), with
  quantizer dropout.
* :class:`~teal_jax.models.fsq.FSQ` (its own module): finite scalar quantization; no codebook, no loss.

All return a :class:`QuantizerOutput`. Distances, EMA statistics and codebook lookups run in
float32 whatever the compute dtype: an argmin in bfloat16 ties far too often.

Non-parameter state lives in the ``'quantizer_state'`` collection and changes only when ``train=True``
and that collection is mutable (``apply(..., mutable=['quantizer_state'])``); never during ``init``.
Randomness (dead-code restart, quantizer dropout) comes from the rng stream ``rng_name``
(default ``'dropout'``).
"""

from __future__ import annotations

from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp
from flax import linen as nn

Array = jax.Array
STATE = "quantizer_state"


@flax.struct.dataclass
class QuantizerOutput:
    """What every quantizer returns.

    quantized: ``[..., D]`` the quantized input (straight-through: gradient w.r.t. the input = identity).
    codes: ``int32 [...]`` (``[..., levels]`` for :class:`ResidualVQ`).
    loss: scalar auxiliary loss (codebook + commitment terms; 0 for FSQ) to add to the training loss.
    metrics: flat ``dict[str, scalar]`` (codebook usage = fraction of codes used in the batch, perplexity).
    """

    quantized: Array
    codes: Array
    loss: Array
    metrics: dict[str, Array]


def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-12) -> Array:
    """``x / max(||x||, eps)`` (torch's F.normalize), as ``x * rsqrt(max(sum(x^2), eps^2))``.

    The gradient is finite everywhere: at ``x = 0`` it is ``I / eps`` (the limit of the ``eps`` branch), where
    ``x / jnp.linalg.norm(x)`` gives NaN (the norm's gradient at 0 is 0/0). ``eps^2`` is computed in float32 at
    least (``1e-24`` underflows to 0 in bfloat16/float16 otherwise).
    """
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    sq = jnp.sum(jnp.square(x.astype(dtype)), axis=axis, keepdims=True)
    return (x.astype(dtype) * jax.lax.rsqrt(jnp.maximum(sq, jnp.asarray(eps, dtype) ** 2))).astype(x.dtype)


def code_counts(codes: Array, num_codes: int, mask: Array | None = None) -> Array:
    """float32 ``[num_codes]``: how often each code occurs (only where ``mask``)."""
    w = jnp.ones(codes.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    return jnp.zeros((num_codes,), jnp.float32).at[codes.reshape(-1)].add(w.reshape(-1))


def usage_metrics(counts: Array, prefix: str = "") -> dict[str, Array]:
    """Codebook usage (fraction of codes seen in the batch) and perplexity exp(H(p)) of the code histogram."""
    p = counts / jnp.maximum(counts.sum(), 1.0)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return {
        f"{prefix}usage": jnp.mean((counts > 0).astype(jnp.float32)),
        f"{prefix}perplexity": jnp.exp(entropy),
    }


def entropy_loss(dist: Array, temperature: float, mask: Array | None = None) -> Array:
    """``mean_i H(p_i) - H(mean_i p_i)`` for ``p_i = softmax(-dist_i / temperature)``; ``dist [N, K]``."""
    logp = jax.nn.log_softmax(-dist / temperature, axis=-1)
    p = jnp.exp(logp)
    w = jnp.ones(dist.shape[:1], jnp.float32) if mask is None else mask.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(w), 1.0)
    per_vector = jnp.sum(w * -jnp.sum(p * logp, axis=-1)) / n
    avg = jnp.sum(w[:, None] * p, axis=0) / n
    batch = -jnp.sum(avg * jnp.log(jnp.maximum(avg, 1e-30)))
    return per_vector - batch


def kmeans(x: Array, num_clusters: int, iters: int, key: Array, mask: Array | None = None) -> tuple[Array, Array]:
    """Lloyd's k-means of ``x [N, C]`` (float32) -> (centroids ``[num_clusters, C]``, cluster sizes ``[num_clusters]``).

    Starts from ``num_clusters`` distinct random rows of ``x`` (among the rows where ``mask``; rows repeat only when
    fewer than ``num_clusters`` are selected), then ``iters`` rounds of: assign every selected row to its nearest
    centroid (squared euclidean), move each centroid to the mean of its rows; a centroid without rows stays where
    it is. ``iters=0`` returns the sampled rows (data initialisation). Sizes are those of the last assignment
    (ones when ``iters=0``).
    """
    x = x.astype(jnp.float32)
    n = x.shape[0]
    valid = jnp.ones((n,), bool) if mask is None else mask.reshape(n).astype(bool)
    w = valid.astype(jnp.float32)
    order = jnp.argsort(jnp.where(valid, jax.random.uniform(key, (n,)), 2.0))  # selected rows first, shuffled
    n_valid = jnp.maximum(jnp.sum(valid.astype(jnp.int32)), 1)
    centroids = x[order[jnp.arange(num_clusters) % n_valid]]

    def assign(c):
        d = jnp.sum(x**2, 1, keepdims=True) - 2.0 * x @ c.T + jnp.sum(c**2, 1)[None, :]
        return jax.nn.one_hot(jnp.argmin(d, axis=1), num_clusters, dtype=jnp.float32) * w[:, None]  # [N, K]

    def step(_, c):
        onehot = assign(c)
        sizes = jnp.sum(onehot, axis=0)
        means = (onehot.T @ x) / jnp.maximum(sizes, 1.0)[:, None]
        return jnp.where(sizes[:, None] > 0, means, c)

    if iters == 0:
        return centroids, jnp.ones((num_clusters,), jnp.float32)
    centroids = jax.lax.fori_loop(0, iters, step, centroids)
    return centroids, jnp.sum(assign(centroids), axis=0)


def _masked_mean(x: Array, mask: Array | None) -> Array:
    """Mean over all entries of ``x [..., D]``; with ``mask [...]`` only over the selected vectors."""
    if mask is None:
        return jnp.mean(x)
    m = mask.astype(x.dtype)[..., None]
    return jnp.sum(x * m) / jnp.maximum(jnp.sum(m) * x.shape[-1], 1.0)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantization of ``x [..., D]``.

    Attributes:
      codebook_size: K, the number of codes.
      code_dim: C, the code width.
      features: D, the input width; None means D = C. When ``D != C`` the input is projected
        ``D -> C`` before the lookup and the quantized vector ``C -> D`` after it (factorised codes,
        ViT-VQGAN / DAC).
      l2_normalize: look up by cosine similarity: the (projected) input and the codebook are
        l2-normalised before the euclidean nearest neighbour; the quantized vector is the normalised code.
      decode_normalize: whether :meth:`decode_codes` l2-normalises the code; None = ``l2_normalize``.
        (transformers' Janus looks up raw codes but decodes normalised ones; its converter sets
        ``l2_normalize=False, decode_normalize=True``.)
      use_ema: learn the codebook by exponential moving averages of the assigned inputs (then it lives in
        ``'quantizer_state'``, not in params, and the loss has only the commitment term).
      ema_decay, ema_eps: EMA decay and Laplace smoothing of the cluster sizes.
      beta: commitment weight: ``loss = ||sg(z) - e||^2 + beta ||z - sg(e)||^2`` (first term absent with EMA).
      restart_after: a code unused for this many consecutive training steps is replaced by a random
        input vector of the current batch (0 disables dead-code restart).
      rng_name: rng stream for the restart.
      entropy_weight: weight of the entropy loss ``mean_i H(p_i) - H(mean_i p_i)`` with
        ``p_i = softmax(-||z_i - e||^2 / entropy_temperature)`` (MaskGIT/MAGVIT style): confident assignments per
        vector, spread over the codebook in the batch. 0 disables it (and its cost).
      codebook_init_scale: std of the normal codebook initialisation.
      kmeans_init: data initialisation of the codebook (SoundStream / EnCodec): at the first training call with
        ``'quantizer_state'`` mutable, the codebook becomes the :func:`kmeans` centroids of that batch's (selected,
        projected, normalised when ``l2_normalize``) vectors, and that call already quantizes with them. A learned
        codebook gets the difference as its non-trainable offset (as a restart does), an EMA codebook is replaced
        (EMA counts reset to 1). The ``initialized`` state flag makes later calls skip it.
      kmeans_iters: Lloyd iterations of that initialisation; 0 = the codes are random vectors of the batch.
    """

    codebook_size: int
    code_dim: int
    features: int | None = None
    l2_normalize: bool = False
    decode_normalize: bool | None = None
    use_ema: bool = False
    ema_decay: float = 0.99
    ema_eps: float = 1e-5
    beta: float = 0.25
    restart_after: int = 0
    rng_name: str = "dropout"
    entropy_weight: float = 0.0
    entropy_temperature: float = 0.01
    codebook_init_scale: float = 1.0
    kmeans_init: bool = False
    kmeans_iters: int = 10
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @property
    def _has_offset(self) -> bool:
        return not self.use_ema and (self.restart_after > 0 or self.kmeans_init)

    def setup(self):
        K, C = self.codebook_size, self.code_dim
        if self.kmeans_iters < 0:
            raise ValueError(f"kmeans_iters={self.kmeans_iters} must be >= 0")
        init = nn.initializers.normal(self.codebook_init_scale)
        if self.use_ema:
            # EMA codebook = ema_sum / smoothed ema_count; both start from the initial codebook with count 1.
            self.codebook_var = self.variable(
                STATE, "codebook", lambda: init(self.make_rng("params"), (K, C))
            )
            self.ema_count = self.variable(STATE, "ema_count", lambda: jnp.ones((K,), jnp.float32))
            self.ema_sum = self.variable(STATE, "ema_sum", lambda: jnp.array(self.codebook_var.value))
        else:
            self.codebook = self.param(
                "codebook",
                nn.with_logical_partitioning(init, ("codebook", "code_dim")),
                (K, C),
                self.param_dtype,
            )
            if self._has_offset:
                # A learned codebook is a parameter the module cannot overwrite; a restart (or the k-means
                # initialisation) instead sets a non-trainable offset so that (codebook + offset) equals the new
                # vector; the parameter keeps learning underneath.
                self.restart_offset = self.variable(
                    STATE, "restart_offset", lambda: jnp.zeros((K, C), jnp.float32)
                )
        if self.restart_after > 0:
            self.unused_steps = self.variable(STATE, "unused_steps", lambda: jnp.zeros((K,), jnp.int32))
        if self.kmeans_init:
            self.initialized = self.variable(STATE, "initialized", lambda: jnp.zeros((), jnp.int32))
        self.factorised = self.features is not None and self.features != C
        if self.factorised:
            dense = lambda n, names: nn.Dense(  # noqa: E731
                n,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), names),
            )
            self.project_in = dense(C, (None, "code_dim"))
            self.project_out = dense(self.features, ("code_dim", None))

    def raw_codebook(self) -> Array:
        """float32 ``[K, C]`` codebook before any normalisation."""
        if self.use_ema:
            return self.codebook_var.value.astype(jnp.float32)
        cb = jnp.asarray(self.codebook, jnp.float32)
        if self._has_offset:
            cb = cb + jax.lax.stop_gradient(self.restart_offset.value)
        return cb

    def _kmeans_init(self, flat: Array, mask: Array | None) -> None:
        """Sets the codebook to the k-means centroids of ``flat [N, C]`` unless already initialised (see
        ``kmeans_init``)."""
        done = self.initialized.value > 0
        key = self.make_rng(self.rng_name)
        current = self.raw_codebook()
        new, _ = jax.lax.cond(
            done,
            lambda: (current, jnp.zeros((self.codebook_size,), jnp.float32)),
            lambda: kmeans(jax.lax.stop_gradient(flat), self.codebook_size, self.kmeans_iters, key, mask),
        )
        if self.use_ema:
            self.codebook_var.value = new
            self.ema_sum.value = jnp.where(done, self.ema_sum.value, new)
            self.ema_count.value = jnp.where(done, self.ema_count.value, 1.0)
        else:
            base = jnp.asarray(self.codebook, jnp.float32)
            self.restart_offset.value = jnp.where(done, self.restart_offset.value, new - base)
        self.initialized.value = jnp.ones((), jnp.int32)

    def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> QuantizerOutput:
        """``x [..., D]`` -> quantized ``[..., D]``, codes ``int32 [...]``.

        ``mask [...]`` (bool, optional) selects the vectors that count for the loss, the usage metrics and the
        EMA/restart statistics (residual VQ uses it for quantizer dropout).
        """
        expected = self.code_dim if self.features is None else self.features
        if x.shape[-1] != expected:
            raise ValueError(f"VectorQuantizer input has width {x.shape[-1]}, expected features={expected}")
        z = (self.project_in(x) if self.factorised else x).astype(jnp.float32)  # [..., C]
        lead = z.shape[:-1]
        flat = z.reshape(-1, self.code_dim)  # [N, C]
        flat_mask = None if mask is None else mask.reshape(-1)
        if self.l2_normalize:
            flat = l2_normalize(flat)
        update = train and not self.is_initializing() and self.is_mutable_collection(STATE)
        if self.kmeans_init and update:
            self._kmeans_init(flat, flat_mask)
        codebook = self.raw_codebook()  # [K, C]
        if self.l2_normalize:
            codebook = l2_normalize(codebook)
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2, argmin over the K codes.
        dist = (
            jnp.sum(flat**2, axis=1, keepdims=True)
            - 2.0 * flat @ codebook.T
            + jnp.sum(codebook**2, axis=1)[None, :]
        )
        codes = jnp.argmin(dist, axis=1).astype(jnp.int32)  # [N]
        z_q = codebook[codes]  # [N, C]

        commit = _masked_mean((flat - jax.lax.stop_gradient(z_q)) ** 2, flat_mask)
        if self.use_ema:
            loss = self.beta * commit
        else:
            loss = _masked_mean((jax.lax.stop_gradient(flat) - z_q) ** 2, flat_mask) + self.beta * commit
        metrics = {}
        if self.entropy_weight > 0:
            ent = entropy_loss(dist, self.entropy_temperature, flat_mask)
            loss = loss + self.entropy_weight * ent
            metrics["entropy_loss"] = ent

        # Straight-through estimator: forward value z_q, backward identity (d z_q_st / d z = I).
        z_q_st = flat + jax.lax.stop_gradient(z_q - flat)

        counts = code_counts(codes, self.codebook_size, flat_mask)
        if update:
            self._update_state(flat, codes, counts, flat_mask)

        quantized = z_q_st.reshape(*lead, self.code_dim).astype(self.dtype)
        if self.factorised:
            quantized = self.project_out(quantized)
        chex.assert_shape(quantized, x.shape)
        return QuantizerOutput(
            quantized=quantized.astype(x.dtype),
            codes=codes.reshape(lead),
            loss=loss,
            metrics={**usage_metrics(counts), **metrics},
        )

    def _update_state(self, flat: Array, codes: Array, counts: Array, mask: Array | None) -> None:
        flat = jax.lax.stop_gradient(flat)
        K = self.codebook_size
        if self.use_ema:
            w = jnp.ones(codes.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
            onehot = jax.nn.one_hot(codes, K, dtype=jnp.float32) * w[:, None]  # [N, K]
            d = self.ema_decay
            count = d * self.ema_count.value + (1 - d) * counts
            ema_sum = d * self.ema_sum.value + (1 - d) * (onehot.T @ flat)
            # Laplace smoothing keeps empty clusters from dividing by zero without changing the total count n.
            n = jnp.sum(count)
            smoothed = (count + self.ema_eps) / (n + K * self.ema_eps) * n
            self.ema_count.value, self.ema_sum.value = count, ema_sum
            self.codebook_var.value = ema_sum / smoothed[:, None]
        if self.restart_after > 0:
            unused = jnp.where(counts > 0, 0, self.unused_steps.value + 1)
            dead = unused >= self.restart_after  # [K]
            rng = self.make_rng(self.rng_name)
            k_perm, k_pick = jax.random.split(rng)
            if mask is None:
                idx = jax.random.randint(k_pick, (K,), 0, flat.shape[0])
            else:  # draw only among the selected vectors: they come first in a random order
                order = jnp.argsort(jnp.where(mask, jax.random.uniform(k_perm, mask.shape), 2.0))
                n_valid = jnp.maximum(jnp.sum(mask.astype(jnp.int32)), 1)
                idx = order[jax.random.randint(k_pick, (K,), 0, n_valid)]
            new = flat[idx]  # [K, C]
            if self.use_ema:
                self.codebook_var.value = jnp.where(dead[:, None], new, self.codebook_var.value)
                self.ema_sum.value = jnp.where(dead[:, None], new, self.ema_sum.value)
                self.ema_count.value = jnp.where(dead, 1.0, self.ema_count.value)
            else:
                base = jnp.asarray(self.codebook, jnp.float32)
                self.restart_offset.value = jnp.where(dead[:, None], new - base, self.restart_offset.value)
            self.unused_steps.value = jnp.where(dead, 0, unused)

    def decode_codes(self, codes: Array) -> Array:
        """``int32 [...]`` -> ``[..., D]`` (the code, projected out when factorised)."""
        normalize = self.l2_normalize if self.decode_normalize is None else self.decode_normalize
        codebook = self.raw_codebook()
        if normalize:
            codebook = l2_normalize(codebook)
        z = jnp.take(codebook, codes, axis=0).astype(self.dtype)
        return self.project_out(z) if self.factorised else z


class ResidualVQ(nn.Module):
    """L vector quantizers on successive residuals: ``x ~ sum_l q_l``, ``q_l = VQ_l(x - sum_{m<l} q_m)``.

    Attributes (the VQ ones apply to every level): num_levels (L), codebook_size, code_dim, features (D;
    each level projects ``D -> code_dim -> D`` when they differ, as in DAC), l2_normalize (False = plain
    euclidean on raw codebooks, as in EnCodec), use_ema, ema_decay, beta, restart_after, kmeans_init, kmeans_iters
    (level l is initialised on the residual left by levels < l, already quantized with their new codebooks).
      dropout_rate: quantizer dropout (SoundStream/DAC): at train time each example, with this
        probability, keeps only the first n levels, n ~ U{1..L}; levels beyond n contribute nothing
        (no output, loss or statistics).

    Inputs are ``x [batch, ..., D]``; the dropout draw is per example (leading axis).
    """

    num_levels: int
    codebook_size: int
    code_dim: int
    features: int | None = None
    l2_normalize: bool = False
    use_ema: bool = False
    ema_decay: float = 0.99
    beta: float = 0.25
    restart_after: int = 0
    dropout_rate: float = 0.0
    kmeans_init: bool = False
    kmeans_iters: int = 10
    rng_name: str = "dropout"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.levels = [
            VectorQuantizer(
                codebook_size=self.codebook_size,
                code_dim=self.code_dim,
                features=self.features,
                l2_normalize=self.l2_normalize,
                use_ema=self.use_ema,
                ema_decay=self.ema_decay,
                beta=self.beta,
                restart_after=self.restart_after,
                kmeans_init=self.kmeans_init,
                kmeans_iters=self.kmeans_iters,
                rng_name=self.rng_name,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )
            for _ in range(self.num_levels)
        ]

    def __call__(
        self, x: Array, *, train: bool, num_levels: int | None = None, rng: Array | None = None
    ) -> QuantizerOutput:
        """``x [batch, ..., D]`` -> quantized ``[batch, ..., D]``, codes ``int32 [batch, ..., L]``.

        num_levels: use only the first n levels (a bitrate choice at inference); codes still have L
          entries; those of unused levels are computed on the residual but contribute nothing.
        rng: explicit key for quantizer dropout (else the ``rng_name`` stream).
        """
        L = self.num_levels
        n_use = L if num_levels is None else int(num_levels)
        if not 1 <= n_use <= L:
            raise ValueError(f"num_levels={num_levels} must be in [1, {L}]")
        batch = x.shape[0]
        n = jnp.full((batch,), n_use, jnp.int32)  # levels kept per example
        if train and self.dropout_rate > 0 and not self.is_initializing():
            key = self.make_rng(self.rng_name) if rng is None else rng
            k_apply, k_n = jax.random.split(key)
            drop = jax.random.bernoulli(k_apply, self.dropout_rate, (batch,))
            n = jnp.where(drop, jax.random.randint(k_n, (batch,), 1, n_use + 1), n)
        bshape = (batch,) + (1,) * (x.ndim - 2)  # broadcast a per-example value over the middle axes

        residual = x
        quantized = jnp.zeros_like(x)
        codes, loss, metrics = [], jnp.zeros((), jnp.float32), {}
        for l, vq in enumerate(self.levels):
            keep = jnp.broadcast_to((l < n).reshape(bshape), x.shape[:-1])  # [batch, ...]
            out = vq(residual, train=train, mask=keep)
            q = out.quantized * keep[..., None].astype(out.quantized.dtype)
            quantized = quantized + q
            residual = residual - q
            codes.append(out.codes)
            # Mean over the examples that use this level (the VQ's loss is already a mean over those).
            loss = loss + out.loss * jnp.mean(keep.astype(jnp.float32))
            metrics.update({f"level{l}/{k}": v for k, v in out.metrics.items()})
        metrics["usage"] = jnp.mean(jnp.stack([metrics[f"level{l}/usage"] for l in range(L)]))
        metrics["perplexity"] = jnp.mean(jnp.stack([metrics[f"level{l}/perplexity"] for l in range(L)]))
        metrics["levels_used"] = jnp.mean(n.astype(jnp.float32))
        return QuantizerOutput(
            quantized=quantized, codes=jnp.stack(codes, axis=-1), loss=loss, metrics=metrics
        )

    def decode_codes(self, codes: Array) -> Array:
        """``int32 [..., n]`` (n <= L: the first n levels) -> ``[..., D]`` (sum of the level outputs)."""
        n = codes.shape[-1]
        if not 1 <= n <= self.num_levels:
            raise ValueError(
                f"codes.shape[-1]={n} must be in [1, {self.num_levels}] (levels of this ResidualVQ)"
            )
        out = None
        for l in range(n):
            q = self.levels[l].decode_codes(codes[..., l])
            out = q if out is None else out + q
        return out
