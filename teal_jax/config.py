"""Defaults and validation shared by every config (``configs/**.py`` build on ``base_config``).

A config is checked before any work starts: missing sections, unknown keys in the shared sections, and values of the
wrong type raise ``ValueError`` naming the field.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import ml_collections

_TRAIN_FIELDS = {
    "steps": int, "batch_size": int, "grad_accum": int, "log_every": int, "eval_every": int, "eval_batches": int,
    "checkpoint_every": int, "keep_checkpoints": int, "compute_dtype": str, "async_checkpoints": bool,
    "peak_flops_per_device": float, "per_device_batch_size": int, "loss_chunk_size": int,
}

OPTIMIZER_FIELDS = {
    "name": str, "lr": float, "warmup_steps": int, "decay": str, "end_lr_ratio": float, "b1": float, "b2": float,
    "eps": float, "weight_decay": float, "clip_norm": float,
}


def default_optimizer_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        name="adamw", lr=3e-4, warmup_steps=100, decay="cosine", end_lr_ratio=0.1, b1=0.9, b2=0.95, eps=1e-8,
        weight_decay=0.1, clip_norm=1.0,
    ))


def lora_defaults() -> ml_collections.ConfigDict:
    """``config.model.lora``: LoRA on the language model (rank 0 = off; teal_jax/models/lora.py, docs/lora.md).
    Every config carries it so ``--config.model.lora.rank=8`` works on the command line."""
    return ml_collections.ConfigDict(dict(rank=0, alpha=0.0, targets=r"attn/(q|v)_proj", dropout=0.0))


LORA_OBJECTIVES = ("lm", "teal")  # the objectives that train a language model LoRA can adapt


SMOKE = "smoke"  # the one name of every config's tiny variant (a few steps, tiny shapes: what tests and CI run)


class Variants(frozenset):
    """The flags of a ``--config=path.py:a,b,key=value`` argument; ``values`` holds the ``key=value`` parts."""

    values: dict[str, str]


def parse_variants(arg: str | None, known: Iterable[str], *, config: str, keyed: Iterable[str] = (),
                   exclusive: Iterable[Iterable[str]] = ()) -> Variants:
    """Parses a config argument: comma-separated flags from ``known`` plus ``key=value`` parts for ``keyed`` keys.

    Every config's ``get_config(arg)`` calls this, so an unknown variant is always an error naming the config, the
    variant, the closest known one and the full list; a key given twice, an empty value, or two flags of one
    ``exclusive`` group are errors too.
    """
    known, keyed = tuple(known), tuple(keyed)
    flags, values = set(), {}
    for part in (p.strip() for p in (arg or "").split(",")):
        if not part:
            continue
        key, eq, value = part.partition("=")
        if eq:
            if key not in keyed:
                raise ValueError(f"{config}: unknown variant key {key!r} in {part!r}; "
                                 f"keys: {', '.join(keyed) or 'none'}")
            if not value or key in values:
                raise ValueError(f"{config}: give one non-empty {key}=VALUE, got {arg!r}")
            values[key] = value
            continue
        if part not in known:
            close = difflib.get_close_matches(part, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{config}: unknown variant {part!r}{hint} known: {', '.join(sorted(known))}"
                             + (f" and {', '.join(k + '=...' for k in keyed)}" if keyed else ""))
        flags.add(part)
    for group in exclusive:
        chosen = sorted(flags & set(group))
        if len(chosen) > 1:
            raise ValueError(f"{config}: variants {chosen} exclude each other; pick one")
    out = Variants(flags)
    out.values = values
    return out


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.objective = "lm"
    c.seed = 0
    c.model = ml_collections.ConfigDict(dict(lora=lora_defaults()))
    c.data = ml_collections.ConfigDict()
    c.train = ml_collections.ConfigDict(dict(
        steps=1000, batch_size=8, grad_accum=1, log_every=10, eval_every=500, eval_batches=4,
        checkpoint_every=500, keep_checkpoints=3, compute_dtype="bfloat16", async_checkpoints=True,
        peak_flops_per_device=0.0,  # 0: look the device kind up in teal_jax.train.metrics.PEAK_FLOPS
        per_device_batch_size=0,  # > 0: the global batch is this x the mesh's batch shards (batch_size is set)
        loss_chunk_size=0,  # > 0: cross-entropy over this many positions at a time (no full [B, T, V] logits)
    ))
    c.optimizer = default_optimizer_config()
    c.optimizers = ml_collections.ConfigDict()  # per-group overrides, e.g. c.optimizers.disc = {'lr': 1e-4}
    # shape: the mesh (or, with dcn_shape, its fast part inside one TPU slice or host); dcn_shape: the factor per axis
    # across slices or hosts (MaxText's dcn axes; docs/launch.md)
    c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1), dcn_shape=(1, 1, 1)))
    c.sample = ml_collections.ConfigDict(dict(prompts=("",), max_new_tokens=64, temperature=0.8, top_k=0,
                                              top_p=1.0, seed=0))
    # Evaluations by name: c.evals.<name> = {kind, every_steps, ...}; teal_jax.evaluate.evaluators builds them.
    c.evals = ml_collections.ConfigDict()
    return c


def _check_section(config, section: str, fields: dict[str, type]) -> None:
    sub = config.get(section)
    if sub is None:
        raise ValueError(f"config.{section} is missing")
    for key, value in sub.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean config.{section}.{close[0]}?)" if close else ""
            raise ValueError(f"config.{section}.{key}: unknown field{hint}; known fields: {sorted(fields)}")
        want = fields[key]
        ok = isinstance(value, want) or (want is float and isinstance(value, int) and not isinstance(value, bool))
        if want is int and isinstance(value, bool):
            ok = False
        if not ok:
            raise ValueError(
                f"config.{section}.{key}={value!r} has type {type(value).__name__}, expected {want.__name__}"
            )


def _check_evals(config) -> None:
    """``config.evals.<name>``: a section with a string ``kind`` and an int ``every_steps`` >= 0 (the kind-specific
    fields are checked when ``teal_jax.evaluate.evaluators.make_evaluators`` builds them)."""
    for name, section in (config.get("evals") or {}).items():
        if not hasattr(section, "get"):
            raise ValueError(f"config.evals.{name}: expected a section {{kind, every_steps, ...}}, got {section!r}")
        if not isinstance(section.get("kind"), str) or not section.get("kind"):
            raise ValueError(f"config.evals.{name}.kind: every evaluation needs a kind (a string)")
        every = section.get("every_steps", 0)
        if not isinstance(every, int) or isinstance(every, bool) or every < 0:
            raise ValueError(f"config.evals.{name}.every_steps={every!r} must be an int >= 0 (0: only on demand)")


def validate(config: ml_collections.ConfigDict) -> None:
    for key in ("objective", "seed", "model", "data", "train", "optimizer", "mesh"):
        if key not in config:
            raise ValueError(f"config.{key} is missing (start configs from teal_jax.config.base_config())")
    _check_section(config, "train", _TRAIN_FIELDS)
    _check_section(config, "optimizer", OPTIMIZER_FIELDS)
    t = config.train
    for key in ("steps", "batch_size", "grad_accum", "log_every", "checkpoint_every", "keep_checkpoints"):
        if t.get(key, 1) < 1:
            raise ValueError(f"config.train.{key}={t.get(key)} must be >= 1")
    if t.get("loss_chunk_size", 0) < 0:
        raise ValueError(f"config.train.loss_chunk_size={t.loss_chunk_size} must be >= 0 (0: off)")
    if t.compute_dtype not in ("bfloat16", "float32", "float16"):
        raise ValueError(f"config.train.compute_dtype={t.compute_dtype!r}: choose bfloat16, float32 or float16")
    if t.batch_size % t.grad_accum:
        raise ValueError(
            f"config.train.batch_size={t.batch_size} is not divisible by config.train.grad_accum={t.grad_accum}"
        )
    _check_evals(config)
    lora = (config.model.get("lora") or {}) if hasattr(config.model, "get") else {}
    if lora and lora.get("rank", 0) and config.objective not in LORA_OBJECTIVES:
        raise ValueError(f"config.model.lora.rank={lora.get('rank')}: LoRA adapts a language model; "
                         f"config.objective={config.objective!r} is not one of {LORA_OBJECTIVES}")
    shape = tuple(config.mesh.shape)
    if len(shape) != 3:
        raise ValueError(f"config.mesh.shape={shape} must have 3 entries ('data', 'fsdp', 'tensor')")
    dcn = tuple(config.mesh.get("dcn_shape") or (1, 1, 1))
    if len(dcn) != 3 or any(int(d) < 1 for d in dcn):
        raise ValueError(f"config.mesh.dcn_shape={dcn} must have 3 entries >= 1 ('data', 'fsdp', 'tensor')")
