"""The lm-evaluation-harness adapter (teal_jax.evaluate.lm_harness) against the harness' own HF model (``HFLM``).

The same tiny random ``transformers.LlamaForCausalLM`` (built offline from a config, with a SentencePiece tokenizer
trained here) is scored by ``HFLM`` (torch, the harness' reference path) and by ``HarnessLM`` over the weights
imported with ``teal_jax.convert.llama``: log-likelihoods agree within 1e-4 (float32 on both sides), greedy flags and
greedy generations are equal, rolling log-likelihoods agree over several windows, and a multiple-choice task read
from local files (no download) gives the same accuracy through ``simple_evaluate`` and through the ``lm_harness``
evaluator built from config.
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
import pytest

pytest.importorskip("lm_eval")  # in the test extra; this only guards a partial install

from lm_eval.api.instance import Instance  # noqa: E402

from teal_jax.convert.llama import import_llama  # noqa: E402
from teal_jax.data.text_corpus import write_corpus  # noqa: E402
from teal_jax.evaluate import lm_harness  # noqa: E402
from teal_jax.evaluate.evaluators import make_evaluators  # noqa: E402
from teal_jax.inference.lm import LanguageModel  # noqa: E402
from teal_jax.tokenizers.text import TextTokenizer  # noqa: E402

WINDOW = 48  # the Llama's context: rolling windows and truncation are exercised

PAIRS = [("the number is", " three"), ("seven plus one ", "is eight"), ("", "hello there"),
         ("a b c d e f g h i j k l m n o p q r s t u v w x y z " * 3, "and so on"), ("forty", " two")]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import torch
    import transformers
    from lm_eval.models.huggingface import HFLM

    root = tmp_path_factory.mktemp("harness")
    corpus = write_corpus(str(root / "corpus.jsonl"), num_docs=200)
    tok = TextTokenizer.train([corpus], 320, str(root / "spm"))
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=WINDOW, rms_norm_eps=1e-5, tie_word_embeddings=False))
    hf.eval()
    hf.save_pretrained(str(root / "hf"), safe_serialization=True)
    os.replace(tok.path, str(root / "hf" / "tokenizer.model"))  # where a HF Llama directory keeps it
    tok = TextTokenizer.load(str(root / "hf" / "tokenizer.model"))
    hf_tok = transformers.LlamaTokenizer.from_pretrained(str(root / "hf"), add_bos_token=True)
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id) == (tok.bos_id, tok.eos_id)
    for text in [c + x for c, x in PAIRS]:  # the two tokenizers agree on every text used here
        assert hf_tok.encode(text) == [tok.bos_id, *tok.encode(text)], text
    cfg, params = import_llama(str(root / "hf"))
    ours = LanguageModel(cfg, params, tok)
    ref = HFLM(pretrained=hf, tokenizer=hf_tok, batch_size=4, max_length=WINDOW, device="cpu", dtype="float32")
    return ours, ref, root


def _requests(kind, args):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_loglikelihoods_equal_the_harness_hf_model(models):
    ours, ref, _ = models
    lm = lm_harness.HarnessLM(ours, batch_size=4)
    got = lm.loglikelihood(_requests("loglikelihood", PAIRS))
    want = ref.loglikelihood(_requests("loglikelihood", PAIRS))
    assert len(got) == len(want) == len(PAIRS)
    for (g, gg), (w, wg) in zip(got, want, strict=True):
        assert abs(g - w) <= 1e-4 * max(1.0, abs(w)) and gg == wg, (got, want)
    # The continuation is what is scored: a different continuation scores differently.
    other = lm.loglikelihood(_requests("loglikelihood", [("the number is", " seven")]))[0][0]
    assert abs(other - got[0][0]) > 1e-3


def test_rolling_loglikelihoods_and_greedy_generation_equal_the_harness_hf_model(models):
    ours, ref, _ = models
    lm = lm_harness.HarnessLM(ours, batch_size=4)
    texts = [(" ".join(["one two three four five six seven eight nine ten"] * 6),), ("the number is forty two",)]
    assert len(lm.tok_encode(texts[0][0])) > 2 * WINDOW  # several windows
    assert all(lm.tok_encode(t) == ref.tok_encode(t) for (t,) in texts)  # (a trailing space would differ: the
    # converted HF tokenizer keeps it, SentencePiece drops it; a tokenizer matter, not the adapter's)
    got = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", texts))
    want = ref.loglikelihood_rolling(_requests("loglikelihood_rolling", texts))
    np.testing.assert_allclose(got, want, rtol=1e-4)
    # Greedy generation: the same ids as transformers' generate on the same weights (compared as ids: a random
    # model emits byte-fallback pieces, which SentencePiece and the converted HF tokenizer decode differently), and
    # the text is cut at eos and then at the task's stop strings.
    import torch

    for context in ("the number is", "seven plus"):
        ids = lm.tok_encode(context)
        with torch.no_grad():
            want = ref.model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                                      pad_token_id=0)[0, len(ids):].tolist()
        assert ours.generate([ids], max_new_tokens=8) == [want]
        text = lm.tok_decode(want)
        stop = text[len(text) // 2 :][:2] or "x"
        gen = lm.generate_until(_requests("generate_until", [(context, {"until": [stop], "max_gen_toks": 8}),
                                                             (context, {"until": ["\n"], "max_gen_toks": 8})]))
        assert gen == [text.split(stop)[0], text.split("\n")[0]]


def _write_task(root) -> str:
    rng = np.random.default_rng(0)
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    docs = [{"question": f"the number after {words[i]} is", "choices": [f" {w}" for w in rng.permutation(words)[:3]],
             "answer": int(rng.integers(0, 3))} for i in range(8)]
    data = root / "tiny_mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    tasks = root / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "tiny_mc.yaml").write_text(f"""task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {root / "hf_datasets_cache"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
""")
    return str(tasks)


def test_a_local_task_scores_the_same_through_the_evaluator_and_the_harness_hf_model(models, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    ours, ref, root = models
    tasks = _write_task(tmp_path)
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=tasks, include_defaults=False)
    want = simple_evaluate(model=ref, tasks=["tiny_mc"], task_manager=manager,
                           bootstrap_iters=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                           fewshot_random_seed=0)
    config = ml_collections.ConfigDict({"evals": {"text": {"kind": "lm_harness", "tasks": ("tiny_mc",),
                                                           "include_path": tasks, "include_defaults": False,
                                                           "batch_size": 4}}})
    (ev,) = make_evaluators(config)
    result = ev.run(ours, workdir=str(tmp_path / "run"), step=3)
    assert result["tiny_mc/acc"] == pytest.approx(want["results"]["tiny_mc"]["acc,none"], abs=1e-9)
    assert result["tiny_mc/acc_norm"] == pytest.approx(want["results"]["tiny_mc"]["acc_norm,none"], abs=1e-9)
    saved = json.load(open(os.path.join(ev.output_dir(str(tmp_path / "run"), 3), "lm_eval.json")))
    assert saved["results"]["tiny_mc"]["acc,none"] == result["tiny_mc/acc"]
    # Bad input names the field / the task.
    with pytest.raises(ValueError, match="unknown task"):
        lm_harness.evaluate(ours, ["no_such_task_xyz"], include_path=tasks, include_defaults=False)
    bad = ml_collections.ConfigDict({"evals": {"text": {"kind": "lm_harness"}}})
    with pytest.raises(ValueError, match="config.evals.text.tasks"):
        make_evaluators(bad)[0].run(ours, workdir=str(tmp_path / "run"), step=0)
    with pytest.raises(ValueError, match="max_length=4096 exceeds"):
        lm_harness.HarnessLM(ours, max_length=4096)
