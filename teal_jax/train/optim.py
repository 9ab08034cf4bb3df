"""Optax optimizers from config: AdamW + warmup/cosine, global-norm clipping, frozen parameters.

Frozen parameters (``trainable`` False) go through ``optax.set_to_zero`` inside ``optax.multi_transform``: they get no
optimizer state and no update, and the trainer does not even add the zero update (so a frozen weight stays
bit-identical, -0.0 included). Clipping sees only trainable gradients.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

from teal_jax.config import OPTIMIZER_FIELDS


def group_config(config: ml_collections.ConfigDict, group: str) -> ml_collections.ConfigDict:
    """``config.optimizer`` with ``config.optimizers.<group>`` overrides applied (unknown override keys raise)."""
    base = ml_collections.ConfigDict(config.optimizer.to_dict())
    overrides = config.get("optimizers", {}) or {}
    for key, value in dict(overrides.get(group, {}) or {}).items():
        if key not in OPTIMIZER_FIELDS:
            raise ValueError(f"config.optimizers.{group}.{key}: unknown optimizer field; "
                             f"known: {sorted(OPTIMIZER_FIELDS)}")
        base[key] = value
    return base


def schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    warmup = max(int(opt.warmup_steps), 0)
    if opt.decay == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=opt.lr, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
            end_value=opt.lr * opt.end_lr_ratio,
        )
    if opt.decay == "constant":
        if warmup == 0:
            return optax.constant_schedule(opt.lr)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, opt.lr, warmup), optax.constant_schedule(opt.lr)], [warmup]
        )
    raise ValueError(f"optimizer.decay={opt.decay!r}: choose 'cosine' or 'constant'")


def _decay_mask(params: Any) -> Any:
    """Weight decay on matrices and kernels only, never on norms, biases or scalars."""
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


def make_optimizer(
    opt: ml_collections.ConfigDict, total_steps: int, trainable: Any
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns ``(tx, lr_schedule)`` for one parameter group; ``trainable`` is a tree of Python bools."""
    lr = schedule(opt, total_steps)
    if opt.name == "adamw":
        inner = optax.adamw(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=_decay_mask)
    elif opt.name == "adam":
        inner = optax.adam(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps)
    elif opt.name == "sgd":
        inner = optax.sgd(lr, momentum=opt.b1 or None)
    else:
        raise ValueError(f"optimizer.name={opt.name!r}: choose 'adamw', 'adam' or 'sgd'")
    if opt.clip_norm and opt.clip_norm > 0:
        inner = optax.chain(optax.clip_by_global_norm(opt.clip_norm), inner)
    labels = jax.tree.map(lambda t: "train" if t else "frozen", trainable)
    return optax.multi_transform({"train": inner, "frozen": optax.set_to_zero()}, labels), lr


def apply_updates(params: Any, updates: Any, trainable: Any) -> Any:
    """params + updates on trainable leaves; frozen leaves are returned untouched (bit-identical)."""
    return jax.tree.map(
        lambda p, u, t: (p + u).astype(p.dtype) if t else p, params, updates, trainable
    )
