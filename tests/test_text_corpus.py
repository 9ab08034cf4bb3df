"""The generated corpus: determinism, true facts, variety; reading jsonl/txt corpora with precise errors."""

import json
import re

import pytest

from teal_jax.data import text_corpus as tc
from teal_jax.media import text as media_text

WORD_TO_NUMBER = {tc.number_to_words(n): n for n in range(1000)}
_NUM = "|".join(sorted(WORD_TO_NUMBER, key=len, reverse=True))  # longest first: 'twenty one' before 'twenty'


def test_number_to_words():
    assert [tc.number_to_words(n) for n in (0, 7, 13, 20, 42, 99, 100, 105, 310, 999)] == [
        "zero", "seven", "thirteen", "twenty", "forty two", "ninety nine", "one hundred", "one hundred five",
        "three hundred ten", "nine hundred ninety nine"]
    assert len(WORD_TO_NUMBER) == 1000  # injective on 0..999
    for bad in (-1, 1000, 2.0):
        with pytest.raises(ValueError, match="number_to_words"):
            tc.number_to_words(bad)


def test_write_corpus_is_deterministic_and_formats_agree(tmp_path):
    a = tc.write_corpus(str(tmp_path / "a.jsonl"), 500, seed=3)
    b = tc.write_corpus(str(tmp_path / "b.jsonl"), 500, seed=3)
    c = tc.write_corpus(str(tmp_path / "c.jsonl"), 500, seed=4)
    t = tc.write_corpus(str(tmp_path / "t.txt"), 500, seed=3)
    read = lambda p: open(p, "rb").read()
    assert read(a) == read(b)
    assert read(a) != read(c)
    docs = [json.loads(line)["text"] for line in open(a)]
    assert docs == open(t).read().splitlines()
    assert docs == list(tc.generate_documents(500, seed=3))
    assert len(docs) == 500 and all(d.strip() for d in docs)
    with pytest.raises(ValueError, match="must end with .jsonl or .txt"):
        tc.write_corpus(str(tmp_path / "x.csv"), 1)


def test_corpus_facts_are_true_and_varied():
    docs = list(tc.generate_documents(3000, seed=0))
    text = " ".join(docs)
    checked = 0
    for a, op, b, c in re.findall(rf"\b({_NUM}) (plus|minus|times) ({_NUM}) (?:is|equals) ({_NUM})\.", text):
        x, y, z = WORD_TO_NUMBER[a], WORD_TO_NUMBER[b], WORD_TO_NUMBER[c]
        assert z == {"plus": x + y, "minus": x - y, "times": x * y}[op], (a, op, b, c)
        checked += 1
    for x, op, y, z in re.findall(r"\b(\d+) ([+-]) (\d+) = (\d+)\.", text):
        assert int(z) == (int(x) + int(y) if op == "+" else int(x) - int(y))
        checked += 1
    for words, digits in re.findall(rf"\b({_NUM}) is written as (\d+) in digits", text):
        assert WORD_TO_NUMBER[words] == int(digits)
        checked += 1
    assert checked > 1000
    # Variety: nearly every document differs, every template family occurs, and the word list is rich.
    assert len(set(docs)) > 0.9 * len(docs)
    for marker in ("plus", "minus", "times", "counting", "once upon a time", "question:", "is written", "in all"):
        assert marker in text, marker
    assert len(set(text.split())) > 300


def test_resolve_and_read_documents(tmp_path):
    good = tmp_path / "a.jsonl"
    good.write_text('{"body": "first doc", "id": 1}\n\n{"body": "second\\ndoc"}\n')
    txt = tmp_path / "b.txt"
    txt.write_text("line one\n\n  \nline two\n")
    files = media_text.resolve_corpus_files(f"{tmp_path}/*.jsonl, {txt}")
    assert files == [str(good), str(txt)]
    got = list(media_text.read_documents(files, "body"))
    assert got == [(str(good), 1, "first doc"), (str(good), 3, "second\ndoc"), (str(txt), 1, "line one"),
                   (str(txt), 4, "line two")]

    with pytest.raises(FileNotFoundError, match=r"data.corpus: no corpus file matches '.*nothing\*.jsonl'"):
        media_text.resolve_corpus_files(f"{tmp_path}/nothing*.jsonl")
    (tmp_path / "c.csv").write_text("x")
    with pytest.raises(ValueError, match=r"c.csv is neither .jsonl nor .txt"):
        media_text.resolve_corpus_files(str(tmp_path / "c.csv"))
    with pytest.raises(FileNotFoundError, match="missing.jsonl does not exist"):
        list(media_text.read_documents([str(tmp_path / "missing.jsonl")]))


@pytest.mark.parametrize("content,pattern", [
    ('{"text": "ok"}\n{"text": broken}\n', r"bad.jsonl:2: not valid JSON"),
    ('{"text": "ok"}\n{"body": "x"}\n', r"bad.jsonl:2: no field 'text' \(fields: \['body'\]\)"),
    ('{"text": 5}\n', r"bad.jsonl:1: field 'text' is a int, expected a string"),
    ('["text"]\n', r"bad.jsonl:1: expected a JSON object, got list"),
])
def test_read_documents_bad_jsonl(tmp_path, content, pattern):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=pattern):
        list(media_text.read_documents([str(path)], "text"))


def test_read_documents_not_utf8(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\n\xff\xfe broken\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: not UTF-8"):
        list(media_text.read_documents([str(path)]))
