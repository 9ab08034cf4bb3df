"""LoRA (Hu et al. 2021) for the Llama-family LM, as a parameter-tree option: no module is edited.

A targeted linear layer with kernel ``W`` (``[in..., out...]``) gets two factors next to its kernel,
``lora_a [in..., r]`` and ``lora_b [r, out...]``, and computes

    y = x W + (alpha / r) * (dropout(x) A) B          (PEFT's convention: scaling = lora_alpha / r)

``A`` starts uniform in +-1/sqrt(fan_in) (PEFT's kaiming-uniform with a=sqrt(5)), ``B`` at zero, so a fresh adapter
leaves the model unchanged. The factors live in the parameter tree beside the kernel they adapt
(``layers/attn/q_proj/{kernel, lora_a, lora_b}``); under ``nn.scan`` they carry the leading 'layers' axis like the
kernel, so each layer has its own pair.

Forward: :func:`apply` runs ``model.apply`` under ``nn.intercept_methods``: a call of a ``Projection`` or
``nn.Dense`` whose scope holds ``lora_a`` adds the low-rank term to the layer's output. A scope without factors, or a
config with rank 0, runs the module unchanged (the interceptor is not even installed at rank 0). Inference never needs
the interceptor: :func:`merge` folds ``W + (alpha/r) A B`` into the kernel and drops the factors; :func:`unmerge`
subtracts it again (for export of the adapter from merged weights).

Targets: ``config.model.lora.targets`` is a regular expression searched in each kernel's module path, relative to the
language model (``layers/attn/q_proj``, ``layers/mlp/down_proj``, ``lm_head``; inside TEAL the same paths under
``params['lm']``). Embedding tables are never targets.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from teal_jax.models.transformer import Projection

LORA_FIELDS = {"rank": int, "alpha": float, "targets": str, "dropout": float}
ADAPTER_LEAVES = ("lora_a", "lora_b")
_RNG_LEAF = "lora_rng"  # per-call dropout keys, inserted next to the factors (never stored)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank 0 = off. alpha: the scale numerator (scaling = alpha / rank; 0 means alpha = rank, scaling 1).
    targets: regex over module paths (see the module docstring). dropout: on the adapter's input, training only."""

    rank: int = 0
    alpha: float = 0.0
    targets: str = r"attn/(q|v)_proj"
    dropout: float = 0.0

    def __post_init__(self):
        if self.rank < 0:
            raise ValueError(f"config.model.lora.rank={self.rank} must be >= 0 (0: LoRA off)")
        if self.alpha < 0:
            raise ValueError(f"config.model.lora.alpha={self.alpha} must be >= 0 (0: alpha = rank)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"config.model.lora.dropout={self.dropout} must be in [0, 1)")
        try:
            re.compile(self.targets)
        except re.error as e:
            raise ValueError(f"config.model.lora.targets={self.targets!r} is not a regular expression ({e})") from e

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return (self.alpha or self.rank) / self.rank if self.rank else 0.0

    @classmethod
    def from_config(cls, model_config: ml_collections.ConfigDict | Mapping[str, Any] | None) -> LoraConfig:
        """From ``config.model`` (reads its optional ``lora`` section; absent or rank 0 = off)."""
        section = (model_config or {}).get("lora") if model_config is not None else None
        if not section:
            return cls()
        d = section.to_dict() if isinstance(section, ml_collections.ConfigDict) else dict(section)
        for key, value in d.items():
            if key not in LORA_FIELDS:
                raise ValueError(f"config.model.lora.{key}: unknown field; known fields: {sorted(LORA_FIELDS)}")
            want = LORA_FIELDS[key]
            ok = isinstance(value, want) and not isinstance(value, bool)
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if not ok:
                raise ValueError(f"config.model.lora.{key}={value!r} has type {type(value).__name__}, "
                                 f"expected {want.__name__}")
        return cls(**{k: (float(v) if LORA_FIELDS[k] is float else v) for k, v in d.items()})


# ---- layout of a targeted kernel ---------------------------------------------------------------------------------
def _keys(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def kernel_layout(module: str) -> tuple[int, int]:
    """(input axes, output axes) of the kernel of a module named ``module`` in ``TransformerLM``: the attention
    output projection contracts (heads, head_dim); q/k/v produce (heads, head_dim); every other Dense is 1 -> 1."""
    name = module.removeprefix("expert_")
    if name == "o_proj":
        return 2, 1
    if name in ("q_proj", "k_proj", "v_proj"):
        return 1, 2
    return 1, 1


def _unbox(x):
    return x.unbox() if isinstance(x, nn.meta.AxisMetadata) else x


def _is_box(x) -> bool:
    return isinstance(x, nn.meta.AxisMetadata)


def target_paths(params: Any, cfg: LoraConfig) -> list[tuple[str, ...]]:
    """Module paths (key tuples, relative to the LM's params) of every kernel ``cfg.targets`` selects."""
    pattern = re.compile(cfg.targets)
    found = []
    for path, _ in jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_box)[0]:
        keys = _keys(path)
        if keys[-1] == "kernel" and pattern.search("/".join(keys[:-1])):
            found.append(keys[:-1])
    return found


def _candidates(params: Any) -> list[str]:
    return sorted({"/".join(_keys(p)[:-1]) for p, _ in jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_box)[0]
                   if _keys(p)[-1] == "kernel"})


def _get(tree: Mapping, keys: tuple[str, ...]) -> Any:
    for k in keys:
        tree = tree[k]
    return tree


def _set(tree: Mapping, keys: tuple[str, ...], update: Mapping[str, Any]) -> dict:
    """A copy of ``tree`` with the dict at ``keys`` updated by ``update`` (values None are removed)."""
    tree = dict(tree)
    if not keys:
        tree.update(update)
        return {k: v for k, v in tree.items() if v is not None}
    tree[keys[0]] = _set(tree[keys[0]], keys[1:], update)
    return tree


def has_adapters(params: Any) -> bool:
    return any(_keys(p)[-1] == "lora_a" for p, _ in jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_box)[0])


def is_adapter(keys: tuple[str, ...]) -> bool:
    return keys[-1] in ADAPTER_LEAVES


# ---- init --------------------------------------------------------------------------------------------------------
def init_adapters(params: Any, cfg: LoraConfig, rng: jax.Array) -> Any:
    """Adds ``lora_a``/``lora_b`` beside every targeted kernel of the LM ``params`` (boxed or not; boxed kernels
    give the factors matching logical names, the rank axis replicated). Rank 0 returns ``params`` unchanged."""
    if not cfg.enabled:
        return params
    if has_adapters(params):
        raise ValueError("the LM params already hold LoRA factors (lora_a/lora_b)")
    targets = target_paths(params, cfg)
    if not targets:
        raise ValueError(f"config.model.lora.targets={cfg.targets!r} selects no kernel; module paths are: "
                         + ", ".join(_candidates(params)))
    out = params
    for i, keys in enumerate(targets):
        kernel = _get(params, keys)["kernel"]
        value = _unbox(kernel)
        n_in, n_out = kernel_layout(keys[-1])
        lead = value.ndim - n_in - n_out
        shape = tuple(value.shape)
        in_shape, out_shape = shape[lead:lead + n_in], shape[lead + n_in:]
        bound = 1.0 / math.sqrt(float(np.prod(in_shape)))
        a = jax.random.uniform(jax.random.fold_in(rng, i), shape[:lead] + in_shape + (cfg.rank,), value.dtype,
                               -bound, bound)
        b = jnp.zeros(shape[:lead] + (cfg.rank,) + out_shape, value.dtype)
        if _is_box(kernel):
            names = tuple(kernel.names)
            a = kernel.replace_boxed(a).replace(names=names[:lead + n_in] + (None,))
            b = kernel.replace_boxed(b).replace(names=names[:lead] + (None,) + names[lead + n_in:])
        out = _set(out, keys, {"lora_a": a, "lora_b": b})
    return out


def adapter_mask(params: Any) -> Any:
    """Tree of bools: True on the LoRA factors, False on everything else."""
    return jax.tree_util.tree_map_with_path(lambda p, _: is_adapter(_keys(p)), params, is_leaf=_is_box)


def trainable_mask(params: Any, base_mask: Any, lm_path: tuple[str, ...] = ()) -> Any:
    """``base_mask`` (the objective's own tree of bools) with LoRA on: the factors train; the LM's own weights
    (everything under ``lm_path`` except modality experts ``expert_*``, which are not base weights) are frozen, so
    they stay bit-identical; leaves outside the LM keep ``base_mask`` (TEAL's non-text rows and heads)."""
    n = len(lm_path)

    def rule(path, train):
        keys = _keys(path)
        if is_adapter(keys):
            return True
        if keys[:n] == lm_path and not any(k.startswith("expert_") for k in keys[n:]):
            return False
        return bool(train)

    return jax.tree_util.tree_map_with_path(rule, base_mask)


# ---- forward -----------------------------------------------------------------------------------------------------
def _interceptor(cfg: LoraConfig, dropout: bool):
    scale = cfg.scale

    def intercept(next_fun, args, kwargs, context):
        m = context.module
        if (context.method_name != "__call__" or not isinstance(m, Projection | nn.Dense)
                or not m.has_variable("params", "lora_a")):
            return next_fun(*args, **kwargs)
        y = next_fun(*args, **kwargs)
        x = args[0]
        a = m.get_variable("params", "lora_a")
        b = m.get_variable("params", "lora_b")
        n_in = getattr(m, "contract", 1)
        dtype = y.dtype
        if dropout and m.has_variable("params", _RNG_LEAF):
            key = jax.random.wrap_key_data(m.get_variable("params", _RNG_LEAF))
            keep = jax.random.bernoulli(key, 1.0 - cfg.dropout, x.shape)
            x = jnp.where(keep, x / (1.0 - cfg.dropout), 0).astype(x.dtype)
        xa = jax.lax.dot_general(x.astype(dtype), a.astype(dtype),
                                 ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ())))
        delta = jax.lax.dot_general(xa, b.astype(dtype), (((xa.ndim - 1,), (0,)), ((), ())))
        return y + (scale * delta).astype(dtype)

    return intercept


def _with_dropout_keys(params: Any, rng: jax.Array, prefix: tuple[str, ...]) -> Any:
    """Inserts a dropout key (raw key data) beside every ``lora_a`` under ``prefix``: one key per layer for scanned
    kernels (the key leaf carries the same leading axes, so ``nn.scan`` hands each layer its own)."""
    sub = _get(params, prefix)
    found = [(_keys(p)[:-1], v) for p, v in jax.tree_util.tree_flatten_with_path(sub)[0] if _keys(p)[-1] == "lora_a"]
    for i, (keys, a) in enumerate(found):
        n_in, _ = kernel_layout(keys[-1])
        lead = a.shape[:a.ndim - n_in - 1]
        key = jax.random.fold_in(rng, i)
        keys_data = jax.random.key_data(jax.random.split(key, int(np.prod(lead))) if lead else key)
        sub = _set(sub, keys, {_RNG_LEAF: keys_data.reshape(lead + keys_data.shape[-1:])})
    return _set(params, prefix[:-1], {prefix[-1]: sub}) if prefix else sub


def apply(model: nn.Module, cfg: LoraConfig, variables: Mapping[str, Any], *args, rng: jax.Array | None = None,
          lm_path: tuple[str, ...] = (), **kwargs) -> Any:
    """``model.apply(variables, *args, **kwargs)`` with the LoRA factors in ``variables['params']`` applied.

    ``rng``: dropout keys (training); None or ``cfg.dropout == 0`` runs without dropout. ``lm_path``: where the LM's
    params sit inside ``variables['params']`` (``('lm',)`` for TEAL). Rank 0: a plain ``model.apply``.
    """
    if not cfg.enabled:
        return model.apply(variables, *args, **kwargs)
    dropout = bool(cfg.dropout) and rng is not None
    if dropout:
        variables = {**variables, "params": _with_dropout_keys(variables["params"], rng, lm_path)}
    with nn.intercept_methods(_interceptor(cfg, dropout)):
        return model.apply(variables, *args, **kwargs)


# ---- merge / unmerge ---------------------------------------------------------------------------------------------
def _delta(keys: tuple[str, ...], a, b, shape, scale: float, xp):
    n_in, _ = kernel_layout(keys[-1])
    lead = a.ndim - n_in - 1
    r = a.shape[-1]
    a2 = a.reshape(a.shape[:lead] + (-1, r))
    b2 = b.reshape(b.shape[:lead] + (r, -1))
    return (scale * xp.matmul(a2, b2)).reshape(shape)


def _fold(params: Any, cfg: LoraConfig, sign: float, keep: bool) -> Any:
    if not cfg.enabled:
        raise ValueError("LoRA merge/unmerge needs config.model.lora.rank > 0")
    params = nn.unbox(params)
    found = [_keys(p)[:-1] for p, _ in jax.tree_util.tree_flatten_with_path(params)[0] if _keys(p)[-1] == "lora_a"]
    out = params
    for keys in found:
        node = _get(params, keys)
        kernel, a, b = node["kernel"], node["lora_a"], node["lora_b"]
        if a.shape[-1] != cfg.rank:
            raise ValueError(f"{'/'.join(keys)}/lora_a has rank {a.shape[-1]}, config.model.lora.rank={cfg.rank}")
        xp = np if isinstance(kernel, np.ndarray) else jnp
        f32 = (xp.asarray(kernel, np.float32) + sign * _delta(keys, xp.asarray(a, np.float32),
                                                              xp.asarray(b, np.float32), kernel.shape, cfg.scale, xp))
        update = {"kernel": f32.astype(kernel.dtype)}
        if not keep:
            update.update(lora_a=None, lora_b=None)
        out = _set(out, keys, update)
    return out


def merge(params: Any, cfg: LoraConfig) -> Any:
    """LM params with factors -> plain LM params: each adapted kernel becomes ``W + (alpha/r) A B`` (float32
    arithmetic, cast back to the kernel's dtype); the factors are dropped. Params without factors pass through."""
    if not has_adapters(params):
        return params
    if not cfg.enabled:
        raise ValueError("the LM params hold LoRA factors (lora_a/lora_b) but config.model.lora.rank is 0 or absent: "
                         "give the run's config (its model.lora) so they can be merged")
    return _fold(params, cfg, 1.0, keep=False)


def unmerge(merged: Any, adapters: Any, cfg: LoraConfig) -> Any:
    """The inverse of :func:`merge`: ``merged`` LM params plus the factor tree ``adapters`` (as :func:`split`
    returns) -> params with base kernels ``W' - (alpha/r) A B`` and the factors attached again."""
    return _fold(join(merged, adapters), cfg, -1.0, keep=True)


def split(params: Any) -> tuple[Any, Any]:
    """(base params without factors, a tree holding only the factors at their module paths)."""
    params = nn.unbox(params)
    flat = [(_keys(p), v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]]
    base, adapters = {}, {}
    for keys, v in flat:
        target = adapters if is_adapter(keys) else base
        node = target
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = v
    return base, adapters


def join(base: Any, adapters: Any) -> Any:
    """Puts the factor tree ``adapters`` beside the kernels of ``base`` (every adapted module must exist)."""
    out = base
    for p, _ in jax.tree_util.tree_flatten_with_path(adapters)[0]:
        keys = _keys(p)
        if keys[-1] != "lora_a":
            continue
        try:
            node = _get(base, keys[:-1])
        except (KeyError, TypeError):
            node = None
        if not isinstance(node, Mapping) or "kernel" not in node:
            raise ValueError(f"LoRA factors for {'/'.join(keys[:-1])}, which has no kernel in the LM params")
        ad = _get(adapters, keys[:-1])
        out = _set(out, keys[:-1], {"lora_a": ad["lora_a"], "lora_b": ad["lora_b"]})
    return out
