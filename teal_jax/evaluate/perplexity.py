"""Text perplexity of held-out documents under the base LM and under a TEAL model's text rows.

``exp(mean NLL)`` of ``bos text eos`` (targets: the text ids and eos) under the base LM (``TransformerLM`` with the
base parameters) and under the TEAL model's text rows (log-softmax over ``logits[..., :text_size]``), with whether the
two logit arrays are bitwise equal (a frozen LM must give its base's text logits bit for bit).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from teal_jax import lineage
from teal_jax.models.forward import jitted_apply
from teal_jax.models.transformer import TransformerLM


def _has_bias(params) -> bool:
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    return any(str(getattr(p[-1], "key", p[-1])) == "bias" for p, _ in paths)


def _nll_sums(logits: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> float:
    """Sum over masked positions of -log softmax(logits)[target], in float64."""
    x = logits.astype(np.float64)
    m = x.max(-1, keepdims=True)
    lse = np.log(np.exp(x - m).sum(-1)) + m[..., 0]
    picked = np.take_along_axis(x, targets[..., None], -1)[..., 0]
    return float(((lse - picked) * mask).sum())


def text_perplexity(model, texts: Sequence[str], *, base_lm_params: Any = None, max_len: int = 128,
                    batch_size: int = 8) -> dict[str, Any]:
    """Perplexity of held-out ``texts`` under the base LM and under the TEAL model's text rows.

    ``base_lm_params``: the base ``TransformerLM`` parameters (default: read from the run's
    ``config.model.base_lm_workdir`` with :func:`teal_jax.lineage.load_base_lm_params`). Each text becomes ``bos ids
    eos``, cut to ``max_len`` ids; rows are right-padded to one length (a multiple of 16, at most ``max_len``) and
    run in batches of ``batch_size`` (the last padded with empty rows), so each model compiles once. -> {'base_ppl',
    'teal_ppl', 'base_nll', 'teal_nll', 'tokens', 'logits_bitwise_equal', 'max_abs_logit_diff'} (the logit
    comparison is over real positions: base logits vs TEAL ``logits[..., :text_size]``)."""
    texts = list(texts)
    if not texts:
        raise ValueError("text_perplexity: no texts")
    if base_lm_params is None:
        base = (model.run_config.model.get("base_lm_workdir") if getattr(model, "run_config", None) is not None
                else None)
        if not base:
            raise ValueError("text_perplexity: pass base_lm_params (the run names no config.model.base_lm_workdir)")
        base_lm_params = lineage.load_base_lm_params(base)
    tok = model.text_tokenizer
    rows = [[tok.bos_id, *tok.encode(t), tok.eos_id][:max_len] for t in texts]
    short = [i for i, r in enumerate(rows) if len(r) < 2]
    if short:
        raise ValueError(f"text_perplexity: texts {short[:5]} give fewer than 2 ids (max_len={max_len})")
    length = min(max_len, -(-max(len(r) for r in rows) // 16) * 16)
    n = len(rows)
    size = min(batch_size, n)
    padded_n = -(-n // size) * size
    tokens = np.zeros((padded_n, length), np.int32)
    mask = np.zeros((padded_n, length), np.float64)  # mask[:, t] = 1: token t is a target (predicted from t-1)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r
        mask[i, 1 : len(r)] = 1.0
    lm_config = model.config.lm
    if lm_config.use_bias != _has_bias(base_lm_params):
        lm_config = dataclasses.replace(lm_config, use_bias=_has_bias(base_lm_params))
    base_params = jax.tree.map(jnp.asarray, base_lm_params)
    base_fn = jitted_apply(TransformerLM(lm_config))
    text_size = model.vocab.text_size
    base_sum = teal_sum = 0.0
    equal, max_diff = True, 0.0
    for s in range(0, padded_n, size):
        chunk, m = tokens[s : s + size], mask[s : s + size]
        teal_logits = np.asarray(model.logits(chunk))[..., :text_size]
        base_logits = np.asarray(base_fn(base_params, jnp.asarray(chunk)))
        if base_logits.shape != teal_logits.shape:
            raise ValueError(f"base LM logits {base_logits.shape} vs TEAL text logits {teal_logits.shape}: the base "
                             "parameters do not fit the TEAL model's LM")
        real = np.zeros(m.shape, bool)  # positions whose logits are read: inputs 0 .. len-2
        real[:, :-1] = m[:, 1:] > 0
        equal = equal and bool(np.array_equal(teal_logits[real], base_logits[real]))
        if real.any():
            max_diff = max(max_diff, float(np.abs(teal_logits[real] - base_logits[real]).max()))
        targets, tmask = chunk[:, 1:], m[:, 1:]
        base_sum += _nll_sums(base_logits[:, :-1], targets, tmask)
        teal_sum += _nll_sums(teal_logits[:, :-1], targets, tmask)
    count = float(mask.sum())
    return {"base_ppl": float(np.exp(base_sum / count)), "teal_ppl": float(np.exp(teal_sum / count)),
            "base_nll": base_sum / count, "teal_nll": teal_sum / count, "tokens": int(count),
            "logits_bitwise_equal": equal, "max_abs_logit_diff": max_diff}

