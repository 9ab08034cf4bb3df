"""Reading text corpora (ours or the user's): :func:`resolve_corpus_files` expands ``data.corpus`` (paths, globs,
comma-separated) and :func:`read_documents` yields documents from ``.jsonl`` (one JSON object a line, text under a
configurable field) or ``.txt`` (one document a line) files, with errors that name the file, line and field.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator, Sequence

CORPUS_SUFFIXES = (".jsonl", ".txt")


def resolve_corpus_files(spec: str | Sequence[str], *, field: str = "data.corpus") -> list[str]:
    """Paths or globs (a list, or one comma-separated string) -> sorted, de-duplicated list of existing files.

    Every pattern must match at least one ``.jsonl``/``.txt`` file; errors name ``field`` and the pattern.
    """
    patterns = [p.strip() for p in spec.split(",")] if isinstance(spec, str) else [str(p) for p in spec]
    patterns = [p for p in patterns if p]
    if not patterns:
        raise ValueError(f"{field}={spec!r} names no file")
    files: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern))) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise FileNotFoundError(f"{field}: no corpus file matches {pattern!r}")
        for m in matches:
            if not m.endswith(CORPUS_SUFFIXES):
                raise ValueError(f"{field}: {m} is neither .jsonl nor .txt")
            if os.path.abspath(m) not in files:
                files.append(os.path.abspath(m))
    return files


def read_documents(files: Sequence[str], text_field: str = "text") -> Iterator[tuple[str, int, str]]:
    """Yields ``(file, line_number, text)`` for every non-blank document (line numbers start at 1).

    ``.jsonl``: each non-blank line must be a JSON object whose ``text_field`` is a string. ``.txt``: each non-blank
    line is a document. Anything else raises ``ValueError`` naming the file, the line and the field.
    """
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"corpus file {path} does not exist")
        as_json = path.endswith(".jsonl")
        if not as_json and not path.endswith(".txt"):
            raise ValueError(f"corpus file {path} is neither .jsonl nor .txt")
        with open(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(f"{path}:{line_no}: not UTF-8 text ({e.reason} at byte {e.start})") from None
                if not line.strip():
                    continue
                if not as_json:
                    yield path, line_no, line.rstrip("\r\n")
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(record, dict):
                    raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
                if text_field not in record:
                    raise ValueError(f"{path}:{line_no}: no field {text_field!r} (fields: {sorted(record)}); "
                                     "set data.text_field")
                text = record[text_field]
                if not isinstance(text, str):
                    raise ValueError(f"{path}:{line_no}: field {text_field!r} is a {type(text).__name__}, "
                                     "expected a string")
                yield path, line_no, text
