"""Classifier-free guidance chosen on a validation set (never the held-out prompts).

The guidance scale of a modality is the scale of a small grid (``GUIDANCE_SCALES``) with the highest judged accuracy
on a *validation* set: the ten digit prompts and sum questions over ``templates.REASONING_VALIDATION_PAIRS``
(training pairs; a held-out pair is an error), sampled with a seed other than the held-out evaluation's; ties go to
the smaller scale. The held-out figures are then measured once, with the chosen scale.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from teal_jax.data import templates as templates_lib
from teal_jax.evaluate.teal_tasks import digit_prompts, judge_images, judge_speech, reasoning_prompts
from teal_jax.vocab import SPAN_MODALITIES

GUIDANCE_SCALES = (1.0, 2.0, 3.0)


def validation_prompts(modality: str, *, per_class: int = 3,
                       pairs: Sequence[tuple[int, int]] = templates_lib.REASONING_VALIDATION_PAIRS[:30]
                       ) -> tuple[list[str], list[int], np.ndarray]:
    """The validation prompts of one modality: ``per_class`` digit prompts per digit (digit-major), then one sum
    question per pair of ``pairs`` -> (prompts, labels, reasoning mask [n] bool). A held-out pair
    (``templates.REASONING_EVAL_PAIRS``) is an error: validation never sees the held-out questions."""
    pairs = [(int(a), int(b)) for a, b in pairs]
    held = sorted(set(pairs) & set(templates_lib.REASONING_EVAL_PAIRS))
    if held:
        raise ValueError(f"validation_prompts: pairs {held[:5]} are held-out reasoning pairs (REASONING_EVAL_PAIRS)")
    if per_class < 0:
        raise ValueError(f"validation_prompts: per_class={per_class} must be >= 0")
    prompts, labels = digit_prompts(per_class) if per_class else ([], [])
    n_digit = len(prompts)
    if pairs:
        q, a = reasoning_prompts(modality, pairs, 1)
        prompts, labels = prompts + q, labels + a
    if not prompts:
        raise ValueError("validation_prompts: no prompts (per_class=0 and no pairs)")
    return prompts, labels, np.arange(len(prompts)) >= n_digit


def pick_guidance(scores: dict[float, float]) -> float:
    """The scale with the highest validation score; a tie goes to the smaller scale (less compute, and the
    sampling distribution moved least from the model's own)."""
    if not scores:
        raise ValueError("pick_guidance: no scores")
    best = max(scores.values())
    return float(min(s for s, v in scores.items() if v == best))


def choose_guidance(model, judge, modality: str, *, scales: Sequence[float] = GUIDANCE_SCALES, seed: int,
                    heldout_seed: int | None = None, per_class: int = 3,
                    pairs: Sequence[tuple[int, int]] = templates_lib.REASONING_VALIDATION_PAIRS[:30],
                    **sampling) -> dict[str, Any]:
    """Chooses the classifier-free guidance scale of ``modality`` ('image': ``model.generate_image`` judged by the
    digit classifier ``judge``; 'audio': ``model.generate_speech`` judged by the spoken-word classifier) among
    ``scales`` by judged accuracy on :func:`validation_prompts` (digit prompts and sum questions over training
    pairs), every scale sampled with the same ``seed`` (which must differ from ``heldout_seed``, the held-out
    evaluation's) and the other ``sampling`` settings. -> {'chosen', 'scales', 'accuracy', 'digit_accuracy',
    'reasoning_accuracy' (each {f'{scale:g}': value}), 'n', 'n_digit', 'n_reasoning', 'seed', 'pairs', 'wall_s'}."""
    if modality not in SPAN_MODALITIES:
        raise ValueError(f"choose_guidance: modality={modality!r}, expected 'image' or 'audio'")
    if "guidance_scale" in sampling or "seed" in sampling:
        raise ValueError("choose_guidance: pass the scales as `scales` and the seed as `seed`, not in **sampling")
    if heldout_seed is not None and int(seed) == int(heldout_seed):
        raise ValueError(f"choose_guidance: the validation seed {seed} is the held-out evaluation's; use another")
    grid = sorted({float(s) for s in scales})
    if not grid or any(not np.isfinite(s) or s <= 0 for s in grid):
        raise ValueError(f"choose_guidance: scales={list(scales)} must be a non-empty list of positive numbers")
    prompts, labels, reasoning = validation_prompts(modality, per_class=per_class, pairs=pairs)
    y = np.asarray(labels)
    run = judge_images if modality == "image" else judge_speech
    t0 = time.time()
    acc, digit_acc, reason_acc = {}, {}, {}
    for scale in grid:
        _, pred = run(model, judge, prompts, guidance_scale=scale, seed=int(seed), **sampling)
        correct = pred == y
        key = f"{scale:g}"
        acc[key] = float(correct.mean())
        digit_acc[key] = float(correct[~reasoning].mean()) if np.any(~reasoning) else float("nan")
        reason_acc[key] = float(correct[reasoning].mean()) if np.any(reasoning) else float("nan")
    chosen = pick_guidance({s: acc[f"{s:g}"] for s in grid})
    return {"chosen": chosen, "scales": grid, "accuracy": acc, "digit_accuracy": digit_acc,
            "reasoning_accuracy": reason_acc, "n": len(prompts), "n_digit": int((~reasoning).sum()),
            "n_reasoning": int(reasoning.sum()), "seed": int(seed), "pairs": [list(p) for p in pairs],
            "wall_s": round(time.time() - t0, 1)}

