"""The local-text tfds builder: array_record on disk, read back with tfds.data_source (no TensorFlow), seeded splits."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from teal_jax.data.text_builder import build_text_dataset, dataset_dir, split_indices, text_corpus_config
from teal_jax.data.text_corpus import write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("builder")
    jl = d / "a.jsonl"
    jl.write_text("".join(json.dumps({"body": f"json document {i}", "other": i}) + "\n" for i in range(30)))
    txt = d / "b.txt"
    txt.write_text("".join(f"text document {i}\n" for i in range(20)))
    docs = [f"json document {i}" for i in range(30)] + [f"text document {i}" for i in range(20)]
    name = build_text_dataset([str(jl), str(txt)], str(d / "tfds"), text_field="body", eval_fraction=0.2,
                              split_seed=5)
    return d, [str(jl), str(txt)], docs, name


def _read(name, data_dir, split):
    src = tfds.data_source(name, data_dir=data_dir, split=split)
    return [(int(r["index"]), r["text"].decode() if isinstance(r["text"], bytes) else r["text"]) for r in src]


def test_array_record_splits_disjoint_complete_and_exact(corpus):
    d, _, docs, name = corpus
    files = glob.glob(os.path.join(dataset_dir(str(d / "tfds"), name), "*.array_record-*"))
    assert sorted(os.path.basename(f).split(".")[0] for f in files) == ["local_text_corpus-eval",
                                                                       "local_text_corpus-train"]
    train, ev = _read(name, str(d / "tfds"), "train"), _read(name, str(d / "tfds"), "eval")
    assert len(ev) == 10 and len(train) == 40  # round(50 * 0.2)
    idx_train, idx_eval = {i for i, _ in train}, {i for i, _ in ev}
    assert not idx_train & idx_eval and idx_train | idx_eval == set(range(50))
    assert all(docs[i] == text for i, text in train + ev)  # every record is the document it claims to be
    expected = split_indices(50, 0.2, 5)
    assert sorted(idx_eval) == expected["eval"].tolist()
    assert [i for i, _ in train] == sorted(idx_train)  # stored in corpus order (the reader shuffles)


def test_rebuild_is_a_no_op_and_changes_make_a_new_dataset(corpus):
    d, files, _, name = corpus
    ddir = dataset_dir(str(d / "tfds"), name)
    stamp = {f: os.path.getmtime(f) for f in glob.glob(os.path.join(ddir, "*"))}
    assert build_text_dataset(files, str(d / "tfds"), text_field="body", eval_fraction=0.2, split_seed=5) == name
    assert {f: os.path.getmtime(f) for f in glob.glob(os.path.join(ddir, "*"))} == stamp
    other_seed = text_corpus_config(files, text_field="body", eval_fraction=0.2, split_seed=6).name
    assert f"local_text_corpus/{other_seed}" != name
    # The name digests the files' contents: an edited corpus never reuses a stale dataset.
    edited = d / "edited.txt"
    edited.write_text(open(files[1]).read())
    first = text_corpus_config([edited], eval_fraction=0.2).name
    edited.write_text(open(files[1]).read() + "one more\n")
    assert text_corpus_config([edited], eval_fraction=0.2).name != first


def test_split_indices_edge_cases():
    s = split_indices(1000, 0.02, 0)
    assert len(s["eval"]) == 20 and len(s["train"]) == 980
    assert np.array_equal(s["eval"], split_indices(1000, 0.02, 0)["eval"])
    assert not np.array_equal(s["eval"], split_indices(1000, 0.02, 1)["eval"])
    assert len(split_indices(10, 0.001, 0)["eval"]) == 1  # a positive fraction always gives an eval document
    assert len(split_indices(10, 0.0, 0)["eval"]) == 0


def test_reading_imports_no_tensorflow(corpus):
    d, _, _, name = corpus
    code = (
        "import sys, tensorflow_datasets as tfds, teal_jax.data.lm, teal_jax.data.text_builder\n"
        f"src = tfds.data_source({name!r}, data_dir={str(d / 'tfds')!r}, split='train')\n"
        "assert len(src) == 40 and src[0]['text']\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize("content,pattern", [
    ('{"text": "ok"}\n{"text": "ok",\n', r"bad.jsonl:2: not valid JSON"),
    ('{"text": "ok"}\n{"txt": "typo"}\n', r"bad.jsonl:2: no field 'text' \(fields: \['txt'\]\); set data.text_field"),
    ("\n\n", r"hold no documents"),
])
def test_bad_input_is_a_clear_error(tmp_path, content, pattern):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    with pytest.raises(ValueError, match=pattern):
        build_text_dataset([str(bad)], str(tmp_path / "tfds"))


def test_argument_errors(tmp_path):
    corpus = write_corpus(str(tmp_path / "c.jsonl"), 5)
    with pytest.raises(FileNotFoundError, match="corpus file .*missing.jsonl does not exist"):
        build_text_dataset([str(tmp_path / "missing.jsonl")], str(tmp_path / "tfds"))
    with pytest.raises(ValueError, match=r"data.eval_fraction=1.0 must be in \[0, 1\)"):
        build_text_dataset([corpus], str(tmp_path / "tfds"), eval_fraction=1.0)
    with pytest.raises(ValueError, match="no corpus files"):
        build_text_dataset([], str(tmp_path / "tfds"))
