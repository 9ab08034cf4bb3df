"""Text tokenizer: a thin, validated wrapper over SentencePiece.

Fixed special ids (the same for every model this project trains, so data, model and sampler agree without looking):
``pad=0, unk=1, bos=2, eos=3``. Padding being id 0 means a zero-filled token row is all padding.

Training defaults are chosen to be fast and bit-deterministic on a small corpus: BPE (0.5 s for 3 MB at vocab 1024,
where unigram takes 2-4 s and stops short of the requested size on a small-vocabulary corpus), one thread (the
thread count is stored in the model proto), ``split_digits`` (numbers become digit sequences, which helps arithmetic
on numerals) and ``byte_fallback`` (any UTF-8 text round-trips; unseen characters become byte pieces instead of
``<unk>``). ``hard_vocab_limit=False`` lets a corpus with few distinct strings give a smaller vocabulary instead of
failing: ``vocab_size`` reports the real size.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence

import numpy as np
import sentencepiece as spm

from teal_jax.media.text import read_documents

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
_MAX_LINE_CHARS = 2000  # SentencePiece skips training sentences over max_sentence_length (4192 bytes by default)


class TextTokenizer:
    """Encodes text to ids and back. Construct with :meth:`load` or :meth:`train`."""

    def __init__(self, processor: spm.SentencePieceProcessor, path: str | None = None):
        self._sp = processor
        self.path = path

    # ---- construction ----------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str) -> TextTokenizer:
        """Loads a SentencePiece ``.model`` file; a missing or unreadable file raises an error naming it."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"SentencePiece model {path} does not exist")
        with open(path, "rb") as f:
            proto = f.read()
        return cls(_processor_from_proto(proto, path), path)

    @classmethod
    def from_proto(cls, proto: bytes) -> TextTokenizer:
        return cls(_processor_from_proto(proto, "<model proto>"))

    @classmethod
    def train(
        cls,
        files: Sequence[str],
        vocab_size: int,
        model_prefix: str,
        *,
        text_field: str = "text",
        model_type: str = "bpe",
        character_coverage: float = 1.0,
        byte_fallback: bool = True,
        split_digits: bool = True,
        num_threads: int = 1,
        input_sentence_size: int = 2_000_000,
        seed: int = 0,
    ) -> TextTokenizer:
        """Trains on ``.jsonl``/``.txt`` corpus files; writes ``{model_prefix}.model`` and ``.vocab``.

        Each document's lines (cut to 2,000 characters) are the training sentences. Both files are written under a
        temporary name and renamed, so an interrupted call leaves no half-written model. Returns the tokenizer.
        """
        if vocab_size < 8:
            raise ValueError(f"vocab_size={vocab_size} is too small (4 ids are reserved: pad, unk, bos, eos)")
        if model_type not in ("bpe", "unigram", "char", "word"):
            raise ValueError(f"model_type={model_type!r}: choose bpe, unigram, char or word")
        if byte_fallback and vocab_size < 256 + 4 + 1:
            raise ValueError(f"vocab_size={vocab_size} cannot hold the 256 byte-fallback pieces; "
                             "raise it or set byte_fallback=False")

        read_error: list[Exception] = []

        def sentences() -> Iterator[str]:
            try:
                for _, _, text in read_documents(files, text_field):
                    for line in text.splitlines():
                        for i in range(0, len(line), _MAX_LINE_CHARS):
                            if line[i : i + _MAX_LINE_CHARS].strip():
                                yield line[i : i + _MAX_LINE_CHARS]
            except (ValueError, OSError) as e:  # SentencePiece would re-raise it as an opaque RuntimeError
                read_error.append(e)
                raise

        # SentencePiece samples input_sentence_size sentences with its own generator when the corpus is larger.
        spm.set_random_generator_seed(seed)
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=sentences(), model_writer=model, vocab_size=vocab_size, model_type=model_type,
                character_coverage=character_coverage, byte_fallback=byte_fallback, split_digits=split_digits,
                num_threads=num_threads, input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
                hard_vocab_limit=False, pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
                minloglevel=2,
            )
        except RuntimeError as e:
            if read_error:
                raise read_error[0] from None
            raise ValueError(f"SentencePiece training on {list(files)} with vocab_size={vocab_size} failed: "
                             f"{str(e).strip()}") from None
        tok = cls.from_proto(model.getvalue())
        os.makedirs(os.path.dirname(os.path.abspath(model_prefix)), exist_ok=True)
        tmp = f"{model_prefix}.tmp{os.getpid()}"
        with open(tmp + ".vocab", "w", encoding="utf-8") as f:
            for i in range(tok.vocab_size):
                f.write(f"{tok.id_to_piece(i)}\t{tok._sp.get_score(i):g}\n")
        with open(tmp + ".model", "wb") as f:
            f.write(model.getvalue())
        os.replace(tmp + ".vocab", model_prefix + ".vocab")
        os.replace(tmp + ".model", model_prefix + ".model")  # last: the .model's presence means "done"
        tok.path = model_prefix + ".model"
        return tok

    # ---- ids ---------------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        return self._sp.pad_id()

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    # ---- encode / decode ---------------------------------------------------------------------------------------
    def encode(self, text: str | Sequence[str], *, add_bos: bool = False,
               add_eos: bool = False) -> list[int] | list[list[int]]:
        """``str -> list[int]``; a list of strings -> a list of id lists."""
        if isinstance(text, str):
            return self._sp.encode(text, add_bos=add_bos, add_eos=add_eos)
        if not all(isinstance(t, str) for t in text):
            raise TypeError("TextTokenizer.encode: expected a str or a sequence of str")
        return self._sp.encode(list(text), add_bos=add_bos, add_eos=add_eos)

    def decode(self, ids: Sequence[int] | np.ndarray | Sequence[Sequence[int]]) -> str | list[str]:
        """Ids -> text. Control ids (pad, bos, eos) decode to nothing. A 2-D input gives a list of strings."""
        arr = np.asarray(ids) if not isinstance(ids, (list, tuple)) or not ids or np.isscalar(ids[0]) else None
        if arr is not None and arr.ndim <= 1:
            flat = [int(i) for i in np.ravel(arr)]
            self._check_range(flat)
            return self._sp.decode(flat)
        rows = ids if arr is None else arr
        return [self.decode(row) for row in rows]

    def _check_range(self, ids: list[int]) -> None:
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"TextTokenizer.decode: ids {bad[:5]} are outside [0, {self.vocab_size})")


def _processor_from_proto(proto: bytes, name: str) -> spm.SentencePieceProcessor:
    sp = spm.SentencePieceProcessor()
    try:
        sp.load_from_serialized_proto(proto)
    except (RuntimeError, OSError, TypeError) as e:
        raise ValueError(f"{name} is not a valid SentencePiece model ({e})") from None
    if sp.get_piece_size() == 0:
        raise ValueError(f"{name} is not a valid SentencePiece model (no pieces)")
    return sp
