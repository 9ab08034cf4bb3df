"""Multiple choice by likelihood (ScienceQA-style, TEAL's benchmark; lm-eval-harness's ``acc`` / ``acc_norm``).

Each question becomes a prompt (ids); each option a continuation (ids). The model scores every (prompt, option)
pair by the log-likelihood of the option's ids given the prompt,

    ll(option) = sum_t log p(option_t | prompt, option_<t)

and picks the option with the highest score. Length normalisation (``normalize``): 'none' (the sum), 'tokens'
(ll / number of option ids) or 'chars' (ll / number of characters of the option text: lm-eval-harness's
``acc_norm`` uses the byte length). Every pair is one row of a batch: rows are right-padded (causal attention, so
padding after a row never changes its logits) to a length rounded up to 32 (few compilations), and the sum is
computed inside the jit around the model's own jitted forward (``models.forward.jitted_apply``), so only
[batch] scores leave the device, never [batch, length, vocab] logits.

:class:`MultipleChoiceEvaluator` (kind ``multiple_choice``) reads ScienceQA's ``problems.json`` (a split of it; the
question's image, when there is one and the model is a TEAL model with an image tokenizer, goes in front of the
prompt as ``<boi> codes <eoi>``) or a JSONL file of {question, choices, answer[, context][, image]}.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from teal_jax.evaluate.evaluators import Evaluator
from teal_jax.models.forward import jitted_apply

NORMALIZE = ("none", "tokens", "chars")
_BUCKET = 32


@functools.lru_cache(maxsize=8)
def _scorer(module) -> Callable:
    """jit((params, tokens, targets, weights) -> float32 [B] sum of weights * log p(target)) over the one jitted
    forward of ``module``."""
    forward = jitted_apply(module)

    def score(params, tokens, targets, weights):
        logits = forward(params, tokens).astype(jnp.float32)
        logp = jax.nn.log_softmax(logits, axis=-1)
        picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        return (picked * weights).sum(-1)

    return jax.jit(score)


def model_scorer(model) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """``(tokens, targets, weights) -> float64 [B]`` for a LanguageModel (kind 'lm') or TealModel (kind 'teal')."""
    if getattr(model, "kind", None) == "lm":
        from teal_jax.models.transformer import TransformerLM

        module = TransformerLM(model.model_config)
    elif getattr(model, "kind", None) == "teal":
        from teal_jax.models.teal import TealLM

        module = TealLM(model.config)
    else:
        raise TypeError(f"multiple choice needs a LanguageModel or TealModel, got {type(model).__name__}")
    fn = _scorer(module)
    return lambda t, y, w: np.asarray(fn(model.params, jnp.asarray(t, jnp.int32), jnp.asarray(y, jnp.int32),
                                         jnp.asarray(w, jnp.float32)), np.float64)


def option_loglikelihoods(score: Callable, prompts: Sequence[Sequence[int]],
                          options: Sequence[Sequence[Sequence[int]]], *, batch_size: int = 16,
                          pad_id: int = 0) -> list[np.ndarray]:
    """Per question, float64 [n_options] summed log-likelihoods of each option's ids after its prompt.

    ``score(tokens, targets, weights)`` (see :func:`model_scorer`) sums ``weights * log p(targets)`` per row, where
    row position t predicts ``targets[t] = tokens[t + 1]``."""
    if len(prompts) != len(options):
        raise ValueError(f"option_loglikelihoods: {len(prompts)} prompts but {len(options)} option lists")
    rows = []
    for q, (p, opts) in enumerate(zip(prompts, options, strict=True)):
        if not len(p):
            raise ValueError(f"option_loglikelihoods: question {q} has an empty prompt (start it with BOS)")
        if not len(opts):
            raise ValueError(f"option_loglikelihoods: question {q} has no options")
        for o, ids in enumerate(opts):
            if not len(ids):
                raise ValueError(f"option_loglikelihoods: question {q} option {o} has no ids")
            rows.append((q, o, list(p), list(ids)))
    out = [np.zeros(len(o), np.float64) for o in options]
    for s in range(0, len(rows), batch_size):
        chunk = rows[s: s + batch_size]
        n = max(len(p) + len(c) for _, _, p, c in chunk) - 1  # inputs: every id but the last
        length = -(-n // _BUCKET) * _BUCKET
        tokens = np.full((batch_size, length), pad_id, np.int32)
        targets = np.zeros((batch_size, length), np.int32)
        weights = np.zeros((batch_size, length), np.float32)
        for r, (_, _, p, c) in enumerate(chunk):
            seq = p + c
            tokens[r, : len(seq) - 1] = seq[:-1]
            targets[r, : len(seq) - 1] = seq[1:]
            weights[r, len(p) - 1: len(seq) - 1] = 1.0  # the positions that predict the option's ids
        sums = score(tokens, targets, weights)
        for r, (q, o, _, _) in enumerate(chunk):
            out[q][o] = sums[r]
    return out


def choose(loglikelihoods: Sequence[np.ndarray], lengths: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """Index of the best option per question: argmax of ll, or of ll / length when ``lengths`` are given."""
    if lengths is None:
        return np.asarray([int(np.argmax(ll)) for ll in loglikelihoods])
    return np.asarray([int(np.argmax(np.asarray(ll) / np.maximum(np.asarray(n, np.float64), 1)))
                       for ll, n in zip(loglikelihoods, lengths, strict=True)])


# ---- data ----------------------------------------------------------------------------------------------------------
def read_questions(path: str, split: str = "test") -> list[dict[str, Any]]:
    """ScienceQA's ``problems.json`` ({id: {question, choices, answer, hint, image, split, ...}}, the rows of
    ``split``) or JSONL {question, choices, answer[, context][, image]} -> records with id, question, context,
    choices, answer, image (a path relative to the file's image root, or '')."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: multiple-choice questions not found")
    with open(path) as f:
        text = f.read()
    scienceqa = False
    try:
        data = json.loads(text)
        scienceqa = isinstance(data, dict)
        items = ([(k, v) for k, v in data.items() if v.get("split", split) == split] if scienceqa
                 else list(enumerate(data)))
    except json.JSONDecodeError:
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e})") from e
    out = []
    for key, rec in items:
        where = f"{path}: question {key}"
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected an object")
        choices = rec.get("choices")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise ValueError(f"{where}: 'choices' must be a list of at least two strings")
        answer = rec.get("answer")
        if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
            raise ValueError(f"{where}: 'answer'={answer!r} must be an index into its {len(choices)} choices")
        if not isinstance(rec.get("question"), str):
            raise ValueError(f"{where}: 'question' must be a string")
        image = rec.get("image") or ""
        if image and scienceqa:
            image = os.path.join(str(key), image)  # ScienceQA: <image_root>/<id>/image.png
        out.append({"id": str(key), "question": rec["question"], "context": rec.get("context", rec.get("hint", ""))
                    or "", "choices": choices, "answer": answer, "image": image})
    if not out:
        raise ValueError(f"{path}: no questions (of split {split!r})")
    return out


class MultipleChoiceEvaluator(Evaluator):
    """Accuracy of likelihood-ranked options (kind ``multiple_choice``); see the module docstring.

    Fields: ``data`` (problems.json or JSONL), ``split``, ``image_root`` (ScienceQA: the folder holding
    ``<id>/image.png``, i.e. ``images/<split>``), ``prompt_format`` (``{question}``, ``{context}``, ``{options}``:
    "(A) ... (B) ..."), ``choice_format`` (``{choice}``, ``{letter}``), ``normalize`` (the headline ``accuracy``:
    'none', 'tokens' or 'chars'; all three are reported), ``max_questions`` (0 = all), ``batch_size``.
    Writes ``predictions.jsonl``.
    """

    KIND = "multiple_choice"
    FIELDS = {"data": "", "split": "test", "image_root": "",
              "prompt_format": "Question: {question}\nContext: {context}\nOptions: {options}\nAnswer:",
              "choice_format": " {choice}", "normalize": "chars", "max_questions": 0, "batch_size": 16}

    def _encoders(self, model):
        tok = model.tokenizer if model.kind == "lm" else model.text_tokenizer
        if tok is None:
            raise ValueError(f"config.evals.{self.name}: the model has no text tokenizer")
        return tok

    def run(self, model, *, workdir: str, step: int) -> dict[str, Any]:
        where = f"config.evals.{self.name}"
        if self.normalize not in NORMALIZE:
            raise ValueError(f"{where}.normalize={self.normalize!r}: choose one of {NORMALIZE}")
        if not self.data:
            raise ValueError(f"{where}.data: set ScienceQA's problems.json or a JSONL file of questions")
        questions = read_questions(self.data, self.split)
        if self.max_questions:
            questions = questions[: self.max_questions]
        tok = self._encoders(model)
        prompts, options, option_texts = [], [], []
        for q in questions:
            letters = [chr(ord("A") + i) for i in range(len(q["choices"]))]
            listing = " ".join(f"({a}) {c}" for a, c in zip(letters, q["choices"], strict=True))
            text = self.prompt_format.format(question=q["question"], context=q["context"], options=listing)
            prompt = [tok.bos_id, *tok.encode(text)]
            if q["image"] and model.kind == "teal" and getattr(model, "image_tokenizer", None) is not None:
                prompt = self._image_prefix(model, q["image"]) + prompt
            texts = [self.choice_format.format(choice=c, letter=a) for a, c in zip(letters, q["choices"], strict=True)]
            prompts.append(prompt)
            options.append([list(tok.encode(t)) for t in texts])
            option_texts.append(texts)
        ll = option_loglikelihoods(model_scorer(model), prompts, options, batch_size=self.batch_size,
                                   pad_id=0)
        answers = np.asarray([q["answer"] for q in questions])
        preds = {"none": choose(ll), "tokens": choose(ll, [[len(o) for o in opts] for opts in options]),
                 "chars": choose(ll, [[len(t) for t in texts] for texts in option_texts])}
        out = self.output_dir(workdir, step)
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "predictions.jsonl"), "w") as f:
            for q, scores, p in zip(questions, ll, preds[self.normalize], strict=True):
                f.write(json.dumps({"id": q["id"], "answer": q["answer"], "prediction": int(p),
                                    "loglikelihoods": [float(x) for x in scores]}) + "\n")
        acc = {k: float((v == answers).mean()) for k, v in preds.items()}
        return {"accuracy": acc[self.normalize], "accuracy_sum": acc["none"], "accuracy_per_token": acc["tokens"],
                "accuracy_per_char": acc["chars"], "n": len(questions),
                "chance": float(np.mean([1.0 / len(q["choices"]) for q in questions]))}

    def _image_prefix(self, model, relative: str) -> list[int]:
        from teal_jax.media.image import center_crop_resize, read_image

        img = read_image(os.path.join(self.image_root, relative))
        img = center_crop_resize(img if img.ndim == 3 else img[..., None], model.image_size)
        ids, feats = model.condition_ids("image", img[None])  # the input tokenizer's ids when the model has one
        if feats is not None:
            raise ValueError(f"config.evals.{self.name}: a model fed continuous image features (config.data."
                             "image_in_features) has no image ids to put in a question prompt")
        return [model.vocab.boi, *ids[0].tolist(), model.vocab.eoi]
