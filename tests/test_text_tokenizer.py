"""TextTokenizer: training from jsonl/txt, exact round trips (byte fallback), special ids, clear load errors."""

import numpy as np
import pytest

from teal_jax.data.text_corpus import generate_documents, write_corpus
from teal_jax.tokenizers.text import BOS_ID, EOS_ID, PAD_ID, UNK_ID, TextTokenizer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("spm")
    corpus = write_corpus(str(d / "corpus.jsonl"), 2000, seed=0)
    tok = TextTokenizer.train([corpus], 512, str(d / "spm"))
    return d, corpus, tok


def test_train_writes_files_and_special_ids(trained):
    d, _, tok = trained
    assert (d / "spm.model").is_file() and (d / "spm.vocab").is_file()
    assert tok.path == str(d / "spm.model")
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert tok.vocab_size == 512
    assert len((d / "spm.vocab").read_text().splitlines()) == 512
    loaded = TextTokenizer.load(str(d / "spm.model"))
    text = "three plus four is seven."
    assert loaded.encode(text) == tok.encode(text)


def test_round_trip(trained):
    _, _, tok = trained
    docs = list(generate_documents(200, seed=99))  # not the training documents
    ids = tok.encode(docs)
    assert all(0 <= i < tok.vocab_size and i != tok.unk_id for row in ids for i in row)
    assert tok.decode(ids) == docs
    # Characters never seen in training survive through byte-fallback pieces instead of <unk>.
    exotic = "Zoë counts 7 ☃ and 日本 — naïve"
    ids = tok.encode(exotic)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == exotic
    assert tok.decode(np.asarray(ids, np.int32)) == exotic
    # Digits are split (split_digits): a number is a sequence of single-digit pieces.
    pieces = [tok.id_to_piece(i) for i in tok.encode("1234")]
    assert "".join(pieces).replace("\u2581", "") == "1234" and all(len(p.replace("\u2581", "")) <= 1 for p in pieces)


def test_bos_eos_and_control_ids_decode_to_nothing(trained):
    _, _, tok = trained
    plain = tok.encode("the red cat")
    wrapped = tok.encode("the red cat", add_bos=True, add_eos=True)
    assert wrapped == [tok.bos_id, *plain, tok.eos_id]
    assert tok.decode(wrapped + [tok.pad_id] * 3) == "the red cat"
    with pytest.raises(ValueError, match=r"outside \[0, 512\)"):
        tok.decode([5, 512])


def test_training_is_deterministic(trained, tmp_path):
    d, corpus, _ = trained
    TextTokenizer.train([corpus], 512, str(tmp_path / "again"))
    assert (tmp_path / "again.model").read_bytes() == (d / "spm.model").read_bytes()


def test_train_from_txt_with_custom_field_files(tmp_path):
    txt = write_corpus(str(tmp_path / "c.txt"), 300, seed=1)
    jl = tmp_path / "c.jsonl"
    jl.write_text('{"body": "the purple owl sings."}\n')
    tok = TextTokenizer.train([txt, str(jl)], 384, str(tmp_path / "m"), text_field="body")
    assert tok.vocab_size == 384
    assert tok.decode(tok.encode("the purple owl sings.")) == "the purple owl sings."


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.model"
    with pytest.raises(FileNotFoundError, match=f"SentencePiece model {missing} does not exist"):
        TextTokenizer.load(str(missing))
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(b"definitely not a protobuf")
    with pytest.raises(ValueError, match=f"{corrupt} is not a valid SentencePiece model"):
        TextTokenizer.load(str(corrupt))
    empty = tmp_path / "empty.model"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=f"{empty} is not a valid SentencePiece model"):
        TextTokenizer.load(str(empty))


def test_train_argument_errors(tmp_path):
    corpus = write_corpus(str(tmp_path / "c.jsonl"), 10)
    with pytest.raises(ValueError, match="cannot hold the 256 byte-fallback pieces"):
        TextTokenizer.train([corpus], 100, str(tmp_path / "m"))
    with pytest.raises(ValueError, match="model_type='wordpiece'"):
        TextTokenizer.train([corpus], 300, str(tmp_path / "m"), model_type="wordpiece")
    with pytest.raises(ValueError, match=r"vocab_size=270 failed: .*Vocabulary size is smaller than required_chars"):
        TextTokenizer.train([corpus], 270, str(tmp_path / "m"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        TextTokenizer.train([str(bad)], 300, str(tmp_path / "m"))
    assert not (tmp_path / "m.model").exists()
