"""Decoder-only Llama-family language model (pure Flax linen, no I/O).

Blocks: pre-RMSNorm -> grouped-query attention with RoPE (optional QK-norm) -> residual -> pre-RMSNorm -> SwiGLU MLP
-> residual. Layers are stacked with ``nn.scan`` (parameters get a leading 'layers' axis), optionally rematerialised
with a policy chosen by name. Parameters are fp32 and carry logical axis names; compute runs in ``config.dtype``.

Packed sequences: ``segment_ids`` (0 = padding) keep documents from attending to each other and ``positions`` restart
per document; attention keeps ``is_causal=True`` (the kernel skips the upper triangle) and adds only the
same-document mask. The same mask mechanism drives incremental decoding: the KV cache stores each key's segment id, so
left-padded prompts in a batch never attend to their padding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn
from jax.ad_checkpoint import checkpoint_name

Array = jax.Array

# Activations named inside a block (jax.ad_checkpoint.checkpoint_name) for the policies that save them: the two
# norm outputs (inputs of the q/k/v and gate/up matmuls) and the attention kernel's output (before o_proj).
SAVED_NAMES = ("attn_norm", "mlp_norm", "attn_ctx")

REMAT_POLICIES = {
    "none": None,  # no remat: keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute everything in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,  # keep matmul outputs, recompute elementwise ops
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,  # keep weight matmuls only
    # weight matmuls plus the named norm and attention outputs (more memory, less recomputation than dots_no_batch)
    "dots_no_batch_names": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
        jax.checkpoint_policies.save_only_these_names(*SAVED_NAMES)),
}


# The one list of the LM's fields, in two parts: those that change what the weights compute (two configs that agree
# on them hold interchangeable weights), and those a run may choose freely (kernel, memory policy, cache length).
ARCHITECTURE_FIELDS = ("vocab_size", "embed_dim", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
                       "rope_theta", "norm_eps", "qk_norm", "tie_embeddings")
RUNTIME_FIELDS = ("attention_impl", "remat_policy", "max_decode_len")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int
    embed_dim: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    qk_norm: bool = False  # Chameleon-style RMSNorm on queries and keys (per head)
    tie_embeddings: bool = False
    use_bias: bool = False  # a zero-initialised bias on every linear layer (TEAL stage-2 bias tuning)
    # Modality experts (CogVLM's visual expert): positions flagged by ``expert_mask`` (TEAL: every non-text token)
    # run through their own q/k/v/o projections (``expert_attention``) and their own SwiGLU (``expert_mlp``), created
    # as ``expert_<name>`` beside the originals; unflagged positions use the original weights, selected per token.
    expert_attention: bool = False
    expert_mlp: bool = False
    init_std: float = 0.02
    dtype: str = "bfloat16"  # compute dtype
    param_dtype: str = "float32"
    attention_impl: str = "xla"  # 'xla' | 'cudnn' | 'auto' (let JAX choose)
    remat_policy: str = "none"
    max_decode_len: int = 2048  # KV-cache length in decode mode
    scan_unroll: int = 1  # layers per iteration of the layer scan (num_layers: a straight-line stack)

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model.num_heads={self.num_heads} must be a multiple of model.num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"model.head_dim={self.head_dim} must be even for rotary embeddings")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"model.remat_policy={self.remat_policy!r}: choose one of {sorted(REMAT_POLICIES)}")
        if self.scan_unroll < 1:
            raise ValueError(f"model.scan_unroll={self.scan_unroll} must be >= 1 (1: a rolled layer scan)")
        if self.attention_impl not in ("xla", "cudnn", "auto"):
            raise ValueError(f"model.attention_impl={self.attention_impl!r}: choose 'xla', 'cudnn' or 'auto'")

    @property
    def attention_implementation(self) -> str:
        """'auto' picks cuDNN's fused flash attention on NVIDIA GPUs with 16-bit compute (3x the XLA path for the
        1.1B config on an H100: benchmarks/README.md), XLA elsewhere."""
        if self.attention_impl != "auto":
            return self.attention_impl
        if jax.default_backend() == "gpu" and self.dtype in ("bfloat16", "float16"):
            return "cudnn"
        return "xla"

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict | Mapping[str, Any], **overrides) -> TransformerConfig:
        """Builds from a ConfigDict, ignoring keys that are not model fields (e.g. a config's `kind`)."""
        d = dict(cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else cfg)
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw.update(overrides)
        return cls(**kw)

    def check_same_architecture(self, other: TransformerConfig, source: str) -> None:
        """ValueError naming ``source`` and every differing ARCHITECTURE_FIELDS entry when ``other`` (the weights
        at ``source``) cannot stand in for this config's."""
        diff = [f"{f}: base {getattr(other, f)!r} vs config.model.lm {getattr(self, f)!r}"
                for f in ARCHITECTURE_FIELDS if getattr(other, f) != getattr(self, f)]
        if diff:
            raise ValueError(f"the base LM at {source} does not match config.model.lm: " + "; ".join(diff))

    @property
    def num_params(self) -> int:
        """Parameter count (embeddings included)."""
        d, h, kv, hd, m, v, L = (self.embed_dim, self.num_heads, self.num_kv_heads, self.head_dim, self.mlp_dim,
                                 self.vocab_size, self.num_layers)
        attn = d * hd * (h + 2 * kv) + h * hd * d
        mlp = 3 * d * m
        norms = 2 * d + (2 * hd if self.qk_norm else 0)
        bias = (hd * (h + 2 * kv) + d + 2 * m + d) if self.use_bias else 0
        head = 0 if self.tie_embeddings else d * v
        experts = 0
        if self.expert_attention:
            experts += attn + ((hd * (h + 2 * kv) + d) if self.use_bias else 0)
        if self.expert_mlp:
            experts += mlp + ((2 * m + d) if self.use_bias else 0)
        return v * d + L * (attn + mlp + norms + bias + experts) + d + head

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 * (non-embedding matmul params) + attention scores.

        6N counts forward (2N) and backward (4N) multiply-adds of every weight matmul (the output head included,
        the input embedding lookup excluded). Attention adds 12 * layers * seq_len * heads * head_dim
        (QK^T and AV, forward + backward), counted over the full causal square as is customary (PaLM appendix B).
        """
        n = self.num_params - self.vocab_size * self.embed_dim
        if self.tie_embeddings:  # the tied table still does the output matmul
            n += self.vocab_size * self.embed_dim
        return 6.0 * n + 12.0 * self.num_layers * seq_len * self.num_heads * self.head_dim


def _dense_init(std: float, names: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(std), names)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * scale, computed in float32 (as Llama does) then cast back."""

    eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)), (x.shape[-1],),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * scale.astype(jnp.float32)).astype(self.dtype)


def rotary_embedding(x: Array, positions: Array, theta: float) -> Array:
    """Applies RoPE in the 'rotate half' layout used by HF Llama.

    x: [batch, length, heads, head_dim]; positions: [batch, length]. Pairs (i, i + head_dim/2) rotate by
    angle position * theta^(-2i/head_dim); computed in float32.
    """
    hd = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, hd/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., : hd // 2], x32[..., hd // 2 :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


class Projection(nn.Module):
    """A linear map contracting the last ``contract`` input axes into ``features`` (kernel axes named by ``axes``).

    Written out instead of nn.DenseGeneral, whose flat-then-reshape kernel init breaks logical sharding metadata.
    """

    features: tuple[int, ...]
    axes: tuple[str, ...]
    config: TransformerConfig
    contract: int = 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        in_shape = x.shape[-self.contract:]
        kernel = self.param("kernel", _dense_init(cfg.init_std, self.axes), in_shape + self.features,
                            cfg.param_dtype)
        dtype = jnp.dtype(cfg.dtype)
        y = jax.lax.dot_general(x.astype(dtype), kernel.astype(dtype),
                                ((tuple(range(x.ndim - self.contract, x.ndim)), tuple(range(self.contract))),
                                 ((), ())))
        if cfg.use_bias:
            bias_axes = self.axes[self.contract:]
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, bias_axes),
                              self.features, cfg.param_dtype)
            y = y + bias.astype(dtype)
        return y


class Attention(nn.Module):
    config: TransformerConfig
    decode: bool = False

    @nn.compact
    def __call__(self, x: Array, positions: Array, segment_ids: Array | None,
                 expert_mask: Array | None = None) -> Array:
        """x: [B, T, D]; positions, segment_ids: [B, T] (segment_ids None: one document per row) -> [B, T, D].

        expert_mask: bool [B, T] (only with ``expert_attention``): True positions take q/k/v/o from the
        ``expert_*`` projections, the others from the original ones (a per-token select, so unflagged positions get
        exactly the original values).
        """
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        experts = cfg.expert_attention and expert_mask is not None

        def routed(name, features, axes, inp, contract=1):
            y = Projection(features, axes, cfg, contract=contract, name=name)(inp)
            if not experts:
                return y
            ye = Projection(features, axes, cfg, contract=contract, name=f"expert_{name}")(inp)
            sel = expert_mask.reshape(expert_mask.shape + (1,) * (y.ndim - 2))
            return jnp.where(sel, ye, y)

        def proj(name, heads, axes):
            return routed(name, (heads, cfg.head_dim), ("embed", axes, "head_dim"), x)

        q = proj("q_proj", cfg.num_heads, "heads")
        k = proj("k_proj", cfg.num_kv_heads, "kv_heads")
        v = proj("v_proj", cfg.num_kv_heads, "kv_heads")
        if cfg.qk_norm:
            q = RMSNorm(cfg.norm_eps, dtype, cfg.param_dtype, "head_dim", name="q_norm")(q)
            k = RMSNorm(cfg.norm_eps, dtype, cfg.param_dtype, "head_dim", name="k_norm")(k)
        q = rotary_embedding(q, positions, cfg.rope_theta)
        k = rotary_embedding(k, positions, cfg.rope_theta)

        b, t = x.shape[:2]
        dtype_args = (q.astype(dtype), k.astype(dtype), v.astype(dtype))
        impl = cfg.attention_implementation
        if not self.decode:
            # Causality stays in the kernel (cuDNN skips the blocks above the diagonal); packed rows add the
            # same-document mask on top (segment 0, padding, only meets padding). jax.nn.dot_product_attention has
            # no segment-id argument: cuDNN gets the mask as a [B, 1, T, T] bias next to its causal mask type.
            mask = None if segment_ids is None else (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
            out = jax.nn.dot_product_attention(*dtype_args, mask=mask, is_causal=True, implementation=impl)
        else:
            # Write this chunk's keys/values (and segment ids) at cache_index; attend to everything written.
            shape = (b, cfg.max_decode_len, cfg.num_kv_heads, cfg.head_dim)
            ck = self.variable("cache", "cached_key", jnp.zeros, shape, dtype)
            cv = self.variable("cache", "cached_value", jnp.zeros, shape, dtype)
            cs = self.variable("cache", "cached_segment", jnp.zeros, (b, cfg.max_decode_len), jnp.int32)
            ci = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
            idx = ci.value
            ck.value = jax.lax.dynamic_update_slice(ck.value, k.astype(dtype), (0, idx, 0, 0))
            cv.value = jax.lax.dynamic_update_slice(cv.value, v.astype(dtype), (0, idx, 0, 0))
            cs.value = jax.lax.dynamic_update_slice(cs.value, segment_ids.astype(jnp.int32), (0, idx))
            ci.value = idx + t
            # mask[b, 1, i, j]: cached key j is at or before query i (at idx + i), and both share a document.
            causal = (idx + jnp.arange(t))[:, None] >= jnp.arange(cfg.max_decode_len)[None, :]
            same_doc = segment_ids[:, :, None] == cs.value[:, None, :]
            mask = (causal[None] & same_doc)[:, None]
            # One-token queries (every step after the prompt) are a memory-bound matrix-vector product: plain XLA.
            out = jax.nn.dot_product_attention(q.astype(dtype), ck.value, cv.value, mask=mask,
                                               implementation="xla" if t == 1 else impl)
        out = checkpoint_name(out, "attn_ctx")
        return routed("o_proj", (cfg.embed_dim,), ("heads", "head_dim", "embed"), out, contract=2)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)

        def dense(name, features, axes):
            return nn.Dense(
                features, use_bias=cfg.use_bias, dtype=dtype, param_dtype=cfg.param_dtype,
                kernel_init=_dense_init(cfg.init_std, axes),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]), name=name,
            )

        h = nn.silu(dense("gate_proj", cfg.mlp_dim, ("embed", "mlp"))(x)) * dense("up_proj", cfg.mlp_dim,
                                                                                 ("embed", "mlp"))(x)
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        return dense("down_proj", cfg.embed_dim, ("mlp", "embed"))(h)


class Block(nn.Module):
    config: TransformerConfig
    decode: bool = False

    @nn.compact
    def __call__(self, x: Array, positions: Array, segment_ids: Array,
                 expert_mask: Array | None = None) -> tuple[Array, None]:
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        h = checkpoint_name(RMSNorm(cfg.norm_eps, dtype, cfg.param_dtype, name="attn_norm")(x), "attn_norm")
        x = x + Attention(cfg, self.decode, name="attn")(h, positions, segment_ids, expert_mask)
        h = checkpoint_name(RMSNorm(cfg.norm_eps, dtype, cfg.param_dtype, name="mlp_norm")(x), "mlp_norm")
        y = MLP(cfg, name="mlp")(h)
        if cfg.expert_mlp and expert_mask is not None:
            y = jnp.where(expert_mask[..., None], MLP(cfg, name="expert_mlp")(h), y)
        x = x + y
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return x, None  # (carry, per-layer output) for nn.scan


class TransformerLM(nn.Module):
    """tokens [B, T] -> logits [B, T, vocab] (float32).

    ``decode=True`` builds the KV-cache variant (same parameters): call it with the 'cache' collection mutable.
    TEAL-style wrappers use ``embed``, ``hidden`` and ``logits_from_hidden`` to feed their own embeddings.
    """

    config: TransformerConfig
    decode: bool = False

    def setup(self):
        cfg = self.config
        self.embedder = nn.Embed(
            cfg.vocab_size, cfg.embed_dim, dtype=jnp.dtype(cfg.dtype), param_dtype=cfg.param_dtype,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), ("vocab", "embed")),
            name="embed",
        )
        block = Block
        policy = REMAT_POLICIES[cfg.remat_policy]
        if cfg.remat_policy != "none":
            block = nn.remat(Block, prevent_cse=False, policy=policy)
        self.layers = nn.scan(
            block,
            variable_axes={"params": 0, "cache": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
            length=cfg.num_layers,
            unroll=cfg.scan_unroll,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(cfg, self.decode, name="layers")
        self.final_norm = RMSNorm(cfg.norm_eps, jnp.dtype(cfg.dtype), cfg.param_dtype, name="final_norm")
        if not cfg.tie_embeddings:
            self.lm_head = nn.Dense(
                cfg.vocab_size, use_bias=False, dtype=jnp.dtype(cfg.dtype), param_dtype=cfg.param_dtype,
                kernel_init=_dense_init(cfg.init_std, ("embed", "vocab")), name="lm_head",
            )

    def embed(self, tokens: Array) -> Array:
        return self.embedder(tokens)

    def hidden(self, x: Array, positions: Array | None = None, segment_ids: Array | None = None,
               expert_mask: Array | None = None) -> Array:
        """Runs the blocks and the final norm over embeddings x: [B, T, D] -> [B, T, D].

        expert_mask: bool [B, T], the positions routed through the modality experts (configs with
        ``expert_attention`` / ``expert_mlp``); None: every position uses the original weights."""
        b, t = x.shape[:2]
        if segment_ids is None and self.decode:
            segment_ids = jnp.ones((b, t), jnp.int32)
        if positions is None:
            if self.decode:
                raise ValueError("decode mode needs explicit positions (the cache does not know them)")
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        x = nn.with_logical_constraint(x.astype(jnp.dtype(self.config.dtype)), ("batch", "length", "embed"))
        x, _ = self.layers(x, positions, segment_ids, expert_mask)
        return self.final_norm(x)

    def logits_from_hidden(self, h: Array) -> Array:
        if self.config.tie_embeddings:
            logits = self.embedder.attend(h)
        else:
            logits = self.lm_head(h)
        return logits.astype(jnp.float32)

    def __call__(self, tokens: Array, positions: Array | None = None, segment_ids: Array | None = None) -> Array:
        return self.logits_from_hidden(self.hidden(self.embed(tokens), positions, segment_ids))


# The leaves every TransformerLM module casts to the compute dtype before its first use (Projection, nn.Dense and
# nn.Embed do); RMSNorm scales ('scale') are used in float32 and stay as they are.
COMPUTE_CAST_LEAVES = ("kernel", "bias", "embedding")


def cast_for_compute(params: Any, config: TransformerConfig) -> Any:
    """``TransformerLM`` params (unboxed) with every matrix, bias and embedding table cast to ``config.dtype``.

    The model computes exactly the same with either tree (each of these leaves is cast to the compute dtype before
    its first use anyway); decoding casts once with this instead of once per generated token, so a bf16 decode step
    reads 2-byte weights. Norm scales stay float32 (RMSNorm multiplies in float32)."""
    dtype = jnp.dtype(config.dtype)

    def cast(path, leaf):
        names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        if names and names[-1] in COMPUTE_CAST_LEAVES and jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.astype(dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(cast, params)


def init_cache(model: TransformerLM, batch_size: int) -> Any:
    """A zeroed KV cache for ``model`` (which must have decode=True), without materialising parameters."""
    tokens = jnp.zeros((batch_size, 1), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, tokens))["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
