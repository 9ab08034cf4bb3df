"""Captioning metrics with the COCO caption evaluation's conventions (pycocoevalcap), in plain Python/numpy.

* Tokenisation (:func:`ptb_tokenize`): pycocoevalcap runs Stanford CoreNLP 3.4.1's ``PTBTokenizer -preserveLines
  -lowerCase`` and then drops the punctuation tokens in :data:`PUNCTUATION`. Ours follows the PTB rules that matter
  for captions: lower case; split off , ; : ! ? / and a final period (a run of ! or ? is one token); ``...`` and
  ``--`` as tokens; quotes as PTB quotes (dropped); brackets as ``-lrb-`` etc. (kept: see :data:`PUNCTUATION`);
  clitics split (``don't`` -> ``do n't``, ``can't`` -> ``ca n't``, ``it's`` -> ``it 's``, ``dogs'`` -> ``dogs '``);
  ``$``, ``%``, ``#`` split off; hyphenated words, decimals, thousands separators and dotted abbreviations
  (``u.s.``, ``mr.``) kept whole. tests/test_text_metrics.py checks it token for token against the Java tokenizer
  on tricky captions. A rare construct outside these rules may tokenise differently; so does one Java quirk: a
  clitic at the end of a line is sometimes split as ``she ll`` depending on the *next* line (or the end of input).
* BLEU-1..4 (:func:`bleu`): corpus BLEU of pycocoevalcap's ``Bleu(4)``: clipped n-gram counts against the maximum
  count in any reference, the *closest* reference length per caption (ties: the shorter) summed over the corpus,
  cumulative geometric means ``(p1 ... pn)^(1/n)`` with pycocoevalcap's smoothing (``(correct + 1e-15) /
  (guess + 1e-9)``) and brevity penalty ``exp(1 - r/c)`` when c < r.
* CIDEr (:func:`cider`): pycocoevalcap's ``Cider`` (CIDEr-D): tf-idf n-gram vectors (n = 1..4; idf from the
  references of the evaluated set: ``log(N_images) - log(max(1, df))``), the hypothesis vector clipped by the
  reference's, cosine per n averaged over n and references, a Gaussian length penalty
  ``exp(-(l_hyp - l_ref)^2 / (2 * 6^2))`` (pycocoevalcap measures lengths in bigrams, i.e. words - 1), times 10.

:class:`CocoCaptionEvaluator` (kind ``coco_caption``) captions the images of a Karpathy-split file
(``dataset_coco.json``) and reports bleu_1..bleu_4 and cider; docs/evaluation.md says how to point it at COCO.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from teal_jax.evaluate.common import open_run_source
from teal_jax.evaluate.evaluators import Evaluator

# pycocoevalcap's list. Its bracket entries are upper case ("-LRB-") while -lowerCase makes the tokenizer write
# "-lrb-": brackets therefore stay in the scored captions, and so they do here.
PUNCTUATION = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-",
                         "--", "...", ";"])
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "{": "-lcb-", "}": "-rcb-", "[": "-lsb-", "]": "-rsb-"}
# clitics PTB splits off the end of a word (longest first); n't takes the consonant before the apostrophe
_CLITICS = ("n't", "'ll", "'re", "'ve", "'s", "'m", "'d")
_SPECIAL_NT = {"can't": ["ca", "n't"], "won't": ["wo", "n't"], "ain't": ["ai", "n't"], "cannot": ["can", "not"],
               "gonna": ["gon", "na"], "gotta": ["got", "ta"], "wanna": ["wan", "na"]}
_NUMBER = re.compile(r"^[+-]?(\d+([.,]\d+)*|\.\d+)$")
_ABBREV = re.compile(r"^([a-z]\.)+[a-z]?\.?$|^(mr|mrs|ms|dr|st|jr|sr|vs|etc|inc|co|corp|ltd|no|mt|ft|ave)\.$")


def _split_word(w: str) -> list[str]:
    """One whitespace-free chunk (already lower case) -> PTB tokens."""
    out_front, out_back = [], []
    # leading punctuation
    while w:
        if w.startswith(("``", "''")):
            out_front.append("``")
            w = w[2:]
        elif w[0] == '"':
            out_front.append("``")
            w = w[1:]
        elif w[0] in _BRACKETS:
            out_front.append(_BRACKETS[w[0]])
            w = w[1:]
        elif w[0] in "$#":
            out_front.append(w[0])
            w = w[1:]
        elif w.startswith("`"):
            out_front.append("`")
            w = w[1:]
        elif w[0] == "'" and len(w) > 1 and w not in _CLITICS and w[1:2].isalpha():
            out_front.append("`")
            w = w[1:]
        else:
            break
    # trailing punctuation
    while w:
        if w.endswith("..."):
            out_back.insert(0, "...")
            w = w[:-3]
        elif w.endswith("--"):
            out_back.insert(0, "--")
            w = w[:-2]
        elif len(w) > 1 and w[-1] in "!?" and w[-2] in "!?":  # a run of ! / ? is one token
            run = len(w) - len(w.rstrip("!?"))
            out_back.insert(0, w[-run:])
            w = w[:-run]
        elif w[-1] in ",;:!?%/":
            out_back.insert(0, w[-1])
            w = w[:-1]
        elif w[-1] == '"' or w.endswith("''"):
            out_back.insert(0, "''")
            w = w[:-2] if w.endswith("''") else w[:-1]
        elif w[-1] in _BRACKETS:
            out_back.insert(0, _BRACKETS[w[-1]])
            w = w[:-1]
        elif w[-1] == "." and not _ABBREV.match(w) and not _NUMBER.match(w):
            out_back.insert(0, ".")
            w = w[:-1]
        elif w[-1] == "'" and len(w) > 1 and w[-2] == "s":  # plural possessive: dogs'
            out_back.insert(0, "'")
            w = w[:-1]
        elif w[-1] == "'" and len(w) > 1:
            out_back.insert(0, "'")
            w = w[:-1]
        else:
            break
    middle: list[str] = []
    if w:
        if w in _SPECIAL_NT:
            middle = list(_SPECIAL_NT[w])
        else:
            for c in _CLITICS:
                if w.endswith(c) and len(w) > len(c):
                    middle = [w[: -len(c)], c]
                    break
            else:
                # inner '&' / '/' stay inside a word; a lone '&' is its own token anyway
                middle = [w]
    return out_front + middle + out_back


def ptb_tokenize(text: str) -> list[str]:
    """A caption -> lower-case PTB tokens without the punctuation pycocoevalcap drops (see the module docstring)."""
    tokens = []
    for chunk in text.replace("\n", " ").lower().split():
        tokens.extend(t for t in _split_word(chunk) if t)
    return [t for t in tokens if t not in PUNCTUATION]


def _ngrams(words: Sequence[str], n: int) -> Counter:
    c: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            c[tuple(words[i:i + k])] += 1
    return c


def _check(references: Sequence[Sequence[str]], hypotheses: Sequence[str], what: str) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(f"{what}: {len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        raise ValueError(f"{what}: no captions to score")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not len(refs):
            raise ValueError(f"{what}: item {i} needs a non-empty list of reference captions")


def bleu(references: Sequence[Sequence[str]], hypotheses: Sequence[str], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n of tokenised captions (space-separated tokens), as pycocoevalcap's ``Bleu(n)``."""
    _check(references, hypotheses, "bleu")
    tiny, small = 1e-15, 1e-9
    correct, guess = np.zeros(n), np.zeros(n)
    testlen = reflen = 0
    for refs, hyp in zip(references, hypotheses, strict=True):
        h = hyp.split()
        ref_words = [r.split() for r in refs]
        maxcounts: dict = {}
        for r in ref_words:
            for g, c in _ngrams(r, n).items():
                maxcounts[g] = max(maxcounts.get(g, 0), c)
        for g, c in _ngrams(h, n).items():
            correct[len(g) - 1] += min(maxcounts.get(g, 0), c)
        guess += [max(0, len(h) - k) for k in range(n)]
        testlen += len(h)
        reflen += min((abs(len(r) - len(h)), len(r)) for r in ref_words)[1]
    scores, prod = [], 1.0
    for k in range(n):
        prod *= (correct[k] + tiny) / (guess[k] + small)
        scores.append(prod ** (1.0 / (k + 1)))
    ratio = (testlen + tiny) / (reflen + small)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return [float(s) for s in scores]


def cider(references: Sequence[Sequence[str]], hypotheses: Sequence[str], n: int = 4,
          sigma: float = 6.0) -> tuple[float, np.ndarray]:
    """(corpus CIDEr, per-caption CIDEr) of tokenised captions, as pycocoevalcap's ``Cider`` (CIDEr-D)."""
    _check(references, hypotheses, "cider")
    refs_c = [[_ngrams(r.split(), n) for r in refs] for refs in references]
    hyps_c = [_ngrams(h.split(), n) for h in hypotheses]
    df: Counter = Counter()
    for refs in refs_c:
        df.update({g for r in refs for g in r})
    log_n = math.log(float(len(references)))

    def vec(counts):
        v = [dict() for _ in range(n)]
        norm = np.zeros(n)
        length = 0
        for g, tf in counts.items():
            k = len(g) - 1
            v[k][g] = tf * (log_n - math.log(max(1.0, df[g])))
            norm[k] += v[k][g] ** 2
            if k == 1:  # pycocoevalcap's "length": the number of bigrams
                length += tf
        return v, np.sqrt(norm), length

    scores = []
    for refs, hyp in zip(refs_c, hyps_c, strict=True):
        vh, nh, lh = vec(hyp)
        total = np.zeros(n)
        for r in refs:
            vr, nr, lr = vec(r)
            val = np.zeros(n)
            for k in range(n):
                val[k] = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
                if nh[k] != 0 and nr[k] != 0:
                    val[k] /= nh[k] * nr[k]
            total += val * math.exp(-((lh - lr) ** 2) / (2 * sigma**2))
        scores.append(float(np.mean(total)) / len(refs) * 10.0)
    s = np.asarray(scores)
    return float(s.mean()), s


def caption_scores(references: Sequence[Sequence[str]], hypotheses: Sequence[str], *,
                   tokenize: bool = True) -> dict[str, Any]:
    """{'bleu_1'..'bleu_4', 'cider', 'cider_per_caption'} of raw captions (``tokenize``: PTB-tokenised first, as
    the COCO evaluation does) or of already tokenised ones."""
    if tokenize:
        references = [[" ".join(ptb_tokenize(r)) for r in refs] for refs in references]
        hypotheses = [" ".join(ptb_tokenize(h)) for h in hypotheses]
    b = bleu(references, hypotheses)
    c, per = cider(references, hypotheses)
    return {**{f"bleu_{k + 1}": b[k] for k in range(4)}, "cider": c, "cider_per_caption": per.tolist()}


def read_karpathy(path: str, split: str = "test") -> list[dict[str, Any]]:
    """Karpathy's ``dataset_coco.json`` -> [{'image': relative path, 'captions': [raw, ...]}] of ``split``
    ('restval' counts as 'train'). Also reads a JSON list / JSON-lines file of {'image', 'captions'} records."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: caption annotations not found")
    with open(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: neither JSON nor JSON lines ({e})") from e
    if isinstance(data, dict) and "images" in data:
        out = []
        for i, im in enumerate(data["images"]):
            s = "train" if im.get("split") == "restval" else im.get("split")
            if s != split:
                continue
            try:
                rel = os.path.join(im.get("filepath", ""), im["filename"])
                caps = [s["raw"] for s in im["sentences"]]
            except (KeyError, TypeError) as e:
                raise ValueError(f"{path}: images[{i}] lacks {e} (expected Karpathy's filepath/filename/"
                                 "sentences[].raw)") from e
            out.append({"image": rel, "captions": caps})
        return out
    if isinstance(data, list):
        for i, rec in enumerate(data):
            if not isinstance(rec, dict) or "image" not in rec or not rec.get("captions"):
                raise ValueError(f"{path}: record {i} needs 'image' and a non-empty 'captions' list")
        return [{"image": r["image"], "captions": list(r["captions"])} for r in data]
    raise ValueError(f"{path}: expected Karpathy's {{'images': [...]}} or a list of {{'image', 'captions'}}")


class CocoCaptionEvaluator(Evaluator):
    """BLEU-1..4 and CIDEr of greedy captions on a Karpathy split (kind ``coco_caption``).

    Data, either: ``annotations`` (Karpathy's dataset_coco.json, or JSON/JSONL {image, captions} records) with
    ``image_root`` (the directory the image paths are relative to); or, with ``annotations`` empty, the run's
    ``config.data.image_source`` (a prepared tfds dataset such as ``coco_captions``, whose splits are Karpathy's),
    split ``split``, captions at its ``text_key``. Other fields: ``split`` ('test'), ``max_images`` (0 = all),
    ``batch_size``, ``max_new_tokens``. Writes ``captions.jsonl`` (image, caption, references).
    """

    KIND = "coco_caption"
    FIELDS = {"annotations": "", "image_root": "", "split": "test", "max_images": 0, "batch_size": 32,
              "max_new_tokens": 32}

    def run(self, model, *, workdir: str, step: int) -> dict[str, Any]:
        from teal_jax.media.image import center_crop_resize, read_image

        where = f"config.evals.{self.name}"
        if self.annotations:
            records = read_karpathy(self.annotations, self.split)
            records = records[: self.max_images] if self.max_images else records
            load = lambda r: read_image(os.path.join(self.image_root, r["image"]))  # noqa: E731
        else:
            records, load = self._source_records(where)
        if not records:
            raise ValueError(f"{where}: no images in split {self.split!r} of {self.annotations or 'the source'}")
        size = model.image_size
        hyps = []
        for s in range(0, len(records), self.batch_size):
            batch = []
            for r in records[s: s + self.batch_size]:
                img = np.asarray(load(r))
                img = img if img.ndim == 3 else img[..., None]
                batch.append(center_crop_resize(img, size))
            hyps += model.caption(np.stack(batch), max_new_tokens=self.max_new_tokens)
        refs = [r["captions"] for r in records]
        scores = caption_scores(refs, hyps)
        out = self.output_dir(workdir, step)
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "captions.jsonl"), "w") as f:
            for r, h, c in zip(records, hyps, scores["cider_per_caption"], strict=True):
                f.write(json.dumps({"image": r["image"], "caption": h, "cider": c, "references": r["captions"]})
                        + "\n")
        scores.pop("cider_per_caption")
        return {**scores, "n": len(records)}

    def _source_records(self, where: str):
        """Records of the run's tfds image source (split ``self.split``) and how to read each one's image."""
        from teal_jax.data.teal import sources

        src, split = open_run_source(self.run_config, "image", self.split, empty_field=f"{where}.annotations",
                                     instead="set the annotations file")
        n = min(len(split), self.max_images) if self.max_images else len(split)
        image_key = src.get("image_key") or "image"
        records = []
        for i in range(n):
            rec = split[i]
            caps = sources.as_text(sources.field(rec, src["text_key"], "config.data.image_source.text_key"))
            records.append({"image": f"{self.split}[{i}]", "index": i, "captions": caps.split("\n")})
        return records, lambda r: sources.field(split[r["index"]], image_key, "config.data.image_source.image_key")
