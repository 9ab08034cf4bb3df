"""Multiple choice by likelihood: the batched, padded, jitted option log-likelihoods against a float64 numpy
recomputation from each unpadded sequence's logits, on a tiny random LM; the choice rules; the evaluator end to end
with a tiny tokenizer; question-file errors.

Tolerance: |ll - float64 reference| <= 1e-4 (float32 log-softmax inside jit vs float64 in numpy, sums of <= 6
log-probabilities of a 200-word vocabulary).
"""

import json

import jax
import ml_collections
import numpy as np
import pytest

from teal_jax.evaluate import multiple_choice as mc
from teal_jax.evaluate.evaluators import make_evaluators
from teal_jax.inference.lm import LanguageModel
from teal_jax.models.transformer import TransformerConfig, TransformerLM

VOCAB = 200


@pytest.fixture(scope="module")
def tiny_lm():
    cfg = TransformerConfig(vocab_size=VOCAB, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                            mlp_dim=64, dtype="float32", init_std=0.2)
    params = TransformerLM(cfg).init(jax.random.key(0), np.zeros((1, 4), np.int32))["params"]
    return LanguageModel(cfg, params, None, None)


def _reference(model, prompt, option):
    """float64 log-likelihood of ``option`` after ``prompt``, from that sequence's float32 logits (one row, placed
    at the start of a fixed 128-id window so every call shares one compilation; the model is causal), log-softmax
    and gather in float64 numpy."""
    seq = list(prompt) + list(option)
    row = np.zeros((1, 128), np.int32)
    row[0, : len(seq)] = seq
    lg = model.logits(row)[0, : len(seq)].astype(np.float64)
    lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
    logp = lg - lse[:, None]
    n = len(prompt)
    return sum(logp[n - 1 + t, option[t]] for t in range(len(option)))


def test_batched_loglikelihoods_match_float64_reference(tiny_lm):
    rng = np.random.default_rng(0)
    prompts, options = [], []
    for _ in range(7):  # ragged prompts, option counts and option lengths; 7 x ~3 rows over batches of 4
        prompts.append(rng.integers(1, VOCAB, int(rng.integers(1, 40))).tolist())
        options.append([rng.integers(1, VOCAB, int(rng.integers(1, 7))).tolist()
                        for _ in range(int(rng.integers(2, 5)))])
    with jax.default_matmul_precision("highest"):
        got = mc.option_loglikelihoods(mc.model_scorer(tiny_lm), prompts, options, batch_size=4)
        want = [np.asarray([_reference(tiny_lm, p, o) for o in opts]) for p, opts in zip(prompts, options, strict=True)]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-4)
    assert len({round(float(x), 3) for g in got for x in g}) > 10  # the scores really differ between options
    # the chosen option is the reference's argmax (sum and per-token normalised)
    np.testing.assert_array_equal(mc.choose(got), [int(np.argmax(w)) for w in want])
    lengths = [[len(o) for o in opts] for opts in options]
    np.testing.assert_array_equal(mc.choose(got, lengths),
                                  [int(np.argmax(w / np.asarray(n))) for w, n in zip(want, lengths, strict=True)])


def test_choose_length_normalisation_changes_the_winner():
    ll = [np.asarray([-3.0, -4.0])]
    assert mc.choose(ll).tolist() == [0]
    assert mc.choose(ll, [[1, 4]]).tolist() == [1]  # -3 per token vs -1 per token


class _WordTokenizer:
    """One id per character class: enough to turn prompts and options into ids deterministically."""

    bos_id = 1

    def encode(self, text):
        return [2 + (ord(c) % (VOCAB - 2)) for c in text]


def test_evaluator_end_to_end_against_reference(tiny_lm, tmp_path):
    questions = [{"question": "Which is a mammal?", "choices": ["whale", "shark", "trout"], "answer": 0},
                 {"question": "2 + 2 = ?", "choices": ["4", "five"], "answer": 1, "context": "arithmetic"},
                 {"question": "Sky colour?", "choices": ["blue", "green", "red", "grey"], "answer": 2}]
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps(q) for q in questions))
    tiny_lm.tokenizer = _WordTokenizer()
    try:
        (ev,) = make_evaluators(ml_collections.ConfigDict({"evals": {"sqa": {
            "kind": "multiple_choice", "data": str(path), "normalize": "tokens", "batch_size": 4}}}))
        with jax.default_matmul_precision("highest"):
            result = ev.run(tiny_lm, workdir=str(tmp_path / "run"), step=3)
            tok = tiny_lm.tokenizer
            preds = []
            for q in questions:
                listing = " ".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(q["choices"]))
                text = ev.prompt_format.format(question=q["question"], context=q.get("context", ""), options=listing)
                prompt = [tok.bos_id, *tok.encode(text)]
                opts = [tok.encode(f" {c}") for c in q["choices"]]
                preds.append(int(np.argmax([_reference(tiny_lm, prompt, o) / len(o) for o in opts])))
    finally:
        tiny_lm.tokenizer = None
    want = float(np.mean([p == q["answer"] for p, q in zip(preds, questions, strict=True)]))
    assert result["accuracy"] == pytest.approx(want) and result["accuracy_per_token"] == result["accuracy"]
    assert result["n"] == 3 and result["chance"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 4) / 3)
    rows = [json.loads(x) for x in (tmp_path / "run/eval/sqa/step_3/predictions.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in rows] == preds


def test_scienceqa_problems_json_and_errors(tmp_path):
    problems = {"5": {"question": "Q?", "choices": ["a", "b"], "answer": 1, "hint": "h", "image": "image.png",
                      "split": "test"},
                "6": {"question": "R?", "choices": ["c", "d"], "answer": 0, "hint": "", "image": None,
                      "split": "train"}}
    path = tmp_path / "problems.json"
    path.write_text(json.dumps(problems))
    (q,) = mc.read_questions(str(path), "test")
    assert q == {"id": "5", "question": "Q?", "context": "h", "choices": ["a", "b"], "answer": 1,
                 "image": "5/image.png"}
    path.write_text(json.dumps({"1": {"question": "Q", "choices": ["a", "b"], "answer": 2}}))
    with pytest.raises(ValueError, match="question 1: 'answer'=2 must be an index"):
        mc.read_questions(str(path))
    with pytest.raises(ValueError, match="question 0 option 1 has no ids"):
        mc.option_loglikelihoods(lambda *a: None, [[1]], [[[2], []]])
    with pytest.raises(ValueError, match="normalize='bytes'"):
        (ev,) = make_evaluators(ml_collections.ConfigDict({"evals": {"m": {
            "kind": "multiple_choice", "data": str(path), "normalize": "bytes"}}}))
        ev.run(None, workdir=str(tmp_path), step=0)
