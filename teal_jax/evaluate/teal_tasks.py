"""The TEAL digit-task figures on held-out data: captioning, text-to-image, ASR, TTS and reasoning.

Every function takes a model with the :class:`TealModel` methods it uses (any object with them works, which is how
the tests check the scoring rules) plus held-out arrays, returns plain Python numbers/lists/dicts (JSON-serialisable)
and can write samples to ``sample_dir``. Generation options (``guidance_scale``, ``temperature``, ``top_k``,
``top_p``, ``seed``) pass through ``**sampling`` to the model's method. The evaluators
(:mod:`teal_jax.evaluate.teal_evaluators`) call these on the held-out data a run's ``config.evals`` names.

Definitions (all over the examples given; the word and caption rules are :mod:`teal_jax.evaluate.scoring`'s):

- **caption accuracy**: :func:`scoring.caption_correct` of each caption. **caption exact match**:
  ``words(caption) == words(reference)``, the reference defaulting to ``DIGITS[label]``.
- **text-to-image accuracy**: the independent digit classifier's prediction on the generated image equals the
  digit of the prompt (prompt = ``prompt_format.format(word=DIGITS[d])``, ``per_class`` images per digit).
- **ASR WER**: :func:`scoring.word_error_rate` of the transcripts, split by reference length too.
- **TTS accuracy**: the independent spoken-word classifier (``teal_jax.evaluate.speech_classifier``) on the
  generated speech (resampled to its 16 kHz when the codec's rate differs) equals the prompt's digit.
- **reasoning accuracy**: prompts ``templates.sum_question(a, b, modality)`` ("the sum of three and four is") for
  the held-out ``templates.REASONING_EVAL_PAIRS``; correct iff the classifier (digit / speech) says ``a + b``.
- **conditioning by likelihood** (no sampling; sensitive where generation is at chance): *caption forced choice*:
  the digit word whose first text id has the highest logit right after the caption prompt equals the label;
  *t2i likelihood accuracy*: ``argmin_d NLL(image codes | t2i prompt of DIGITS[d])`` equals the label, with the
  mean NLL (nats per image) under the true prompt, under the null prompt and averaged over the ten prompts; a model
  that ignores the text has NLL(true) == NLL(mean) and accuracy at chance.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from teal_jax.data import templates as templates_lib
from teal_jax.data.templates import DIGITS
from teal_jax.evaluate.samples import write_image_grid, write_spectrogram
from teal_jax.evaluate.scoring import (
    caption_correct,
    check_labels,
    confusion,
    per_class_accuracy,
    spread,
    word_error_rate,
    words,
    write_tsv,
)


def caption_accuracy(model, images, labels, *, references: Sequence[str] | None = None,
                     sample_dir: str | None = None, max_samples: int = 16, **sampling) -> dict[str, Any]:
    """Captions held-out ``images`` ([n, H, W] / [n, H, W, C]) with digit ``labels`` [n] -> {'accuracy',
    'exact_match', 'n', 'per_class'}. Writes ``captions.tsv`` (all) and the first ``max_samples`` images as PNG to
    ``sample_dir``."""
    images = np.asarray(images)
    if images.ndim < 3 or images.shape[0] == 0:
        raise ValueError(f"caption_accuracy: images must be a non-empty batch [n, H, W(, C)], got {images.shape}")
    y = check_labels(labels, images.shape[0], "caption_accuracy")
    refs = [DIGITS[d] for d in y] if references is None else list(references)
    if len(refs) != len(y):
        raise ValueError(f"caption_accuracy: {len(y)} images but {len(refs)} references")
    captions = model.caption(images, **sampling)
    correct = np.asarray([caption_correct(c, d) for c, d in zip(captions, y, strict=True)])
    exact = np.asarray([words(c) == words(r) for c, r in zip(captions, refs, strict=True)])
    if sample_dir:
        os.makedirs(sample_dir, exist_ok=True)
        write_tsv(os.path.join(sample_dir, "captions.tsv"), ("index", "label", "correct", "caption"),
                   [(i, DIGITS[d], int(c), cap) for i, (d, c, cap) in enumerate(zip(y, correct, captions,
                                                                                     strict=True))])
        k = min(max_samples, len(y))
        if k:
            model.save_png(images[:k].astype(np.uint8) if images.dtype == np.uint8
                           else np.clip(np.round(images[:k] * 255), 0, 255).astype(np.uint8),
                           [os.path.join(sample_dir, f"caption_{i:03d}_{DIGITS[y[i]]}.png") for i in range(k)])
    return {"accuracy": float(correct.mean()), "exact_match": float(exact.mean()), "n": int(len(y)),
            "per_class": per_class_accuracy(y, correct)}


def _image_ids(model, images) -> np.ndarray:
    x = np.asarray(images)
    return model.vocab.image_to_unified(np.asarray(model.image_tokenizer.encode(x[None] if x.ndim == 2 else x)))


def caption_forced_choice(model, images, labels, *, batch_size: int = 64) -> dict[str, Any]:
    """Caption forced choice over the ten digit words (see the module docstring) -> {'accuracy', 'n',
    'predictions'}. The words' first text ids must differ."""
    y = check_labels(labels, len(images), "caption_forced_choice")
    x = np.asarray(images)
    ids, feats = model.condition_ids("image", x[None] if x.ndim == 2 else x)  # the input tokenizer's, if any
    first = [model.text_tokenizer.encode(w)[0] for w in DIGITS]
    if len(set(first)) != len(first):
        raise ValueError("caption_forced_choice: the digit words do not start with ten different text ids")
    preds = []
    for s in range(0, len(ids), batch_size):
        prompts, prefill = model.condition_prompts("caption", ids[s : s + batch_size],
                                                   None if feats is None else feats[s : s + batch_size])
        extra = {k: np.stack(v) for k, v in (prefill or {}).items()}
        preds.append(np.argmax(model.logits(np.asarray(prompts), **extra)[:, -1, first], -1))
    p = np.concatenate(preds)
    return {"accuracy": float((p == y).mean()), "n": int(len(y)), "predictions": p.tolist()}


def _span_nll(model, prompts: Sequence[Sequence[int]], spans: np.ndarray, closer: int) -> np.ndarray:
    """Summed NLL (nats, float64) of each span's ids after its prompt (one prompt length per call)."""
    toks = np.asarray([[*p, *s, closer] for p, s in zip(prompts, spans, strict=True)], np.int32)
    n = len(prompts[0])
    lg = model.logits(toks)[:, n - 1 : -2].astype(np.float64)  # the logits that predict the span ids
    lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
    picked = np.take_along_axis(lg, toks[:, n : -1, None].astype(np.int64), -1)[..., 0]
    return (lse - picked).sum(-1)


def t2i_likelihood_accuracy(model, images, labels, *, prompt_format: str = "{word}",
                            batch_size: int = 64) -> dict[str, Any]:
    """Text-to-image conditioning measured by likelihood (see the module docstring) -> {'accuracy', 'n',
    'nll_true', 'nll_null', 'nll_mean'}."""
    y = check_labels(labels, len(images), "t2i_likelihood_accuracy")
    ids = _image_ids(model, images)
    tpl, eoi = model.templates, model.vocab.eoi
    nll = np.zeros((len(ids), 10))
    null = np.zeros(len(ids))
    for s in range(0, len(ids), batch_size):
        chunk = ids[s : s + batch_size]
        for d in range(10):
            prompt = tpl.prompt("t2i", model.text_tokenizer.encode(prompt_format.format(word=DIGITS[d])))
            nll[s : s + len(chunk), d] = _span_nll(model, [prompt] * len(chunk), chunk, eoi)
        null[s : s + len(chunk)] = _span_nll(model, [tpl.null_prompt("t2i")] * len(chunk), chunk, eoi)
    true = nll[np.arange(len(y)), y]
    return {"accuracy": float((nll.argmin(1) == y).mean()), "n": int(len(y)), "nll_true": float(true.mean()),
            "nll_null": float(null.mean()), "nll_mean": float(nll.mean())}



def judge_images(model, classifier, prompts: Sequence[str], **sampling) -> tuple[np.ndarray, np.ndarray]:
    """One generated image per prompt and the digit classifier's reading of it -> (uint8 images, int64 [n])."""
    images = np.asarray(model.generate_image(list(prompts), **sampling))
    return images, np.asarray(classifier.predict(images)).astype(np.int64).reshape(-1)


def judge_speech(model, speech_classifier, prompts: Sequence[str], **sampling) -> tuple[np.ndarray, np.ndarray]:
    """One generated utterance per prompt and the spoken-word classifier's reading of it (resampled to its 16 kHz
    when the codec's rate differs) -> (float32 [n, samples] at ``model.sample_rate``, int64 [n])."""
    from teal_jax.evaluate import speech_classifier as sc

    waves = np.asarray(model.generate_speech(list(prompts), **sampling), np.float32)
    clf_in = waves
    if model.sample_rate != sc.SAMPLE_RATE:
        from teal_jax.media.audio import resample

        clf_in = resample(waves, model.sample_rate, sc.SAMPLE_RATE)
    return waves, np.asarray(speech_classifier.predict(clf_in)).astype(np.int64).reshape(-1)


def _judged(what: str, generate_and_judge, prompts: Sequence[str], labels, sample_dir: str | None, prefix: str,
            max_samples: int, write_samples) -> dict[str, Any]:
    """The common part of judged generation: check the prompts and labels, generate and judge, score; with a
    ``sample_dir``, write ``{prefix}.tsv`` and let ``write_samples(outputs, y, pred, keep, stems)`` write the kept
    samples (``max_samples``, round-robin over the asked digits) under ``{prefix}_{i}_{asked}_as_{predicted}``."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError(f"{what}: no prompts")
    y = check_labels(labels, len(prompts), what)
    outputs, pred = generate_and_judge(prompts)
    correct = pred == y
    if sample_dir:
        os.makedirs(sample_dir, exist_ok=True)
        write_tsv(os.path.join(sample_dir, f"{prefix}.tsv"), ("index", "prompt", "asked", "predicted"),
                  [(i, p, DIGITS[a], DIGITS[b]) for i, (p, a, b) in enumerate(zip(prompts, y, pred, strict=True))])
        keep = spread(y, max_samples)
        stems = [os.path.join(sample_dir, f"{prefix}_{i:03d}_{DIGITS[y[i]]}_as_{DIGITS[pred[i]]}") for i in keep]
        write_samples(outputs, y, pred, keep, stems)
    return {"accuracy": float(correct.mean()), "n": int(len(y)), "per_class": per_class_accuracy(y, correct),
            "confusion": confusion(y, pred)}


def image_prompt_accuracy(model, classifier, prompts: Sequence[str], labels, *, sample_dir: str | None = None,
                          prefix: str = "t2i", max_samples: int = 20, **sampling) -> dict[str, Any]:
    """Generates one image per prompt; correct iff ``classifier.predict`` gives the prompt's digit label.
    -> {'accuracy', 'n', 'per_class', 'confusion' (10x10, rows = asked digit)}. Writes ``max_samples`` images
    (``{prefix}_{i}_{asked}_as_{predicted}.png``, taken round-robin over the asked digits), ``{prefix}.tsv`` and
    ``{prefix}_grid.png`` (every image, one row per asked digit: :func:`write_image_grid`) to ``sample_dir``."""

    def write(images, y, pred, keep, stems):
        model.save_png(images[keep], [f"{stem}.png" for stem in stems])
        write_image_grid(os.path.join(sample_dir, f"{prefix}_grid.png"), images, y, pred,
                         title=f"{prefix}: one row per prompted digit; green = judged right, red = judged wrong")

    return _judged("image_prompt_accuracy", lambda p: judge_images(model, classifier, p, **sampling), prompts,
                   labels, sample_dir, prefix, max_samples, write)


def digit_prompts(per_class: int, prompt_format: str = "{word}") -> tuple[list[str], list[int]]:
    """``per_class`` prompts for each digit 0..9 (digit-major) and their labels."""
    if per_class < 1:
        raise ValueError(f"per_class={per_class} must be >= 1")
    labels = [d for d in range(10) for _ in range(per_class)]
    return [prompt_format.format(word=DIGITS[d]) for d in labels], labels


def lm_sum_answers(model, pairs: Sequence[tuple[int, int]] = templates_lib.REASONING_EVAL_PAIRS,
                   max_new_tokens: int = 4) -> dict[str, Any]:
    """Does the text LM itself know the answers of the reasoning prompts? Greedy text continuation (the LM's own
    distribution, bitwise while it is frozen) of each ``sum_question``; correct iff the first word generated is the
    digit word of a + b. Separates 'the LM does not know the sum' from 'the image/audio span does not read it'."""
    prompts, answers = reasoning_prompts("image", pairs)
    outs = model.generate_text(prompts, max_new_tokens=max_new_tokens)
    first = [(words(o) or [""])[0] for o in outs]
    correct = np.asarray([f == DIGITS[a] for f, a in zip(first, answers, strict=True)])
    return {"accuracy": float(correct.mean()), "n": len(prompts), "continuations": list(outs)}


def reasoning_prompts(modality: str, pairs: Sequence[tuple[int, int]] = templates_lib.REASONING_EVAL_PAIRS,
                      per_pair: int = 1, *, answer_in_prompt: bool = False) -> tuple[list[str], list[int]]:
    """``templates.sum_question`` prompts for ``pairs`` (``per_pair`` each) and their answers a + b.

    ``answer_in_prompt`` (a diagnostic): append the answer's digit word, as the frozen LM itself would continue
    ('the sum of three and four is seven'). Judged accuracy with it vs without separates 'the span cannot draw the
    digit once it is named' from 'the span does not read the answer off the LM's state'."""
    if per_pair < 1:
        raise ValueError(f"per_pair={per_pair} must be >= 1")
    pairs = [(int(a), int(b)) for a, b in pairs for _ in range(per_pair)]
    prompts = [templates_lib.sum_question(a, b, modality) for a, b in pairs]
    if answer_in_prompt:
        prompts = [f"{q} {DIGITS[a + b]}" for q, (a, b) in zip(prompts, pairs, strict=True)]
    return prompts, [a + b for a, b in pairs]


def text_to_image_accuracy(model, classifier, *, per_class: int = 10, prompt_format: str = "{word}",
                           sample_dir: str | None = None, **sampling) -> dict[str, Any]:
    """Text-to-image accuracy: ``per_class`` images for each digit word (see module docstring)."""
    prompts, labels = digit_prompts(per_class, prompt_format)
    return image_prompt_accuracy(model, classifier, prompts, labels, sample_dir=sample_dir, prefix="t2i",
                                 **sampling)


def reasoning_image_accuracy(model, classifier, *, pairs=templates_lib.REASONING_EVAL_PAIRS, per_pair: int = 4,
                             sample_dir: str | None = None, answer_in_prompt: bool = False,
                             **sampling) -> dict[str, Any]:
    """'the sum of a and b is' -> an image the digit classifier reads as a + b (held-out pairs);
    ``answer_in_prompt``: see :func:`reasoning_prompts`."""
    prompts, labels = reasoning_prompts("image", pairs, per_pair, answer_in_prompt=answer_in_prompt)
    return image_prompt_accuracy(model, classifier, prompts, labels, sample_dir=sample_dir,
                                 prefix="reasoning_image", **sampling)



def speech_prompt_accuracy(model, speech_classifier, prompts: Sequence[str], labels, *,
                           sample_dir: str | None = None, prefix: str = "tts", max_samples: int = 20,
                           **sampling) -> dict[str, Any]:
    """Generates speech per prompt; correct iff the spoken-word classifier gives the prompt's digit label.
    -> {'accuracy', 'n', 'per_class', 'confusion'}. Writes ``max_samples`` WAVs (taken round-robin over the asked
    digits), each with its spectrogram beside it (same name, ``.png``: :func:`write_spectrogram`), and
    ``{prefix}.tsv`` to ``sample_dir``."""

    def write(waves, y, pred, keep, stems):
        model.save_wav(waves[keep], [f"{stem}.wav" for stem in stems])
        for w, stem in zip(waves[keep], stems, strict=True):  # the spectrogram beside each WAV
            write_spectrogram(f"{stem}.png", w, model.sample_rate)

    return _judged("speech_prompt_accuracy", lambda p: judge_speech(model, speech_classifier, p, **sampling),
                   prompts, labels, sample_dir, prefix, max_samples, write)


def tts_accuracy(model, speech_classifier, *, per_class: int = 10, prompt_format: str = "{word}",
                 sample_dir: str | None = None, **sampling) -> dict[str, Any]:
    """TTS accuracy: ``per_class`` utterances for each digit word, judged by the spoken-word classifier."""
    prompts, labels = digit_prompts(per_class, prompt_format)
    return speech_prompt_accuracy(model, speech_classifier, prompts, labels, sample_dir=sample_dir, prefix="tts",
                                  **sampling)


def reasoning_speech_accuracy(model, speech_classifier, *, pairs=templates_lib.REASONING_EVAL_PAIRS,
                              per_pair: int = 4, sample_dir: str | None = None, answer_in_prompt: bool = False,
                              **sampling) -> dict[str, Any]:
    """'the sum of a and b is' -> speech the spoken-word classifier hears as a + b (held-out pairs);
    ``answer_in_prompt``: see :func:`reasoning_prompts`."""
    prompts, labels = reasoning_prompts("audio", pairs, per_pair, answer_in_prompt=answer_in_prompt)
    return speech_prompt_accuracy(model, speech_classifier, prompts, labels, sample_dir=sample_dir,
                                  prefix="reasoning_speech", **sampling)



def asr_wer(model, waveforms, transcripts: Sequence[str], sample_rate: int, *, sample_dir: str | None = None,
            **sampling) -> dict[str, Any]:
    """Transcribes held-out speech (``waveforms``: [n, samples] or a list of clips) and scores it against
    ``transcripts`` (see :func:`word_error_rate`). Writes ``asr.tsv`` (reference, hypothesis) to ``sample_dir``."""
    transcripts = list(transcripts)
    n = len(waveforms)
    if n != len(transcripts):
        raise ValueError(f"asr_wer: {n} clips but {len(transcripts)} transcripts")
    hyps = model.transcribe(waveforms, sample_rate, **sampling)
    result = word_error_rate(transcripts, hyps)
    # Where the errors are: one-word references (the answer is predicted at the <eoa> position, a modality-expert
    # position) vs longer ones (every word after the first is predicted at a text position, by the frozen LM).
    for name, keep in (("single_word", lambda r: len(words(r)) == 1), ("multi_word", lambda r: len(words(r)) > 1)):
        idx = [i for i, r in enumerate(transcripts) if keep(r)]
        result[f"wer_{name}"] = (word_error_rate([transcripts[i] for i in idx], [hyps[i] for i in idx])["wer"]
                                 if idx else float("nan"))
        result[f"n_{name}"] = len(idx)
    if sample_dir:
        os.makedirs(sample_dir, exist_ok=True)
        write_tsv(os.path.join(sample_dir, "asr.tsv"), ("index", "reference", "hypothesis"),
                   [(i, r, h) for i, (r, h) in enumerate(zip(transcripts, hyps, strict=True))])
    return result

