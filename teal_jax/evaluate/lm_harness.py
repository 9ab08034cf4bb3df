"""EleutherAI's lm-evaluation-harness, in process, on the project's models (``pip install 'teal_jax[eval]'``).

:class:`HarnessLM` is an ``lm_eval`` model (a ``TemplateLM``): the harness hands it its requests and it answers them
through the project's own jitted forward and decode loop, with the tokenisation rules of the harness' HF model
(``HFLM``) for a SentencePiece Llama: the text is encoded with a leading bos, a context's trailing spaces move to the
continuation, inputs are the last ``max_length`` tokens, an empty context is the bos alone. So the same weights give
the same log-likelihoods here and under ``HFLM`` (tests/test_lm_harness.py, on a tiny random Llama).

- ``loglikelihood``: rows sorted by length, padded to a few bucket lengths and a fixed batch (so a task compiles a
  handful of shapes), scored inside one jitted function (log-softmax, the continuation's sum, whether it is the greedy
  continuation); only two numbers per row leave the device.
- ``loglikelihood_rolling``: the harness' disjoint rolling windows of ``max_length`` tokens, scored the same way.
- ``generate_until``: the model's own sampler (greedy unless the task asks to sample), cut at eos and at the task's
  stop strings.

Models: a :class:`teal_jax.inference.lm.LanguageModel` (all of its vocabulary) or a
:class:`teal_jax.inference.teal.TealModel`, scored over its text ids only, which is the base LM's text distribution
(bitwise while the LM is frozen): the harness then measures the claim that TEAL leaves the LM's text behaviour as it
was, on standard tasks. Inference models hold their parameters per process, so under several processes process 0
runs the harness alone (no collective is needed to score; the trainer runs evaluators on process 0).

:class:`LmHarnessEvaluator` is the evaluator kind ``'lm_harness'``: ``config.evals.<name> = {kind: 'lm_harness',
tasks: ('hellaswag', 'arc_easy'), num_fewshot: -1, limit: 0, batch_size: 8, include_path: '', ...}``. Standard tasks
download their datasets from the HF hub (the harness' own loading); ``include_path`` adds a directory of task YAMLs,
e.g. tasks over local files (``include_defaults: False`` then skips indexing the harness' own tasks).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from teal_jax.evaluate.evaluators import Evaluator

try:  # the optional dependency: a clear error when a config names the evaluator without it
    from lm_eval.api.model import TemplateLM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as e:  # pragma: no cover - exercised only without lm-eval installed
    _IMPORT_ERROR: ImportError | None = e
    TemplateLM = object
else:
    _IMPORT_ERROR = None


def _require_lm_eval() -> None:
    if _IMPORT_ERROR is not None:
        raise ImportError("the lm_harness evaluator needs EleutherAI's lm-evaluation-harness: "
                          f"pip install 'teal_jax[eval]' (or lm-eval) ({_IMPORT_ERROR})")


def _bucket(n: int, cap: int) -> int:
    """The padded length of a row of ``n`` tokens: a power of two >= 16, at most ``cap``."""
    return min(cap, max(16, 1 << (max(n, 1) - 1).bit_length()))


@functools.partial(jax.jit, static_argnums=(0, 5))
def _score(module, params, tokens, targets, mask, text_size):
    """Per row: (sum of log p(target) over ``mask``, whether every masked target is the argmax)."""
    logits = module.apply({"params": params}, tokens).astype(jnp.float32)
    if text_size:
        logits = logits[..., :text_size]
    logp = jax.nn.log_softmax(logits, axis=-1)
    tok = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    greedy = jnp.argmax(logits, axis=-1) == targets
    return jnp.sum(jnp.where(mask, tok, 0.0), axis=-1), jnp.all(greedy | ~mask, axis=-1)


class HarnessLM(TemplateLM):
    """An ``lm_eval`` model over a LanguageModel or TealModel (see the module docstring).

    Args:
      model: what ``teal_jax.load`` returns for an ``lm`` or ``teal`` run.
      batch_size: rows per forward (a fixed shape: short batches are padded).
      max_length: the context window; 0 = the model's ``max_decode_len``.
      add_bos: encode texts with a leading bos (HF Llama tokenizers do; HFLM follows the tokenizer).
    """

    def __init__(self, model, *, batch_size: int = 8, max_length: int = 0, add_bos: bool = True):
        _require_lm_eval()
        super().__init__()
        self.model = model
        kind = getattr(model, "kind", None)
        if kind == "lm":
            from teal_jax.models.transformer import TransformerLM

            if model.tokenizer is None:
                raise ValueError("lm_harness: this LM run has no text tokenizer (it was not trained on text)")
            self.module, self.text_size, self.tok = TransformerLM(model.model_config), 0, model.tokenizer
            window = model.model_config.max_decode_len
        elif kind == "teal":
            from teal_jax.models.teal import TealLM

            self.module, self.text_size, self.tok = TealLM(model.config), model.vocab.text_size, model.text_tokenizer
            window = model.config.lm.max_decode_len
        else:
            raise ValueError(f"lm_harness: expected a LanguageModel or TealModel (kind 'lm' or 'teal'), got {kind!r}")
        if batch_size < 1:
            raise ValueError(f"lm_harness: batch_size={batch_size} must be >= 1")
        self.batch_size, self.add_bos = int(batch_size), bool(add_bos)
        self._max_length = int(max_length or window)
        if self._max_length > window:
            raise ValueError(f"lm_harness: max_length={max_length} exceeds the model's context {window}")
        self.params = model.params

    # ---- what TemplateLM asks for ------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tok.bos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        bos = self.add_bos if add_special_tokens is None else bool(add_special_tokens)
        ids = list(self.tok.encode(string))
        return [self.tok.bos_id, *ids] if bos else ids

    def tok_decode(self, tokens, **kwargs) -> str:
        return self.tok.decode([int(t) for t in tokens if int(t) < self.tok.vocab_size])

    # ---- scoring -----------------------------------------------------------------------------------------------
    def score_rows(self, rows: Sequence[tuple[list[int], int]]) -> list[tuple[float, bool]]:
        """``(ids, n)`` -> (log p of the last ``n`` ids given the ones before, greedy?) for each row; a row longer
        than ``max_length + 1`` keeps its last ``max_length + 1`` ids (as HFLM does)."""
        prepared = []
        for ids, n in rows:
            ids = list(ids)[-(self.max_length + 1):]
            if not 0 < n < len(ids):
                raise ValueError(f"lm_harness: a request scores {n} of {len(ids)} tokens (it needs a context token)")
            prepared.append((ids[:-1], ids[1:], n))
        order = sorted(range(len(prepared)), key=lambda i: -len(prepared[i][0]))
        out: list[tuple[float, bool]] = [(0.0, False)] * len(prepared)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            length = _bucket(max(len(prepared[i][0]) for i in idx), self.max_length)
            tokens = np.zeros((self.batch_size, length), np.int32)
            targets = np.zeros_like(tokens)
            mask = np.zeros(tokens.shape, bool)
            for r, i in enumerate(idx):
                inp, tgt, n = prepared[i]
                tokens[r, : len(inp)], targets[r, : len(tgt)] = inp, tgt
                mask[r, len(inp) - n : len(inp)] = True
            lp, greedy = _score(self.module, self.params, tokens, targets, mask, self.text_size)
            lp, greedy = np.asarray(lp), np.asarray(greedy)
            for r, i in enumerate(idx):
                out[i] = (float(lp[r]), bool(greedy[r]))
        return out

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        return self.score_rows([(list(ctx) + list(cont), len(cont)) for _, ctx, cont in requests])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        rows, owner = [], []
        for i, req in enumerate(requests):
            (string,) = req.args
            windows = get_rolling_token_windows(token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                                                max_seq_len=self.max_length, context_len=1)
            for ctx, cont in map(make_disjoint_window, windows):
                rows.append((list(ctx) + list(cont), len(cont)))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (lp, _) in zip(owner, self.score_rows(rows), strict=True):
            totals[i] += lp
        return totals

    # ---- generation --------------------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in requests:
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", 256))
            temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", False) else 0.0
            out.append(self._generate_one(context, until, max_new, temperature))
        return out

    def _generate_one(self, context: str, until: list[str], max_new: int, temperature: float) -> str:
        ids = self.tok_encode(context)[-(self.max_length - max_new):]
        if self.text_size:  # TealModel: its text sampler (text ids only), from the string with the lm template
            if len(ids) < len(self.tok_encode(context)):
                raise ValueError(f"lm_harness: a generation context of {len(self.tok_encode(context))} tokens does "
                                 f"not fit max_length {self.max_length} - max_gen_toks {max_new}")
            text = self.model.generate_text([context], max_new_tokens=max_new, temperature=temperature)[0]
        else:
            row = self.model.generate([ids], max_new_tokens=max_new, temperature=temperature)[0]
            if self.tok.eos_id in row:
                row = row[: row.index(self.tok.eos_id)]
            text = self.tok_decode(row)
        for stop in until:
            if stop:
                text = text.split(stop)[0]
        return text


def flatten_results(results: dict[str, Any]) -> dict[str, float]:
    """``{'<task>/<metric>': value}`` for every numeric metric of ``simple_evaluate``'s ``results``
    ('acc,none' -> 'acc'; stderr kept as '<metric>_stderr')."""
    out = {}
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                name, _, filt = key.partition(",")
                name = name.replace("_stderr", "") + ("_stderr" if "_stderr" in name else "")
                out[f"{task}/{name}" + (f"[{filt}]" if filt and filt != "none" else "")] = float(value)
    return out


def evaluate(model, tasks: Sequence[str], *, num_fewshot: int | None = None, limit: int | None = None,
             batch_size: int = 8, max_length: int = 0, include_path: str = "", include_defaults: bool = True,
             seed: int = 0) -> dict[str, Any]:
    """Runs lm-eval ``tasks`` on ``model`` -> ``simple_evaluate``'s results on process 0, None on the others (the
    model's parameters are per process: scoring needs no other process; the trainer runs evaluators on process 0)."""
    _require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    result = None
    if jax.process_index() == 0:
        # Indexing the harness' own ~15k task configs takes seconds; include_defaults=False reads include_path only.
        manager = TaskManager(include_path=include_path or None, include_defaults=include_defaults)
        unknown = [t for t in tasks if t not in manager.all_tasks]
        if unknown:
            raise ValueError(f"lm_harness: unknown task(s) {unknown}; include_path={include_path or '(none)'} "
                             "adds a directory of task YAMLs")
        lm = HarnessLM(model, batch_size=batch_size, max_length=max_length)
        result = simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
                                 task_manager=manager, random_seed=seed, numpy_random_seed=seed,
                                 torch_random_seed=seed, fewshot_random_seed=seed, bootstrap_iters=0)
    return result


class LmHarnessEvaluator(Evaluator):
    """``kind: 'lm_harness'``: lm-evaluation-harness tasks on the run's model; figures ``<task>/<metric>``."""

    KIND = "lm_harness"
    FIELDS = {"tasks": (), "num_fewshot": -1, "limit": 0, "batch_size": 8, "max_length": 0, "include_path": "",
              "include_defaults": True, "seed": 0}

    def run(self, model, *, workdir: str, step: int) -> dict[str, Any]:
        if not self.tasks:
            raise ValueError(f"config.evals.{self.name}.tasks: name at least one lm-eval task")
        result = evaluate(model, list(self.tasks), num_fewshot=None if self.num_fewshot < 0 else self.num_fewshot,
                          limit=self.limit or None, batch_size=self.batch_size, max_length=self.max_length,
                          include_path=os.path.expanduser(self.include_path),
                          include_defaults=self.include_defaults, seed=self.seed)
        if result is None:  # not process 0
            return {}
        out_dir = self.output_dir(workdir, step)
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "lm_eval.json"), "w") as f:
            json.dump({k: result.get(k) for k in ("results", "configs", "versions", "n-shot")}, f, indent=2,
                      default=str)
        return flatten_results(result)
