"""The TEAL demo's evaluation on held-out data: captioning, text-to-image, ASR, TTS, reasoning and text perplexity.

Every function takes a model with the :class:`teal_jax.teal.TealModel` methods it uses (any object with them works,
which is how the tests check the scoring rules) plus held-out arrays, returns plain Python numbers/lists/dicts
(JSON-serialisable) and can write samples to ``sample_dir``. Generation options (``guidance_scale``,
``temperature``, ``top_k``, ``top_p``, ``seed``) pass through ``**sampling`` to the model's method.

Definitions (all over the examples given; ``DIGITS = ("zero", ..., "nine")``):

- words(text): lowercase ``[a-z0-9']+`` tokens; a lone numeral ``0``..``9`` counts as its digit word.
- **caption accuracy**: a caption is correct iff the set of digit words among its words is exactly
  ``{DIGITS[label]}`` (the right digit named, no other digit named; other words are free, so "a seven" and "seven"
  are correct, "seven or one" is not). **caption exact match**: ``words(caption) == words(reference)``, the
  reference defaulting to ``DIGITS[label]``.
- **text-to-image accuracy**: the independent digit classifier's prediction on the generated image equals the
  digit of the prompt (prompt = ``prompt_format.format(word=DIGITS[d])``, ``per_class`` images per digit).
- **ASR WER**: ``jiwer`` word error rate (substitutions + deletions + insertions over reference words, pooled over
  the corpus) of ``words(hypothesis)`` against ``words(reference)``; also the sentence exact-match rate.
- **TTS accuracy**: the independent spoken-word classifier (``teal_jax.evaluate.speech_classifier``) on the
  generated speech (resampled to its 16 kHz when the codec's rate differs) equals the prompt's digit.
- **reasoning accuracy**: prompts ``templates.sum_question(a, b, modality)`` ("the sum of three and four is") for
  the held-out ``templates.REASONING_EVAL_PAIRS``; correct iff the classifier (digit / speech) says ``a + b``.
- **guidance selection** (:func:`choose_guidance`): the classifier-free guidance scale of a modality is the scale of
  a small grid (``GUIDANCE_SCALES``) with the highest judged accuracy on a *validation* set: the ten digit prompts and
  sum questions over ``templates.REASONING_VALIDATION_PAIRS`` (training pairs; a held-out pair is an error), sampled
  with a seed other than the held-out evaluation's; ties go to the smaller scale. The held-out figures are then
  measured once, with the chosen scale.
- **conditioning by likelihood** (no sampling; sensitive where generation is at chance): *caption forced choice*:
  the digit word whose first text id has the highest logit right after the caption prompt equals the label;
  *t2i likelihood accuracy*: ``argmin_d NLL(image codes | t2i prompt of DIGITS[d])`` equals the label, with the
  mean NLL (nats per image) under the true prompt, under the null prompt and averaged over the ten prompts; a model
  that ignores the text has NLL(true) == NLL(mean) and accuracy at chance.
- **text perplexity**: ``exp(mean NLL)`` of ``bos text eos`` (targets: the text ids and eos) under the base LM
  (``TransformerLM`` with the base parameters) and under the TEAL model's text rows (log-softmax over
  ``logits[..., :text_size]``), with whether the two logit arrays are bitwise equal.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from teal_jax import lineage
from teal_jax.data import templates as templates_lib
from teal_jax.data.templates import DIGITS

_WORD = re.compile(r"[a-z0-9']+")


# ---- scoring rules -------------------------------------------------------------------------------------------------
def words(text: str) -> list[str]:
    """Lowercase word tokens of ``text``; a lone numeral 0-9 becomes its digit word."""
    out = []
    for w in _WORD.findall(str(text).lower()):
        out.append(DIGITS[int(w)] if len(w) == 1 and w.isdigit() else w)
    return out


def digit_words(text: str) -> set[str]:
    """The digit words named in ``text``."""
    return {w for w in words(text) if w in DIGITS}


def caption_correct(caption: str, label: int) -> bool:
    """True iff ``caption`` names exactly one digit, the right one (see module docstring)."""
    return digit_words(caption) == {DIGITS[int(label)]}


def _check_labels(labels, n: int, what: str) -> np.ndarray:
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"{what}: {n} examples but {y.shape[0]} labels")
    if np.any((y < 0) | (y > 9)):
        raise ValueError(f"{what}: labels must be digits 0..9, got {sorted(set(y.tolist()))[:10]}")
    return y


def _per_class(labels: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    return {DIGITS[d]: float(np.mean(correct[labels == d])) for d in range(10) if np.any(labels == d)}


def _confusion(labels: np.ndarray, predictions: np.ndarray) -> list[list[int]]:
    m = np.zeros((10, 10), np.int64)
    np.add.at(m, (labels, predictions), 1)
    return m.tolist()


def _spread(labels: np.ndarray, k: int) -> np.ndarray:
    """Indices of at most ``k`` examples taken round-robin over the labels (first of each label, then second, ...),
    sorted: the samples written as files cover every asked digit even when the prompts are digit-major."""
    y = np.asarray(labels).reshape(-1)
    rank = np.zeros(len(y), np.int64)  # how many earlier examples share the label
    for d in np.unique(y):
        idx = np.nonzero(y == d)[0]
        rank[idx] = np.arange(len(idx))
    order = np.lexsort((np.arange(len(y)), rank))
    return np.sort(order[: max(0, int(k))])


def _write_tsv(path: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("\t".join(header) + "\n")
        for r in rows:
            f.write("\t".join(str(v).replace("\t", " ").replace("\n", " ") for v in r) + "\n")


# ---- captioning ----------------------------------------------------------------------------------------------------
def caption_accuracy(model, images, labels, *, references: Sequence[str] | None = None,
                     sample_dir: str | None = None, max_samples: int = 16, **sampling) -> dict[str, Any]:
    """Captions held-out ``images`` ([n, H, W] / [n, H, W, C]) with digit ``labels`` [n] -> {'accuracy',
    'exact_match', 'n', 'per_class'}. Writes ``captions.tsv`` (all) and the first ``max_samples`` images as PNG to
    ``sample_dir``."""
    images = np.asarray(images)
    if images.ndim < 3 or images.shape[0] == 0:
        raise ValueError(f"caption_accuracy: images must be a non-empty batch [n, H, W(, C)], got {images.shape}")
    y = _check_labels(labels, images.shape[0], "caption_accuracy")
    refs = [DIGITS[d] for d in y] if references is None else list(references)
    if len(refs) != len(y):
        raise ValueError(f"caption_accuracy: {len(y)} images but {len(refs)} references")
    captions = model.caption(images, **sampling)
    correct = np.asarray([caption_correct(c, d) for c, d in zip(captions, y, strict=True)])
    exact = np.asarray([words(c) == words(r) for c, r in zip(captions, refs, strict=True)])
    if sample_dir:
        os.makedirs(sample_dir, exist_ok=True)
        _write_tsv(os.path.join(sample_dir, "captions.tsv"), ("index", "label", "correct", "caption"),
                   [(i, DIGITS[d], int(c), cap) for i, (d, c, cap) in enumerate(zip(y, correct, captions,
                                                                                     strict=True))])
        k = min(max_samples, len(y))
        if k:
            model.save_png(images[:k].astype(np.uint8) if images.dtype == np.uint8
                           else np.clip(np.round(images[:k] * 255), 0, 255).astype(np.uint8),
                           [os.path.join(sample_dir, f"caption_{i:03d}_{DIGITS[y[i]]}.png") for i in range(k)])
    return {"accuracy": float(correct.mean()), "exact_match": float(exact.mean()), "n": int(len(y)),
            "per_class": _per_class(y, correct)}


def _image_ids(model, images) -> np.ndarray:
    x = np.asarray(images)
    return model.vocab.image_to_unified(np.asarray(model.image_tokenizer.encode(x[None] if x.ndim == 2 else x)))


def caption_forced_choice(model, images, labels, *, batch_size: int = 64) -> dict[str, Any]:
    """Caption forced choice over the ten digit words (see the module docstring) -> {'accuracy', 'n',
    'predictions'}. The words' first text ids must differ."""
    y = _check_labels(labels, len(images), "caption_forced_choice")
    ids = _image_ids(model, images)
    first = [model.text_tokenizer.encode(w)[0] for w in DIGITS]
    if len(set(first)) != len(first):
        raise ValueError("caption_forced_choice: the digit words do not start with ten different text ids")
    preds = []
    for s in range(0, len(ids), batch_size):
        prompts = np.asarray([model.templates.prompt("caption", row) for row in ids[s : s + batch_size]])
        preds.append(np.argmax(model.logits(prompts)[:, -1, first], -1))
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
    y = _check_labels(labels, len(images), "t2i_likelihood_accuracy")
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


# ---- generation, judged -------------------------------------------------------------------------------------------
def _judge_images(model, classifier, prompts: Sequence[str], **sampling) -> tuple[np.ndarray, np.ndarray]:
    """One generated image per prompt and the digit classifier's reading of it -> (uint8 images, int64 [n])."""
    images = np.asarray(model.generate_image(list(prompts), **sampling))
    return images, np.asarray(classifier.predict(images)).astype(np.int64).reshape(-1)


def _judge_speech(model, speech_classifier, prompts: Sequence[str], **sampling) -> tuple[np.ndarray, np.ndarray]:
    """One generated utterance per prompt and the spoken-word classifier's reading of it (resampled to its 16 kHz
    when the codec's rate differs) -> (float32 [n, samples] at ``model.sample_rate``, int64 [n])."""
    from teal_jax.evaluate import speech_classifier as sc

    waves = np.asarray(model.generate_speech(list(prompts), **sampling), np.float32)
    clf_in = waves
    if model.sample_rate != sc.SAMPLE_RATE:
        from teal_jax.media.audio import resample

        clf_in = resample(waves, model.sample_rate, sc.SAMPLE_RATE)
    return waves, np.asarray(speech_classifier.predict(clf_in)).astype(np.int64).reshape(-1)


# ---- samples a reader can judge by eye ----------------------------------------------------------------------------
GRID_RIGHT, GRID_WRONG, GRID_BLANK = (40, 170, 60), (210, 40, 40), (255, 255, 255)


def image_grid(images, labels, predictions=None, *, pad: int = 2) -> tuple[np.ndarray, list[int], list[int]]:
    """Images in one row per asked digit (rows in digit order, only the digits asked; within a row in the order
    given) -> (uint8 RGB mosaic ``[rows * (H + 2 pad), columns * (W + 2 pad), 3]``, the row digits, how many of each
    row the classifier judged right). Each image sits in a ``pad``-pixel frame: green where ``predictions`` equals the
    label, red where not, white without predictions; cells past a row's last image are white. ``columns`` is the
    largest number of images asked for one digit."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[0] == 0 or x.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image_grid: images must be a non-empty [n, H, W(, 1|3|4)] batch, got shape {x.shape}")
    if x.dtype != np.uint8:
        x = np.clip(np.round(np.asarray(x, np.float64) * 255), 0, 255).astype(np.uint8)
    x = np.repeat(x, 3, -1) if x.shape[-1] == 1 else x[..., :3]
    y = _check_labels(labels, x.shape[0], "image_grid")
    p = None if predictions is None else _check_labels(predictions, x.shape[0], "image_grid predictions")
    rows = sorted(set(y.tolist()))
    members = [np.nonzero(y == d)[0] for d in rows]
    cols = max(len(m) for m in members)
    n, h, w, _ = x.shape
    ch, cw = h + 2 * pad, w + 2 * pad
    mosaic = np.full((len(rows) * ch, cols * cw, 3), 255, np.uint8)
    right = []
    for r, idx in enumerate(members):
        right.append(int(0 if p is None else np.sum(p[idx] == y[idx])))
        for c, i in enumerate(idx):
            frame = GRID_BLANK if p is None else (GRID_RIGHT if p[i] == y[i] else GRID_WRONG)
            cell = mosaic[r * ch : (r + 1) * ch, c * cw : (c + 1) * cw]
            cell[:] = frame
            cell[pad : pad + h, pad : pad + w] = x[i]
    return mosaic, rows, right


def write_image_grid(path: str, images, labels, predictions=None, *, title: str = "") -> str:
    """:func:`image_grid` as a PNG with each row labelled by its digit (and ``k/n judged right`` given
    predictions); matplotlib Agg, the mosaic drawn at its own pixel size. -> ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    mosaic, rows, right = image_grid(images, labels, predictions)
    counts = np.bincount(np.asarray(labels).astype(np.int64).reshape(-1), minlength=10)
    dpi, margin_w, margin_h = 100, 1.6, 0.5
    fig = plt.figure(figsize=(mosaic.shape[1] / dpi + margin_w, mosaic.shape[0] / dpi + margin_h), dpi=dpi)
    ax = fig.add_axes((margin_w / fig.get_figwidth(), 0.05 / fig.get_figheight(),
                       mosaic.shape[1] / dpi / fig.get_figwidth(), mosaic.shape[0] / dpi / fig.get_figheight()))
    ax.imshow(mosaic, interpolation="nearest")
    ch = mosaic.shape[0] / len(rows)
    ax.set_yticks([(r + 0.5) * ch for r in range(len(rows))])
    ax.set_yticklabels([DIGITS[d] + ("" if predictions is None else f"  {k}/{counts[d]}")
                        for d, k in zip(rows, right, strict=True)], fontsize=8)
    ax.set_xticks([])
    if title:
        fig.suptitle(title, fontsize=8, x=0.01, ha="left", y=1 - 0.08 / fig.get_figheight(), va="top")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def spectrogram(wave, sample_rate: int, *, floor_db: float = -80.0) -> np.ndarray:
    """Log-magnitude STFT of one waveform -> float64 ``[n_fft // 2 + 1, frames]`` in dB relative to its maximum,
    floored at ``floor_db`` (row 0 = 0 Hz). ``evaluate.audio.stft_magnitude`` (centred Hann frames, frames =
    1 + samples // hop) with ``n_fft`` = the power of two nearest 32 ms and hop ``n_fft // 8``; a clip shorter than
    one window is zero-padded to it."""
    from teal_jax.evaluate.audio import stft_magnitude

    x = np.asarray(wave, np.float64).reshape(-1)
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError("spectrogram: the waveform is empty or has NaN/Inf values")
    if sample_rate <= 0:
        raise ValueError(f"spectrogram: sample_rate={sample_rate} must be > 0")
    n_fft = 2 ** max(3, int(round(np.log2(0.032 * sample_rate))))
    hop = n_fft // 8
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    mag = np.asarray(stft_magnitude(jnp.asarray(x[None], jnp.float32), n_fft, hop)[0], np.float64).T  # [freq, t]
    db = 20.0 * np.log10(mag)
    return np.maximum(db - db.max(), floor_db)


def spectrogram_image(wave, sample_rate: int, *, floor_db: float = -80.0) -> np.ndarray:
    """:func:`spectrogram` as uint8 RGB ``[n_fft // 2 + 1, frames, 3]`` (magma colour map, low frequencies at the
    bottom)."""
    from matplotlib import colormaps

    db = spectrogram(wave, sample_rate, floor_db=floor_db)
    rgba = colormaps["magma"](np.clip((db - floor_db) / -floor_db, 0.0, 1.0)[::-1])
    return np.round(rgba[..., :3] * 255).astype(np.uint8)


def write_spectrogram(path: str, wave, sample_rate: int) -> str:
    """Writes :func:`spectrogram_image` of ``wave`` as a PNG (one pixel per STFT bin and frame) -> ``path``."""
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(spectrogram_image(wave, sample_rate)).save(path, "PNG")
    return path


# ---- text -> image ---------------------------------------------------------------------------------------------
def image_prompt_accuracy(model, classifier, prompts: Sequence[str], labels, *, sample_dir: str | None = None,
                          prefix: str = "t2i", max_samples: int = 20, **sampling) -> dict[str, Any]:
    """Generates one image per prompt; correct iff ``classifier.predict`` gives the prompt's digit label.
    -> {'accuracy', 'n', 'per_class', 'confusion' (10x10, rows = asked digit)}. Writes ``max_samples`` images
    (``{prefix}_{i}_{asked}_as_{predicted}.png``, taken round-robin over the asked digits), ``{prefix}.tsv`` and
    ``{prefix}_grid.png`` (every image, one row per asked digit: :func:`write_image_grid`) to ``sample_dir``."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("image_prompt_accuracy: no prompts")
    y = _check_labels(labels, len(prompts), "image_prompt_accuracy")
    images, pred = _judge_images(model, classifier, prompts, **sampling)
    correct = pred == y
    if sample_dir:
        os.makedirs(sample_dir, exist_ok=True)
        _write_tsv(os.path.join(sample_dir, f"{prefix}.tsv"), ("index", "prompt", "asked", "predicted"),
                   [(i, p, DIGITS[a], DIGITS[b]) for i, (p, a, b) in enumerate(zip(prompts, y, pred, strict=True))])
        keep = _spread(y, max_samples)
        model.save_png(images[keep], [os.path.join(sample_dir, f"{prefix}_{i:03d}_{DIGITS[y[i]]}_as_"
                                                    f"{DIGITS[pred[i]]}.png") for i in keep])
        write_image_grid(os.path.join(sample_dir, f"{prefix}_grid.png"), images, y, pred,
                         title=f"{prefix}: one row per prompted digit; green = judged right, red = judged wrong")
    return {"accuracy": float(correct.mean()), "n": int(len(y)), "per_class": _per_class(y, correct),
            "confusion": _confusion(y, pred)}


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


# ---- text -> speech --------------------------------------------------------------------------------------------
def speech_prompt_accuracy(model, speech_classifier, prompts: Sequence[str], labels, *,
                           sample_dir: str | None = None, prefix: str = "tts", max_samples: int = 20,
                           **sampling) -> dict[str, Any]:
    """Generates speech per prompt; correct iff the spoken-word classifier gives the prompt's digit label.
    -> {'accuracy', 'n', 'per_class', 'confusion'}. Writes ``max_samples`` WAVs (taken round-robin over the asked
    digits), each with its spectrogram beside it (same name, ``.png``: :func:`write_spectrogram`), and
    ``{prefix}.tsv`` to ``sample_dir``."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("speech_prompt_accuracy: no prompts")
    y = _check_labels(labels, len(prompts), "speech_prompt_accuracy")
    waves, pred = _judge_speech(model, speech_classifier, prompts, **sampling)
    correct = pred == y
    if sample_dir:
        os.makedirs(sample_dir, exist_ok=True)
        _write_tsv(os.path.join(sample_dir, f"{prefix}.tsv"), ("index", "prompt", "asked", "predicted"),
                   [(i, p, DIGITS[a], DIGITS[b]) for i, (p, a, b) in enumerate(zip(prompts, y, pred, strict=True))])
        keep = _spread(y, max_samples)
        stems = [os.path.join(sample_dir, f"{prefix}_{i:03d}_{DIGITS[y[i]]}_as_{DIGITS[pred[i]]}") for i in keep]
        model.save_wav(waves[keep], [f"{stem}.wav" for stem in stems])
        for w, stem in zip(waves[keep], stems, strict=True):  # the spectrogram beside each WAV
            write_spectrogram(f"{stem}.png", w, model.sample_rate)
    return {"accuracy": float(correct.mean()), "n": int(len(y)), "per_class": _per_class(y, correct),
            "confusion": _confusion(y, pred)}


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


# ---- classifier-free guidance, chosen on a validation set --------------------------------------------------------
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
    import time

    if modality not in ("image", "audio"):
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
    run = _judge_images if modality == "image" else _judge_speech
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


# ---- speech -> text ----------------------------------------------------------------------------------------------
def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, Any]:
    """Corpus WER with jiwer over :func:`words`-normalised texts -> {'wer', 'substitutions', 'deletions',
    'insertions', 'reference_words', 'exact_match', 'n'}. An empty reference is an error (WER is undefined)."""
    import jiwer

    refs, hyps = list(references), list(hypotheses)
    if len(refs) != len(hyps):
        raise ValueError(f"word_error_rate: {len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise ValueError("word_error_rate: no references")
    refs = [" ".join(words(r)) for r in refs]
    hyps = [" ".join(words(h)) for h in hyps]
    empty = [i for i, r in enumerate(refs) if not r]
    if empty:
        raise ValueError(f"word_error_rate: references {empty[:5]} have no words")
    out = jiwer.process_words(refs, hyps)
    n_ref = out.substitutions + out.deletions + out.hits
    return {"wer": float(out.wer), "substitutions": int(out.substitutions), "deletions": int(out.deletions),
            "insertions": int(out.insertions), "reference_words": int(n_ref),
            "exact_match": float(np.mean([r == h for r, h in zip(refs, hyps, strict=True)])), "n": len(refs)}


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
        _write_tsv(os.path.join(sample_dir, "asr.tsv"), ("index", "reference", "hypothesis"),
                   [(i, r, h) for i, (r, h) in enumerate(zip(transcripts, hyps, strict=True))])
    return result


# ---- text perplexity -------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _lm_forward(config):
    """The jitted ``TransformerLM(config)`` forward ``(params, tokens [B, T]) -> logits``, one per config."""
    from teal_jax.models.transformer import TransformerLM

    return jax.jit(lambda p, t: TransformerLM(config).apply({"params": p}, t))


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
        import dataclasses

        lm_config = dataclasses.replace(lm_config, use_bias=_has_bias(base_lm_params))
    base_params = jax.tree.map(jnp.asarray, base_lm_params)
    base_fn = _lm_forward(lm_config)
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

