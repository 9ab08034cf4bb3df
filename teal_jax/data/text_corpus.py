"""A small English corpus written by the project itself (no downloads): the demo's and the tests' text.

Documents are drawn from templates about numbers (spelled and numeric), arithmetic facts in words ("three plus four is
seven"), counting, comparisons, colours/shapes/animals, questions with answers and short stories. The facts are always
true, so a tiny LM trained on it learns something measurable: e.g. the greedy continuation of "three plus four is"
should be "seven", and held-out perplexity falls far below that of a unigram model.

Everything is a pure function of ``seed`` (Python's ``random.Random``, whose stream is stable across Python versions
for the calls used here), so ``write_corpus(path, n, seed)`` writes the same bytes every time.

Reading corpora (ours or the user's) lives in :mod:`teal_jax.media.text`.

The vocabulary helpers (:func:`number_to_words`, :data:`COLOURS`, :data:`SHAPES`, :data:`ANIMALS`) are public: the
TEAL task templates ask reasoning prompts in the corpus's own words: "the sum of three and four is" (the corpus
says "the sum of three and four is seven.").
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterator

_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")

COLOURS = ("red", "blue", "green", "yellow", "black", "white", "orange", "purple", "pink", "brown", "grey")
SHAPES = ("circle", "square", "triangle", "star", "heart", "ring", "cube", "box")
ANIMALS = ("cat", "dog", "fox", "bird", "fish", "frog", "horse", "cow", "duck", "mouse", "rabbit", "bear", "owl",
           "sheep", "goat", "lion")
SIZES = ("small", "big", "little", "large", "tiny", "tall")
NAMES = ("Tom", "Anna", "Ben", "Mia", "Sam", "Lily", "Max", "Emma", "Leo", "Zoe", "Jack", "Ella")
_PRONOUN = {"Tom": "he", "Ben": "he", "Sam": "he", "Max": "he", "Leo": "he", "Jack": "he"}
THINGS = ("apples", "pears", "books", "balls", "cups", "shells", "coins", "stones", "flowers", "cakes", "pens")
PLACES = ("forest", "garden", "river", "field", "house", "village", "park", "barn", "pond", "hill")
_PLACE_PHRASES = ("on the mat", "under the tree", "near the river", "in the garden", "on the hill", "by the door",
                  "in the box", "next to the house")
_VERBS = ("sits", "sleeps", "runs", "jumps", "plays", "eats", "waits", "sings")
_RELATIONS = ("next to", "above", "below", "left of", "right of", "inside", "behind")
_ACTIVITIES = ("looked for food", "sang a song", "played in the grass", "counted the stars", "swam in the pond",
               "walked to the hill", "slept in the sun")
_PLURAL = {"fox": "foxes", "fish": "fish", "mouse": "mice", "sheep": "sheep", "box": "boxes"}


def number_to_words(n: int) -> str:
    """0..999 -> lower-case English words without hyphens: 42 -> 'forty two', 105 -> 'one hundred five'."""
    if not isinstance(n, int) or not 0 <= n <= 999:
        raise ValueError(f"number_to_words: expected an int in [0, 999], got {n!r}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    hundreds, rest = divmod(n, 100)
    return _ONES[hundreds] + " hundred" + ("" if rest == 0 else " " + number_to_words(rest))


def plural(noun: str) -> str:
    return _PLURAL.get(noun, noun + "s")


def _count_noun(n: int, noun: str) -> str:
    return f"{number_to_words(n)} {noun if n == 1 else plural(noun)}"


# ---- sentence templates: each takes the generator and returns one or more sentences --------------------------------
def _arithmetic(r: random.Random) -> str:
    a, b = r.randint(0, 10), r.randint(0, 10)
    w = number_to_words
    kind = r.randrange(10)
    if kind == 0:
        return f"{w(a)} plus {w(b)} is {w(a + b)}."
    if kind == 1:
        return f"{w(a)} plus {w(b)} equals {w(a + b)}."
    if kind == 2:
        return f"the sum of {w(a)} and {w(b)} is {w(a + b)}."
    if kind == 3:
        hi, lo = max(a, b), min(a, b)
        return f"{w(hi)} minus {w(lo)} is {w(hi - lo)}."
    if kind == 4:
        return f"{w(a)} times {w(b)} is {w(a * b)}."
    if kind == 5:
        return f"{a} + {b} = {a + b}."
    if kind == 6:
        hi, lo = max(a, b), min(a, b)
        return f"{hi} - {lo} = {hi - lo}."
    if kind == 7:
        return f"{w(a)} plus {w(b)} is {a + b}."
    if kind == 8:
        return f"double {w(a)} is {w(2 * a)}, and half of {w(2 * a)} is {w(a)}."
    hi, lo = max(a, b), min(a, b)
    return f"the difference between {w(hi)} and {w(lo)} is {w(hi - lo)}."


def _numbers(r: random.Random) -> str:
    n = r.randint(0, 99)
    w = number_to_words
    kind = r.randrange(7)
    if kind == 0:
        return f"the number {n} is written {w(n)}."
    if kind == 1:
        return f"{w(n)} is written as {n} in digits."
    if kind == 2:
        return f"{w(n)} is an {'even' if n % 2 == 0 else 'odd'} number."
    if kind == 3:
        return f"the number after {w(n)} is {w(n + 1)}, and the number before it is {w(max(n - 1, 0))}."
    if kind == 4:
        m = r.randint(0, 99)
        if m == n:
            return f"{w(n)} is equal to {w(m)}."
        return f"{w(n)} is {'bigger' if n > m else 'smaller'} than {w(m)}."
    if kind == 5:
        digits = " and ".join(_ONES[int(d)] for d in str(n))
        return f"{n} has {w(len(str(n)))} {'digit' if n < 10 else 'digits'}: {digits}."
    return f"{n} comes after {n - 1}." if n > 0 else "0 is the first number."


def _counting(r: random.Random) -> str:
    kind = r.randrange(4)
    if kind == 0:
        start = r.randint(0, 12)
        return "counting up: " + ", ".join(number_to_words(i) for i in range(start, start + r.randint(3, 7))) + "."
    if kind == 1:
        start = r.randint(5, 20)
        return "counting down: " + ", ".join(number_to_words(i) for i in range(start, max(start - 6, -1), -1)) + "."
    if kind == 2:
        step = r.choice((2, 5, 10))
        return f"counting by {number_to_words(step)}s: " + ", ".join(
            number_to_words(i * step) for i in range(1, 6)) + "."
    animal = r.choice(ANIMALS)
    n = r.randint(2, 6)
    return f"count the {plural(animal)}: " + ", ".join(_count_noun(i, animal) for i in range(1, n + 1)) + "."


def _scene(r: random.Random) -> str:
    kind = r.randrange(4)
    c1, c2 = r.sample(COLOURS, 2)
    if kind == 0:
        return f"the {c1} {r.choice(ANIMALS)} {r.choice(_VERBS)} {r.choice(_PLACE_PHRASES)}."
    if kind == 1:
        s1, s2 = r.choice(SHAPES), r.choice(SHAPES)
        return f"a {r.choice(SIZES)} {c1} {s1} is {r.choice(_RELATIONS)} the {c2} {s2}."
    if kind == 2:
        a, b = r.randint(1, 9), r.randint(1, 9)
        shape = r.choice(SHAPES)
        return (f"there are {number_to_words(a)} {c1} {plural(shape) if a > 1 else shape} and {number_to_words(b)} "
                f"{c2} {plural(shape) if b > 1 else shape}, so there are {_count_noun(a + b, shape)} in all.")
    name, animal, n = r.choice(NAMES), r.choice(ANIMALS), r.randint(1, 9)
    return f"{name} sees {number_to_words(n)} {c1} {plural(animal) if n > 1 else animal}."


def _question(r: random.Random) -> str:
    a, b = r.randint(0, 10), r.randint(0, 10)
    w = number_to_words
    kind = r.randrange(4)
    if kind == 0:
        return f"question: what is {w(a)} plus {w(b)}? answer: {w(a + b)}."
    if kind == 1:
        return f"question: what is {w(max(a, b))} minus {w(min(a, b))}? answer: {w(abs(a - b))}."
    if kind == 2:
        c = r.choice(COLOURS)
        return f"question: what colour is the {c} {r.choice(SHAPES)}? answer: {c}."
    n = r.randint(1, 9)
    animal = r.choice(ANIMALS)
    legs = n * (2 if animal in ("bird", "duck", "owl") else 4)
    return f"question: how many legs do {_count_noun(n, animal)} have? answer: {w(legs)}."


def _story(r: random.Random) -> str:
    name, other = r.sample(NAMES, 2)
    he = _PRONOUN.get(name, "she")
    thing = r.choice(THINGS)
    w = number_to_words
    kind = r.randrange(3)
    if kind == 0:
        a, b = r.randint(1, 9), r.randint(1, 9)
        return (f"{name} has {w(a)} {thing}. {he} buys {w(b)} more. now {name} has {w(a + b)} {thing}.")
    if kind == 1:
        a = r.randint(2, 12)
        b = r.randint(1, a)
        return (f"{name} had {w(a)} {thing}. {he} gave {w(b)} to {other}. now {name} has {w(a - b)} {thing} left, "
                f"and {other} has {w(b)}.")
    animal, friend = r.sample(ANIMALS, 2)
    return (f"once upon a time, a {r.choice(SIZES)} {r.choice(COLOURS)} {animal} lived in a {r.choice(PLACES)}. "
            f"every day it {r.choice(_ACTIVITIES)}. one day it met a {friend}. "
            f"the {animal} and the {friend} became friends.")


# Relative frequencies: arithmetic and numbers dominate (the demo's reasoning prompts are about numbers).
_TEMPLATES: tuple[Callable[[random.Random], str], ...] = (_arithmetic, _numbers, _counting, _scene, _question, _story)
_WEIGHTS = (5, 3, 2, 3, 2, 2)


def generate_document(r: random.Random) -> str:
    """One document: 1..5 sentences, mostly on one topic, sometimes mixed."""
    topic = r.choices(_TEMPLATES, _WEIGHTS)[0]
    sentences = []
    for _ in range(r.randint(1, 5)):
        fn = topic if r.random() < 0.7 else r.choices(_TEMPLATES, _WEIGHTS)[0]
        sentences.append(fn(r))
    # Lower case throughout (names aside): fewer pieces to learn, and prompts like "three plus four is" look exactly
    # like the start of a training document.
    return " ".join(sentences)


def generate_documents(num_docs: int, seed: int = 0) -> Iterator[str]:
    """Yields ``num_docs`` documents, a pure function of ``seed``."""
    if num_docs < 0:
        raise ValueError(f"num_docs={num_docs} must be >= 0")
    r = random.Random(seed)
    for _ in range(num_docs):
        yield generate_document(r)


def write_corpus(path: str, num_docs: int, seed: int = 0) -> str:
    """Writes the corpus to ``path``: ``.jsonl`` (``{"text": ...}`` per line) or ``.txt`` (one document a line).

    Written to a temporary file and renamed, so an interrupted call never leaves a partial corpus behind.
    Returns ``path``.
    """
    if not path.endswith((".jsonl", ".txt")):
        raise ValueError(f"write_corpus: {path!r} must end with .jsonl or .txt")
    as_json = path.endswith(".jsonl")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for doc in generate_documents(num_docs, seed):
            f.write((json.dumps({"text": doc}) if as_json else doc) + "\n")
    os.replace(tmp, path)
    return path


def arithmetic_probes(max_operand: int = 10) -> list[tuple[str, str]]:
    """``("three plus four is", "seven")`` pairs for every a, b in [0, max_operand]: an evaluation of what an LM
    trained on this corpus learned (greedy continuation should start with the answer)."""
    w = number_to_words
    return [(f"{w(a)} plus {w(b)} is", w(a + b)) for a in range(max_operand + 1) for b in range(max_operand + 1)]
