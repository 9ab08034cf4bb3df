"""ASR word error rate after Whisper's English text normalisation (the convention of LibriSpeech / CoVoST-2 English
results since Whisper, Radford et al. 2022, appendix C).

:class:`EnglishNormalizer` follows the rules of Whisper's ``EnglishTextNormalizer`` (also in
``transformers.models.whisper.english_normalizer``), in order: lower case; drop ``[...]``/``<...>`` and ``(...)``
spans and the fillers hmm/mm/mhm/mmm/uh/um; expand common contractions and titles (won't -> will not, mr -> mister,
's -> is, ...); drop commas between digits and periods not followed by a digit; replace other symbols and punctuation
by spaces and strip diacritics (keeping . % $ ¢ € £ for numbers); write spelled-out numbers as digits
(:class:`_Numbers`: "twenty one" -> 21, "one oh one" -> 101, "two point five" -> 2.5, "five dollars" -> $5,
"ten percent" -> 10%, "third" -> 3rd, "one and a half million" -> 1500000, "double seven" -> 77; "one" and "ones"
stay words); map British to American spellings; drop symbols not attached to numbers; collapse whitespace.
tests/test_text_metrics.py checks it string for string against transformers' implementation.

The British -> American spelling table is data Whisper ships as ``normalizer.json`` (in every Whisper tokenizer
folder on the hub, e.g. ``openai/whisper-small``); point ``spelling_file`` at it. Without it no spelling is mapped
(the other rules still apply), which changes WER only where references and hypotheses spell a word differently.

:class:`LibriSpeechWerEvaluator` (kind ``asr_wer``) transcribes a folder of LibriSpeech-layout audio (or a JSONL
manifest) and reports WER with jiwer after this normalisation.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from teal_jax.evaluate.common import open_run_source
from teal_jax.evaluate.evaluators import Evaluator

# Letters NFKD does not decompose, written as their ASCII spelling.
_LETTERS = {"œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O", "æ": "ae", "Æ": "AE", "ß": "ss", "ẞ": "SS", "đ": "d", "Đ": "D",
            "ð": "d", "Ð": "D", "þ": "th", "Þ": "th", "ł": "l", "Ł": "L"}
_FILLERS = r"\b(hmm|mm|mhm|mmm|uh|um)\b"
_TITLES = {"mr": "mister", "mrs": "missus", "st": "saint", "dr": "doctor", "prof": "professor", "capt": "captain",
           "gov": "governor", "ald": "alderman", "gen": "general", "sen": "senator", "rep": "representative",
           "pres": "president", "rev": "reverend", "hon": "honorable", "asst": "assistant", "assoc": "associate",
           "lt": "lieutenant", "col": "colonel", "jr": "junior", "sr": "senior", "esq": "esquire"}
# (pattern, replacement) in the order they apply: whole words first, then perfect tenses, then bare clitics.
_REWRITES: list[tuple[str, str]] = [
    *[(rf"\b{w}\b", r) for w, r in (("won't", "will not"), ("can't", "can not"), ("let's", "let us"),
                                    ("ain't", "aint"), ("y'all", "you all"), ("wanna", "want to"),
                                    ("gotta", "got to"), ("gonna", "going to"), ("i'ma", "i am going to"),
                                    ("imma", "i am going to"), ("woulda", "would have"), ("coulda", "could have"),
                                    ("shoulda", "should have"), ("ma'am", "madam"))],
    *[(rf"\b{w}\b", r + " ") for w, r in _TITLES.items()],
    *[(rf"'{c} {w}\b", f" {aux} {w}")
      for c, w, aux in (("d", "been", "had"), ("s", "been", "has"), ("d", "gone", "had"), ("s", "gone", "has"),
                        ("d", "done", "had"), ("s", "got", "has"))],
    *[(rf"{c}\b", f" {w}") for c, w in (("n't", "not"), ("'re", "are"), ("'s", "is"), ("'d", "would"),
                                         ("'ll", "will"), ("'t", "not"), ("'ve", "have"), ("'m", "am"))],
]


def _strip_symbols(s: str, keep: str) -> str:
    """NFKD; diacritics (category Mn) dropped, :data:`_LETTERS` spelled out, other marks/symbols/punctuation
    (categories M*, S*, P*) replaced by a space, except the characters in ``keep``."""
    out = []
    for ch in unicodedata.normalize("NFKD", s):
        cat = unicodedata.category(ch)
        if ch in keep:
            out.append(ch)
        elif ch in _LETTERS:
            out.append(_LETTERS[ch])
        elif cat == "Mn":
            continue
        elif cat[0] in "MSP":
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


# ---- spelled-out numbers -------------------------------------------------------------------------------------------
_ONES = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen",
         "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_BIG = ["hundred", "thousand", "million", "billion", "trillion", "quadrillion", "quintillion", "sextillion",
        "septillion", "octillion", "nonillion", "decillion"]


def _ordinal_of(word: str, value: int) -> str:
    irregular = {1: "first", 2: "second", 3: "third", 5: "fifth", 12: "twelfth"}
    return irregular.get(value) or (word + ("h" if word.endswith("t") else "th"))


class _Numbers:
    """Spelled-out numbers -> digits (Whisper's number rules; see the module docstring).

    The running number is either an ``int`` (a cardinal being built: "two hundred five" -> 205) or a ``str`` (digits
    read one by one, "one oh one" -> "101", or a decimal after "point"); the two behave differently when the next
    number word arrives, which is how "twenty one" (21) and "two one" ("21") both come out right.
    """

    def __init__(self):
        self.zeros = {"o", "oh", "zero"}
        self.ones = {w: i for i, w in enumerate(_ONES, start=1)}
        self.ones_suffixed = {("sixes" if w == "six" else w + "s"): (v, "s") for w, v in self.ones.items()}
        self.ones_suffixed.update({"zeroth": (0, "th")})
        self.ones_suffixed.update({_ordinal_of(w, v): (v, "st" if v == 1 else "nd" if v == 2 else "rd" if v == 3
                                                       else "th") for w, v in self.ones.items()})
        self.tens = {w: 20 + 10 * i for i, w in enumerate(_TENS)}
        self.tens_suffixed = {w[:-1] + "ies": (v, "s") for w, v in self.tens.items()}
        self.tens_suffixed.update({w[:-1] + "ieth": (v, "th") for w, v in self.tens.items()})
        self.multipliers = {"hundred": 100, **{w: 1000 ** i for i, w in enumerate(_BIG[1:], start=1)}}
        self.multipliers_suffixed = {w + "s": (v, "s") for w, v in self.multipliers.items()}
        self.multipliers_suffixed.update({w + "th": (v, "th") for w, v in self.multipliers.items()})
        self.decimals = {*self.ones, *self.tens, *self.zeros}
        self.signs = {"minus": "-", "negative": "-", "plus": "+", "positive": "+"}
        self.currencies = {"pound": "£", "pounds": "£", "euro": "€", "euros": "€", "dollar": "$", "dollars": "$",
                           "cent": "¢", "cents": "¢"}
        self.prefix_chars = set(self.signs.values()) | set(self.currencies.values())
        self.percent = {"per", "percent"}
        self.specials = {"and", "double", "triple", "point"}
        self.words = (self.zeros | set(self.ones) | set(self.ones_suffixed) | set(self.tens) | set(self.tens_suffixed)
                      | set(self.multipliers) | set(self.multipliers_suffixed) | set(self.signs)
                      | set(self.currencies) | self.percent | self.specials)

    # -- helpers on the running number
    @staticmethod
    def _append_digits(value, digits: int, prev_is_tens: bool, as_string: bool):
        """Adds a one-word number (1-19) to ``value``."""
        if value is None:
            return digits
        if as_string:
            if prev_is_tens and digits < 10:  # "... twenty one" after digits: 20 -> 21
                return value[:-1] + str(digits)
            return f"{value}{digits}"
        if value % (10 if digits < 10 else 100) == 0:
            return value + digits
        return f"{value}{digits}"

    @staticmethod
    def _scale(value, factor: int):
        """value * factor (hundred, thousand, ...): an int scales its last three digits; a str must be a number."""
        if isinstance(value, int) and value != 0:
            return value // 1000 * 1000 + value % 1000 * factor, None
        try:
            product = Fraction(value) * factor
        except (ValueError, ZeroDivisionError):
            return None, value
        return (product.numerator, None) if product.denominator == 1 else (None, value)

    def words_to_digits(self, words: Sequence[str]) -> Iterator[str]:
        value: int | str | None = None
        prefix = ""
        skip_next = False
        numeric = re.compile(r"^\d+(\.\d+)?$")

        def emit(x) -> str:
            nonlocal value, prefix
            out = prefix + str(x)
            value, prefix = None, ""
            return out

        for i, word in enumerate(words):
            if skip_next:
                skip_next = False
                continue
            prev = words[i - 1] if i else None
            nxt = words[i + 1] if i + 1 < len(words) else None
            nxt_numeric = nxt is not None and numeric.match(nxt) is not None
            nxt_numberish = nxt in self.words or nxt_numeric
            bare = word[1:] if word[0] in self.prefix_chars else word
            if numeric.match(bare):  # digits already (maybe with a sign or currency, maybe a decimal)
                if value is not None:
                    if isinstance(value, str) and value.endswith("."):
                        value = value + word  # the digits after "point"
                        continue
                    yield emit(value)
                if bare is not word:
                    prefix = word[0]
                f = Fraction(bare)
                value = f.numerator if f.denominator == 1 else bare
            elif word not in self.words:
                if value is not None:
                    yield emit(value)
                yield emit(word)
            elif word in self.zeros:
                value = f"{value or ''}0"
            elif word in self.ones:
                value = self._append_digits(value, self.ones[word], prev in self.tens,
                                            isinstance(value, str) or prev in self.ones)
            elif word in self.ones_suffixed:
                n, suffix = self.ones_suffixed[word]
                as_string = isinstance(value, str) or prev in self.ones
                yield emit(f"{self._append_digits(value, n, prev in self.tens, as_string)}{suffix}")
            elif word in self.tens:
                t = self.tens[word]
                if value is None:
                    value = t
                elif isinstance(value, str) or value % 100:
                    value = f"{value}{t}"
                else:
                    value += t
            elif word in self.tens_suffixed:
                t, suffix = self.tens_suffixed[word]
                if value is None:
                    yield emit(f"{t}{suffix}")
                elif isinstance(value, str) or value % 100:
                    yield emit(f"{value}{t}{suffix}")
                else:
                    yield emit(f"{value + t}{suffix}")
            elif word in self.multipliers:
                m = self.multipliers[word]
                if value is None:
                    value = m
                else:
                    scaled, unscaled = self._scale(value, m)
                    if scaled is None:
                        yield emit(unscaled)
                        value = m
                    else:
                        value = scaled
            elif word in self.multipliers_suffixed:
                m, suffix = self.multipliers_suffixed[word]
                if value is None:
                    yield emit(f"{m}{suffix}")
                else:
                    scaled, unscaled = self._scale(value, m)
                    if scaled is None:
                        yield emit(unscaled)
                        yield emit(f"{m}{suffix}")
                    else:
                        yield emit(f"{scaled}{suffix}")
                value = None
            elif word in self.signs:
                if value is not None:
                    yield emit(value)
                if nxt_numberish:
                    prefix = self.signs[word]
                else:
                    yield emit(word)
            elif word in self.currencies:
                if value is not None:
                    prefix = self.currencies[word]  # "five dollars" -> "$5"
                    yield emit(value)
                else:
                    yield emit(word)
            elif word in self.percent:
                if value is None:
                    yield emit(word)
                elif word == "percent":
                    yield emit(f"{value}%")
                elif nxt == "cent":  # "per cent"
                    yield emit(f"{value}%")
                    skip_next = True
                else:
                    yield emit(value)
                    yield emit(word)
            elif not nxt_numberish:  # and / double / triple / point before a non-number
                if value is not None:
                    yield emit(value)
                yield emit(word)
            elif word == "and":
                if prev not in self.multipliers:  # "hundred and five": the and is dropped
                    if value is not None:
                        yield emit(value)
                    yield emit(word)
            elif word in ("double", "triple"):
                if nxt in self.ones or nxt in self.zeros:
                    value = f"{value or ''}{str(self.ones.get(nxt, 0)) * (2 if word == 'double' else 3)}"
                    skip_next = True
                else:
                    if value is not None:
                        yield emit(value)
                    yield emit(word)
            elif word == "point" and (nxt in self.decimals or nxt_numeric):
                value = f"{value or ''}."
        if value is not None:
            yield emit(value)

    def __call__(self, s: str) -> str:
        # "<number> and a half" -> "<number> point five" (after a number word that can take a decimal)
        parts = re.split(r"\band\s+a\s+half\b", s)
        pieces = []
        for i, part in enumerate(parts):
            if not part.strip():
                continue
            pieces.append(part)
            if i < len(parts) - 1:
                last = part.rsplit(maxsplit=2)[-1]
                pieces.append("point five" if last in self.decimals or last in self.multipliers else "and a half")
        s = " ".join(pieces)
        s = re.sub(r"([a-z])([0-9])", r"\1 \2", s)  # letters and digits apart ...
        s = re.sub(r"([0-9])([a-z])", r"\1 \2", s)
        s = re.sub(r"([0-9])\s+(st|nd|rd|th|s)\b", r"\1\2", s)  # ... but keep 3rd, 1960s
        s = " ".join(w for w in self.words_to_digits(s.split()))

        def cents_joined(m: re.Match) -> str:  # "$2 and ¢7" -> "$2.07"
            return f"{m.group(1)}{m.group(2)}.{int(m.group(3)):02d}"

        s = re.sub(r"([€£$])([0-9]+) (?:and )?¢([0-9]{1,2})\b", cents_joined, s)
        s = re.sub(r"[€£$]0.([0-9]{1,2})\b", lambda m: f"¢{int(m.group(1))}", s)  # "$0.07" -> "¢7"
        return re.sub(r"\b1(s?)\b", r"one\1", s)  # "one" and "ones" stay words


class EnglishNormalizer:
    """Whisper's English text normalisation (see the module docstring). ``spelling``: British -> American words."""

    def __init__(self, spelling: Mapping[str, str] | None = None):
        self.spelling = dict(spelling or {})
        self.numbers = _Numbers()

    @classmethod
    def from_file(cls, path: str) -> EnglishNormalizer:
        """With the spelling table of Whisper's ``normalizer.json`` (a JSON object {british: american})."""
        from teal_jax.convert.hf_files import read_json

        table = read_json(path, what="a spelling table (Whisper's normalizer.json)")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
            raise ValueError(f"{path}: expected a JSON object of British -> American spellings")
        return cls(table)

    def __call__(self, s: str) -> str:
        s = s.lower()
        s = re.sub(r"[<\[][^>\]]*[>\]]", "", s)  # [noise], <unk>
        s = re.sub(r"\(([^)]+?)\)", "", s)  # (asides)
        s = re.sub(_FILLERS, "", s)
        s = re.sub(r"\s+'", "'", s)  # "it 's" -> "it's"
        for pattern, replacement in _REWRITES:
            s = re.sub(pattern, replacement, s)
        s = re.sub(r"(\d),(\d)", r"\1\2", s)  # 1,000 -> 1000
        s = re.sub(r"\.([^0-9]|$)", r" \1", s)  # periods that are not decimal points
        s = _strip_symbols(s, keep=".%$¢€£")
        s = self.numbers(s)
        s = " ".join(self.spelling.get(w, w) for w in s.split())
        s = re.sub(r"[.$¢€£]([^0-9])", r" \1", s)  # symbols not attached to a number
        s = re.sub(r"([^0-9])%", r"\1 ", s)
        return re.sub(r"\s+", " ", s)


def normalized_wer(references: Sequence[str], hypotheses: Sequence[str],
                   normalizer: EnglishNormalizer | None = None) -> dict[str, Any]:
    """Corpus WER (jiwer: total edits / total reference words) after normalising both sides; references that
    normalise to nothing are left out (as Whisper's evaluation does), and counted in ``n_empty``."""
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"normalized_wer: {len(references)} references but {len(hypotheses)} hypotheses")
    norm = normalizer or EnglishNormalizer()
    pairs = [(norm(r).strip(), norm(h).strip()) for r, h in zip(references, hypotheses, strict=True)]
    kept = [(r, h) for r, h in pairs if r]
    if not kept:
        raise ValueError("normalized_wer: every reference is empty after normalisation")
    out = jiwer.process_words([r for r, _ in kept], [h for _, h in kept])
    return {"wer": float(out.wer), "substitutions": int(out.substitutions), "deletions": int(out.deletions),
            "insertions": int(out.insertions), "n": len(kept), "n_empty": len(pairs) - len(kept)}


def read_librispeech(root: str, max_utterances: int = 0) -> list[dict[str, str]]:
    """Utterances of a LibriSpeech split folder (``<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`` beside the
    ``.flac`` files) or of a JSONL manifest of {audio: path, text}; sorted by id; ``max_utterances`` > 0 keeps the
    first that many."""
    out = []
    if os.path.isfile(root):
        base = os.path.dirname(root)
        with open(root) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    out.append({"id": str(rec.get("id", n)), "audio": os.path.join(base, rec["audio"]),
                                "text": str(rec["text"])})
                except (json.JSONDecodeError, KeyError) as e:
                    raise ValueError(f"{root}:{n}: expected a JSON object with 'audio' and 'text' ({e})") from e
    elif os.path.isdir(root):
        for d, _, files in sorted(os.walk(root)):
            for name in sorted(files):
                if not name.endswith(".trans.txt"):
                    continue
                with open(os.path.join(d, name)) as f:
                    for line in f:
                        if line.strip():
                            uid, _, text = line.strip().partition(" ")
                            out.append({"id": uid, "audio": os.path.join(d, uid + ".flac"), "text": text})
    else:
        raise FileNotFoundError(f"{root}: no LibriSpeech split folder or JSONL manifest there")
    if not out:
        raise ValueError(f"{root}: no utterances (*.trans.txt files or manifest lines)")
    out.sort(key=lambda r: r["id"])
    return out[:max_utterances] if max_utterances else out


def _read_audio(path: str) -> tuple[np.ndarray, int]:
    if path.endswith(".wav"):
        from teal_jax.media.audio import read_wav

        return read_wav(path)
    try:
        import soundfile
    except ImportError as e:
        raise ImportError(f"{path}: reading FLAC needs the soundfile package (pip install soundfile), or convert "
                          "the clips to WAV") from e
    audio, rate = soundfile.read(path, dtype="float32")
    return audio, int(rate)


class LibriSpeechWerEvaluator(Evaluator):
    """WER of greedy transcriptions after Whisper's English normalisation (kind ``asr_wer``).

    Data, either ``data``: a LibriSpeech split folder such as ``LibriSpeech/test-clean`` (FLAC, read with the
    ``soundfile`` package) or a JSONL manifest of {audio, text} (WAV or FLAC; CoVoST-2 English as such a manifest);
    or, with ``data`` empty, split ``split`` of the run's ``config.data.audio_source`` (a prepared tfds dataset such
    as ``librispeech``/``librispeech_decoded``: ``test_clean``, ``test_other``, ...). Other fields:
    ``spelling_file`` (Whisper's normalizer.json; '' = no spelling map), ``max_utterances`` (0 = all),
    ``batch_size``, ``max_new_tokens``. Writes ``transcripts.jsonl``. A TEAL model hears at most its audio span
    (``data.audio_seconds``) of each clip: longer clips are cut (its UserWarning says so) and count as errors.
    """

    KIND = "asr_wer"
    FIELDS = {"data": "", "split": "test_clean", "spelling_file": "", "max_utterances": 0, "batch_size": 16,
              "max_new_tokens": 64}

    def _source_utterances(self, where: str) -> list[dict[str, Any]]:
        from teal_jax.data.speech import RecordAdapter

        src, split = open_run_source(self.run_config, "audio", self.split, empty_field=f"{where}.data",
                                     instead="set the data folder or manifest")
        rate = int(src.get("source_rate") or 16000)
        adapter = RecordAdapter(src.get("audio_key") or "audio", src.get("text_key") or "text", None, rate, rate)
        n = min(len(split), self.max_utterances) if self.max_utterances else len(split)
        out = []
        for i in range(n):
            rec = adapter.map(split[i])
            out.append({"id": f"{self.split}[{i}]", "text": rec["text"], "pcm": rec["audio"], "rate": rate})
        return out

    def run(self, model, *, workdir: str, step: int) -> dict[str, Any]:
        where = f"config.evals.{self.name}"
        norm = EnglishNormalizer.from_file(self.spelling_file) if self.spelling_file else EnglishNormalizer()
        utts = read_librispeech(self.data, self.max_utterances) if self.data else self._source_utterances(where)

        def load(u):
            if "pcm" in u:
                return u["pcm"].astype(np.float32) / 32768.0, u["rate"]
            return _read_audio(u["audio"])

        hyps = []
        for s in range(0, len(utts), self.batch_size):
            clips, rates = zip(*(load(u) for u in utts[s: s + self.batch_size]), strict=True)
            if len(set(rates)) != 1:
                raise ValueError(f"{where}: clips of one batch have different sample rates {sorted(set(rates))}")
            hyps += model.transcribe(list(clips), rates[0], max_new_tokens=self.max_new_tokens)
        result = normalized_wer([u["text"] for u in utts], hyps, norm)
        out = self.output_dir(workdir, step)
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "transcripts.jsonl"), "w") as f:
            for u, h in zip(utts, hyps, strict=True):
                f.write(json.dumps({"id": u["id"], "reference": u["text"], "hypothesis": h,
                                    "reference_normalized": norm(u["text"]), "hypothesis_normalized": norm(h)})
                        + "\n")
        return result
