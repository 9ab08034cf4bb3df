"""TEAL: a decoder-only LM over the unified vocabulary, with a *joint embedding* around an (often frozen) text LM.

The text LM (``TransformerLM``) is a submodule named ``'lm'``, so its parameters sit at ``params['lm']`` in exactly
its own layout (an imported HF Llama drops in unchanged). Around it:

- input: text ids [0, text_size) use the LM's own embedding table; every other id uses the non-text table
  ``concat(special_embed, image rows, audio rows)`` (rows in unified-vocabulary order), chosen per token by a mask
  (LWM style). Padding ids embed to row 0 of the non-text table (they never occur in real data).
- image/audio rows, ``embedding_init='random'``: a learned table ``{m}_embed`` ~ N(0, init_std).
  ``embedding_init='codebook'``: rows = ``{m}_proj(codebook) + {m}_embed`` where ``{m}_codebook`` holds the
  tokenizer's code vectors (a constant, frozen in every stage), ``{m}_proj`` is a learned projection
  code_dim -> embed_dim and ``{m}_embed`` is a zero-initialised learned residual; at init the rows are exactly
  projection(codebook), and with training they may move away from the projection's span (the paper's ablation).
- input-only ids (``vocab.image_in_size`` / ``audio_in_size``: a semantic tokenizer on the condition side,
  docs/semantic_tokenizers.md): their own learned rows ``{m}_in_embed``. With ``model.{m}_in_dim > 0`` the input is
  continuous instead (the LLaVA / LLaMA-Adapter-style baseline TEAL compares against): the ids are span positions,
  row ``i`` is a learned position embedding, and ``{m}_in_proj(features)`` (a Dense ``in_dim -> embed_dim``) is
  added to it; the features come with the tokens (``features_image`` / ``features_audio`` ``[B, T, in_dim]``, zero
  elsewhere).
- output: logits over the whole unified vocabulary = concat(LM text head logits,
  h @ [special | image | audio] head, -inf for the input-only and padding ids). The text part is the LM's own
  ``logits_from_hidden``: for text-only inputs and an untouched LM, the text logits are bitwise those of the
  original LM.

Stage-2 bias tuning: build the inner LM with ``use_bias=True`` (zero-initialised biases on every linear layer), so
the model is unchanged until the biases train.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from teal_jax.models.transformer import TransformerConfig, TransformerLM
from teal_jax.vocab import SPAN_MODALITIES, UnifiedVocab

Array = jax.Array
EMBEDDING_INITS = ("random", "codebook")
STAGES = ("frozen_stage1", "frozen_stage2", "frozen_expert", "full")
NONTEXT_MODALITIES = SPAN_MODALITIES  # the modalities with their own rows, heads and span positions


@dataclasses.dataclass(frozen=True)
class TealConfig:
    """lm: the text LM (its vocab_size is the text range); vocab: the unified layout (vocab.text_size must equal
    lm.vocab_size); embedding_init: 'random' | 'codebook'; image_code_dim / audio_code_dim: width of the tokenizer
    code vectors (codebook init only)."""

    lm: TransformerConfig
    vocab: UnifiedVocab
    embedding_init: str = "random"
    image_code_dim: int = 0
    audio_code_dim: int = 0
    # Learned span positions: a per-position embedding added to the input of the i-th token of every image span
    # (i < image_span_len; = h*w) and audio span (i < audio_span_len; = frames * kept levels); 0 = none. RoPE only
    # tells the LM how far apart two tokens are, not where in the 2-D grid / the clip a code sits.
    image_span_len: int = 0
    audio_span_len: int = 0
    # Continuous input features (the baseline): width of the features at the input-only ids; 0 = token ids.
    image_in_dim: int = 0
    audio_in_dim: int = 0

    def __post_init__(self):
        if self.vocab.text_size != self.lm.vocab_size:
            raise ValueError(f"vocab.text_size={self.vocab.text_size} must equal the LM's "
                             f"lm.vocab_size={self.lm.vocab_size}")
        if self.embedding_init not in EMBEDDING_INITS:
            raise ValueError(f"model.embedding_init={self.embedding_init!r}: choose one of {EMBEDDING_INITS}")
        if self.image_span_len < 0 or self.audio_span_len < 0:
            raise ValueError("model.image_span_len / model.audio_span_len must be >= 0")
        for m in NONTEXT_MODALITIES:
            dim = getattr(self, f"{m}_in_dim")
            if dim < 0 or (dim and not self.in_rows(m)):
                raise ValueError(f"model.{m}_in_dim={dim} needs model.vocab.{m}_in_size > 0 (the span positions of "
                                 "the continuous features) and must be >= 0")
        if self.embedding_init == "codebook":
            for m in NONTEXT_MODALITIES:
                if self.rows(m) and getattr(self, f"{m}_code_dim") < 1:
                    raise ValueError(f"model.{m}_code_dim must be >= 1 with embedding_init='codebook'")

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> TealConfig:
        """The model of a TEAL run config: ``config.model.lm`` (TransformerConfig fields), ``config.model.vocab``
        (UnifiedVocab fields except text_size), the compute dtype from ``config.train``."""
        m = config.model
        if "lm" not in m or "vocab" not in m:
            raise ValueError("config.model needs an 'lm' sub-config (TransformerConfig fields) and a 'vocab' "
                             "sub-config (UnifiedVocab fields except text_size)")
        lm = TransformerConfig.from_config(m.lm, dtype=config.train.compute_dtype)
        vocab = UnifiedVocab.from_config(m.vocab, text_size=lm.vocab_size)
        return cls(lm=lm, vocab=vocab, embedding_init=m.get("embedding_init", "random"),
                   image_code_dim=int(m.get("image_code_dim", 0) or 0),
                   audio_code_dim=int(m.get("audio_code_dim", 0) or 0),
                   image_span_len=int(m.get("image_span_len", 0) or 0),
                   audio_span_len=int(m.get("audio_span_len", 0) or 0),
                   image_in_dim=int(m.get("image_in_dim", 0) or 0),
                   audio_in_dim=int(m.get("audio_in_dim", 0) or 0))

    def rows(self, modality: str) -> int:
        """Number of unified ids of a non-text modality ('special', 'image' or 'audio')."""
        v = self.vocab
        return {"special": v.num_specials, "image": v.image_codebook_size, "audio": v.audio_ids}[modality]

    def in_rows(self, modality: str) -> int:
        """Number of input-only ids of 'image' or 'audio' (0: the output tokenizer reads the condition too)."""
        return {"image": self.vocab.image_in_size, "audio": self.vocab.audio_in_size}[modality]


class TealLM(nn.Module):
    """Unified ids [B, T] -> logits [B, T, vocab.size] (float32; padding ids are -inf).

    ``decode=True`` builds the KV-cache variant (cache under ``cache['lm']``; same parameters).
    """

    config: TealConfig
    decode: bool = False

    def setup(self):
        cfg = self.config
        d, std = cfg.lm.embed_dim, cfg.lm.init_std
        pdt = cfg.lm.param_dtype
        normal = nn.initializers.normal(std)
        self.lm = TransformerLM(cfg.lm, self.decode)
        part = nn.with_logical_partitioning
        # Specials are few (tens): replicate their rows rather than shard a tiny axis.
        self.special_embed = self.param("special_embed", part(normal, (None, "embed")), (cfg.rows("special"), d),
                                        pdt)
        self.special_head = self.param("special_head", part(normal, ("embed", None)), (d, cfg.rows("special")),
                                       pdt)
        embeds, heads, codebooks, projs = {}, {}, {}, {}
        for m in NONTEXT_MODALITIES:
            n = cfg.rows(m)
            if not n:
                continue
            heads[m] = self.param(f"{m}_head", part(normal, ("embed", "vocab")), (d, n), pdt)
            if cfg.embedding_init == "codebook":
                c = getattr(cfg, f"{m}_code_dim")
                # Placeholder values: init_teal() writes the tokenizer's codebook here.
                codebooks[m] = self.param(f"{m}_codebook", part(nn.initializers.normal(1.0),
                                                                ("codebook", "code_dim")), (n, c), pdt)
                # fan-in scaling: projected rows have std ~ init_std * rms(code vectors).
                proj = nn.Dense(d, use_bias=True, param_dtype=pdt, dtype=jnp.float32,
                                kernel_init=part(nn.initializers.variance_scaling(std**2, "fan_in", "normal"),
                                                 ("code_dim", "embed")),
                                bias_init=part(nn.initializers.zeros, ("embed",)))
                setattr(self, f"{m}_proj", proj)  # linen names setup submodules after their attribute
                projs[m] = proj
                embeds[m] = self.param(f"{m}_embed", part(nn.initializers.zeros, ("vocab", "embed")), (n, d), pdt)
            else:
                embeds[m] = self.param(f"{m}_embed", part(normal, ("vocab", "embed")), (n, d), pdt)
        self.embeds, self.heads, self.codebooks, self.projs = embeds, heads, codebooks, projs
        in_embeds, in_projs = {}, {}
        for m in NONTEXT_MODALITIES:
            n = cfg.in_rows(m)
            if not n:
                continue
            in_embeds[m] = self.param(f"{m}_in_embed", part(normal, ("vocab", "embed")), (n, d), pdt)
            dim = getattr(cfg, f"{m}_in_dim")
            if dim:
                proj = nn.Dense(d, use_bias=True, param_dtype=pdt, dtype=jnp.float32,
                                kernel_init=part(nn.initializers.variance_scaling(std**2, "fan_in", "normal"),
                                                 (None, "embed")),
                                bias_init=part(nn.initializers.zeros, ("embed",)))
                setattr(self, f"{m}_in_proj", proj)
                in_projs[m] = proj
        self.in_embeds, self.in_projs = in_embeds, in_projs
        span_pos = {}
        for m in NONTEXT_MODALITIES:
            n = getattr(cfg, f"{m}_span_len")
            if n and cfg.rows(m):  # zero-initialised: the model is unchanged until they train
                span_pos[m] = self.param(f"{m}_span_pos", part(nn.initializers.zeros, (None, "embed")), (n, d), pdt)
        self.span_pos = span_pos

    # ---- joint embedding ---------------------------------------------------------------------------------------
    def nontext_rows(self, modality: str) -> Array:
        """float32 [rows, D]: the input embedding rows of 'image' or 'audio' (in unified-id order)."""
        rows = jnp.asarray(self.embeds[modality], jnp.float32)
        if modality in self.codebooks:
            rows = rows + self.projs[modality](jnp.asarray(self.codebooks[modality], jnp.float32))
        return rows

    def nontext_table(self) -> Array:
        """float32 [vocab.nontext_size, D]: specials, image rows, audio rows, input-only image rows, input-only audio
        rows."""
        parts = [jnp.asarray(self.special_embed, jnp.float32)]
        parts += [self.nontext_rows(m) for m in NONTEXT_MODALITIES if m in self.embeds]
        parts += [jnp.asarray(self.in_embeds[m], jnp.float32) for m in NONTEXT_MODALITIES if m in self.in_embeds]
        return jnp.concatenate(parts, axis=0)

    def embed(self, tokens: Array, span_index: Array | None = None, features_image: Array | None = None,
              features_audio: Array | None = None) -> Array:
        """tokens [B, T] unified ids -> [B, T, D] in the LM's compute dtype.

        span_index [B, T]: each token's index inside its image/audio span (see :func:`compute_span_index`);
        computed from ``tokens`` when None, which needs every span's opener inside ``tokens`` (one-token decode
        steps pass it). features_image / features_audio [B, T, in_dim]: the continuous inputs at the input-only ids
        (``model.{m}_in_dim > 0``; None = no such ids in ``tokens``, e.g. a decode step)."""
        v = self.config.vocab
        t = v.text_size
        is_text = tokens < t
        text = self.lm.embed(jnp.where(is_text, tokens, 0))
        table = self.nontext_table()
        other = jnp.take(table, jnp.clip(tokens - t, 0, table.shape[0] - 1), axis=0)
        if self.span_pos:
            if span_index is None:
                span_index = compute_span_index(v, tokens)
            for m, pos_table in self.span_pos.items():
                lo, hi = (v.image_offset, v.audio_offset) if m == "image" else (v.audio_offset, v.output_size)
                inside = (tokens >= lo) & (tokens < hi)
                if self.config.in_rows(m):  # the input-only ids of a span sit at the same span positions
                    in_lo, in_hi = v.input_range(m)
                    inside = inside | ((tokens >= in_lo) & (tokens < in_hi))
                rows = jnp.take(jnp.asarray(pos_table, jnp.float32),
                                jnp.clip(span_index, 0, pos_table.shape[0] - 1), axis=0)
                other = other + jnp.where(inside[..., None], rows, 0.0)
        for m, feats in (("image", features_image), ("audio", features_audio)):
            if m in self.in_projs and feats is None and self.is_initializing():
                self.in_projs[m](jnp.zeros((1, getattr(self.config, f"{m}_in_dim")), jnp.float32))  # its params
            if m in self.in_projs and feats is not None:
                lo, hi = v.input_range(m)
                inside = (tokens >= lo) & (tokens < hi)
                other = other + jnp.where(inside[..., None], self.in_projs[m](jnp.asarray(feats, jnp.float32)), 0.0)
        return jnp.where(is_text[..., None], text, other.astype(text.dtype))

    def expert_mask(self, tokens: Array) -> Array | None:
        """bool [B, T]: the positions the LM's modality experts serve (every non-text id), or None without
        experts. Text ids always run through the original weights."""
        lm = self.config.lm
        if not (lm.expert_attention or lm.expert_mlp):
            return None
        return tokens >= self.config.vocab.text_size

    # ---- output ------------------------------------------------------------------------------------------------
    def logits_from_hidden(self, h: Array) -> Array:
        """h [B, T, D] (after the final norm) -> float32 [B, T, vocab.size]."""
        v = self.config.vocab
        text = self.lm.logits_from_hidden(h)  # [B, T, text_size], the LM's own head
        head = jnp.concatenate([self.special_head] + [self.heads[m] for m in NONTEXT_MODALITIES if m in self.heads],
                               axis=1)
        dtype = jnp.dtype(self.config.lm.dtype)
        other = jnp.einsum("btd,dn->btn", h.astype(dtype), head.astype(dtype)).astype(jnp.float32)
        pad = jnp.full(h.shape[:2] + (v.size - v.output_size,), -jnp.inf, jnp.float32)  # input-only and padding
        return jnp.concatenate([text, other, pad], axis=-1)

    def __call__(self, tokens: Array, positions: Array | None = None, segment_ids: Array | None = None,
                 span_index: Array | None = None, features_image: Array | None = None,
                 features_audio: Array | None = None) -> Array:
        """tokens, positions, segment_ids, span_index: [B, T]; features_*: [B, T, in_dim] (see :meth:`embed`) ->
        logits [B, T, vocab.size]."""
        x = self.embed(tokens, span_index, features_image, features_audio)
        h = self.lm.hidden(x, positions, segment_ids, self.expert_mask(tokens))
        return self.logits_from_hidden(h)


def compute_span_index(vocab: UnifiedVocab, tokens: Array) -> Array:
    """int32 [B, T]: for a token inside an image/audio span, its index in the span (the first code after
    ``<boi>``/``<boa>`` is 0); 0 elsewhere. Spans must open inside ``tokens`` (rows may be packed: a span never
    crosses an example)."""
    t = tokens.shape[-1]
    ar = jnp.arange(t, dtype=jnp.int32)
    opener = (tokens == vocab.boi) | (tokens == vocab.boa)
    last_open = jax.lax.cummax(jnp.where(opener, ar, -1), axis=tokens.ndim - 1)
    in_span = (tokens >= vocab.image_offset) & (tokens < vocab.used_size) & (last_open >= 0)
    return jnp.where(in_span, ar - last_open - 1, 0).astype(jnp.int32)


# ---- init with tokenizer codebooks ---------------------------------------------------------------------------------
def codebook_array(config: TealConfig, modality: str, codebook: Any) -> np.ndarray:
    """Validates/reshapes a tokenizer codebook to the ``{modality}_codebook`` param shape [rows, code_dim].

    image: [K_img, C]. audio: [levels, K_audio, C] with levels >= the vocab's kept levels (the first are used), or
    already flat [kept_levels * K_audio, C].
    """
    a = np.asarray(codebook, np.float32)
    c = getattr(config, f"{modality}_code_dim")
    v = config.vocab
    if modality == "audio" and a.ndim == 3:
        if a.shape[0] < v.audio_levels_used or a.shape[1] != v.audio_codebook_size:
            raise ValueError(f"audio codebook shape {a.shape}: expected [>= {v.audio_levels_used} levels, "
                             f"{v.audio_codebook_size}, {c}]")
        a = a[: v.audio_levels_used].reshape(-1, a.shape[-1])
    want = (config.rows(modality), c)
    if a.shape != want:
        raise ValueError(f"{modality} codebook shape {a.shape} != expected {want} (rows, model.{modality}_code_dim)")
    if not np.isfinite(a).all():
        raise ValueError(f"{modality} codebook has non-finite values")
    return a


def init_teal(model: TealLM, rng: Array, tokens: Array, codebooks: Mapping[str, Any] | None = None) -> dict:
    """``model.init`` that writes the tokenizer codebooks (codebook init) into the ``{m}_codebook`` params.

    Returns the variables (boxed, with logical axis names) like ``model.init``. ``codebooks``: {'image': ...,
    'audio': ...} (see :func:`codebook_array`); required for each present modality when embedding_init='codebook'.
    """
    cfg = model.config
    if cfg.embedding_init != "codebook":
        if codebooks:
            raise ValueError("codebooks were given but model.embedding_init='random'")
        return model.init(rng, tokens)
    codebooks = dict(codebooks or {})
    values = {}
    for m in NONTEXT_MODALITIES:  # validate before the (possibly slow) init
        if not cfg.rows(m):
            continue
        if m not in codebooks:
            raise ValueError(f"embedding_init='codebook' needs the {m} tokenizer codebook (codebooks['{m}'])")
        values[m] = codebook_array(cfg, m, codebooks[m])
    variables = model.init(rng, tokens)
    params = dict(variables["params"])
    for m, value in values.items():
        value = jnp.asarray(value)
        box = params[f"{m}_codebook"]
        params[f"{m}_codebook"] = box.replace_boxed(value) if isinstance(box, nn.meta.AxisMetadata) else value
    return {**variables, "params": params}


# ---- stages ----------------------------------------------------------------------------------------------------
def _keys(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def is_norm_or_bias(keys: tuple[str, ...]) -> bool:
    """A bias (any linear layer) or the scale of a norm (attn_norm, mlp_norm, final_norm, q_norm, k_norm)."""
    return keys[-1] == "bias" or (keys[-1] == "scale" and len(keys) > 1 and keys[-2].endswith("norm"))


def is_expert(keys: tuple[str, ...]) -> bool:
    """A modality-expert weight inside the LM (``.../attn/expert_q_proj/...``, ``.../expert_mlp/...``)."""
    return any(k.startswith("expert_") for k in keys)


def expert_source(keys: tuple[str, ...]) -> tuple[str, ...]:
    """The original LM leaf an expert leaf is initialised from (``expert_q_proj`` -> ``q_proj``)."""
    return tuple(k[len("expert_"):] if k.startswith("expert_") else k for k in keys)


def trainable_mask(params: Any, stage: str) -> Any:
    """Tree of Python bools (True = trains) over TealLM ``params`` for a training stage.

    frozen_stage1: non-text tables, heads, projections and span positions train; the LM is frozen.
    frozen_stage2: stage 1 + every norm scale and every bias inside the LM (LLaMA-Adapter-V2 bias-norm tuning).
    frozen_expert: stage 1 + the LM's modality experts (``expert_*``: used only at non-text positions), so the
      text path is untouched. full: everything. Tokenizer codebooks (``*_codebook``) are constants: frozen in
      every stage.
    """
    if stage not in STAGES:
        raise ValueError(f"model.stage={stage!r}: choose one of {STAGES}")

    def rule(path, _):
        keys = _keys(path)
        if keys[0].endswith("_codebook"):
            return False
        if keys[0] != "lm":
            return True
        if stage == "full":
            return True
        if stage == "frozen_expert":
            return is_expert(keys)
        return stage == "frozen_stage2" and is_norm_or_bias(keys)

    return jax.tree_util.tree_map_with_path(rule, params)


def param_group(keys: tuple[str, ...]) -> str:
    """Report group of a parameter path."""
    if keys[0] == "lm":
        if is_expert(keys):
            return "lm/experts"
        if is_norm_or_bias(keys):
            return "lm/biases" if keys[-1] == "bias" else "lm/norms"
        if keys[1] == "embed":
            return "lm/embed"
        if keys[1] == "lm_head":
            return "lm/head"
        return "lm/layers"
    if keys[0].endswith("_codebook"):
        return "codebooks (constant)"
    return "nontext/" + keys[0].split("_")[0]


def _is_box(x) -> bool:
    return isinstance(x, nn.meta.AxisMetadata)


def _unbox(x):
    return x.unbox() if _is_box(x) else x


def merge_lm_params(teal_params: Any, lm_params: Any) -> Any:
    """Puts a trained LM's params at ``teal_params['lm']`` (boxed leaves keep their logical names).

    Every LM leaf must match in shape; leaves absent from ``lm_params`` are allowed only for zero-initialised
    biases (a base LM without biases adapted with use_bias=True) and for modality experts (``expert_*``), which
    start as copies of the weights they stand in for (CogVLM's initialisation); extra leaves are an error.
    """
    target = teal_params["lm"]
    flat_t = {_keys(p): _unbox(v) for p, v in jax.tree_util.tree_flatten_with_path(target, is_leaf=_is_box)[0]}
    flat_s = {_keys(p): _unbox(v) for p, v in jax.tree_util.tree_flatten_with_path(lm_params, is_leaf=_is_box)[0]}
    extra = sorted(set(flat_s) - set(flat_t))
    if extra:
        raise ValueError(f"base LM params have leaves the TEAL LM lacks: {['/'.join(k) for k in extra[:5]]} "
                         "(check model.lm matches the base LM's config)")
    missing = [k for k in flat_t if k not in flat_s and k[-1] != "bias" and not is_expert(k)]
    if missing:
        raise ValueError(f"base LM params lack {['/'.join(k) for k in missing[:5]]}")
    for k, v in flat_s.items():
        if tuple(np.shape(v)) != tuple(np.shape(flat_t[k])):
            raise ValueError(f"base LM param {'/'.join(k)} has shape {np.shape(v)}, the TEAL LM expects "
                             f"{np.shape(flat_t[k])} (check model.lm)")

    def pick(path, leaf):
        k = _keys(path)
        if k not in flat_s and is_expert(k) and expert_source(k) in flat_s:
            k = expert_source(k)  # a modality expert starts as a copy of the weight it stands in for
        if k not in flat_s:
            return leaf
        value = jnp.asarray(flat_s[k], _unbox(leaf).dtype)
        return leaf.replace_boxed(value) if _is_box(leaf) else value

    return {**teal_params, "lm": jax.tree_util.tree_map_with_path(pick, target, is_leaf=_is_box)}


def merge_nontext_params(teal_params: Any, loaded: Any) -> Any:
    """Takes every non-LM parameter (tables, heads, projections, codebooks) from ``loaded`` (a TEAL checkpoint's
    params, e.g. stage 1's when stage 2 starts); shapes must match."""
    out = dict(teal_params)
    for key, target in teal_params.items():
        if key == "lm":
            continue
        if key not in loaded:
            raise ValueError(f"the TEAL checkpoint lacks parameter {key!r} (was it trained with another "
                             "model.vocab / model.embedding_init?)")
        flat_t = jax.tree_util.tree_flatten_with_path(target, is_leaf=_is_box)[0]
        flat_s = jax.tree.leaves(loaded[key], is_leaf=_is_box)
        if len(flat_t) != len(flat_s):
            raise ValueError(f"TEAL checkpoint parameter {key!r} has another structure")
        leaves = []
        for (path, t), s in zip(flat_t, flat_s, strict=True):
            s = _unbox(s)
            if tuple(np.shape(s)) != tuple(_unbox(t).shape):
                raise ValueError(f"TEAL checkpoint parameter {key}/{'/'.join(_keys(path))} has shape "
                                 f"{np.shape(s)}, expected {_unbox(t).shape}")
            value = jnp.asarray(s, _unbox(t).dtype)
            leaves.append(t.replace_boxed(value) if _is_box(t) else value)
        out[key] = jax.tree.unflatten(jax.tree.structure(target, is_leaf=_is_box), leaves)
    return out
