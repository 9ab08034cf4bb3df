"""Text records -> tokenized, packed, batched numpy rows, with exact resumption (grain; no TensorFlow).

Stages, in order (all deterministic given ``seed``)::

    source (random access, e.g. tfds.data_source)          records {'text': bytes|str, ...}
    [process_index::process_count]                         each host reads a disjoint, interleaved slice
    shuffle(seed) . repeat(num_epochs)   (train only)      a fresh permutation every epoch (grain reseeds per epoch)
    repeat(num_epochs)                   (eval)            in corpus order
    tokenize                                               [bos] + SentencePiece ids + [eos]
    pack to seq_len                                        teal_jax.data.packing ('concat' or 'first_fit')
    batch(batch_size, drop_remainder)                      {'tokens','segment_ids','positions','loss_mask'}

Batches are ``{'tokens': int32 [B, T], 'segment_ids': int32 [B, T], 'positions': int32 [B, T],
'loss_mask': float32 [B, T]}`` with ``B`` the host batch and ``T = seq_len``.

:class:`~teal_jax.data.iterator.GrainBatches` wraps the dataset: ``get_state()`` is grain's iterator state made
JSON-safe (tuples become lists, bytes become ``{'__bytes__': base64}``); ``set_state`` undoes that and
hands it back to grain, after which the next batch is exactly the one an uninterrupted run would have produced.
Prefetching is thread-based (grain ``ReadOptions``), which grain accounts for in its state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from teal_jax.data.packing import pack_dataset

BATCH_KEYS = ("tokens", "segment_ids", "positions", "loss_mask")


class Tokenize(grain.transforms.Map):
    """record[text_key] -> {'tokens': int32 [n], 'loss_mask': float32 [n]} (ones).

    Holds the model *path* and loads lazily, so the transform pickles (for grain worker processes) and each process
    builds its own SentencePiece processor.
    """

    def __init__(self, tokenizer_model: str, *, text_key: str = "text", add_bos: bool = True, add_eos: bool = True):
        self.tokenizer_model, self.text_key = tokenizer_model, text_key
        self.add_bos, self.add_eos = add_bos, add_eos
        self._tok = None

    def __getstate__(self):
        return {**self.__dict__, "_tok": None}

    @property
    def tokenizer(self):
        if self._tok is None:
            from teal_jax.tokenizers.text import TextTokenizer

            self._tok = TextTokenizer.load(self.tokenizer_model)
        return self._tok

    def map(self, record: dict[str, Any]) -> dict[str, np.ndarray]:
        if self.text_key not in record:
            raise ValueError(f"record has no field {self.text_key!r} (fields: {sorted(record)})")
        text = record[self.text_key]
        if isinstance(text, (bytes, np.bytes_)):
            text = bytes(text).decode("utf-8")
        ids = self.tokenizer.encode(str(text), add_bos=self.add_bos, add_eos=self.add_eos)
        tokens = np.asarray(ids, np.int32)
        return {"tokens": tokens, "loss_mask": np.ones(tokens.shape, np.float32)}


def text_dataset(
    source: Sequence[dict[str, Any]],
    *,
    tokenizer_model: str,
    batch_size: int,
    seq_len: int,
    train: bool,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    num_epochs: int | None = None,
    text_key: str = "text",
    add_bos: bool = True,
    add_eos: bool = True,
    packing: str = "concat",
    packing_bins: int = 16,
    read_threads: int = 2,
) -> grain.IterDataset:
    """The stages of the module docstring as a grain ``IterDataset`` of batches.

    ``num_epochs=None`` repeats forever (train and eval alike: every host then yields as many eval batches as the
    trainer asks for, whatever its share of the eval split). A finite ``num_epochs`` ends the stream; its last
    partial row is padded and a last partial batch is dropped.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count})")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs={num_epochs} must be >= 1 (or None: forever)")
    if len(source) < process_count:
        raise ValueError(f"the source has {len(source)} records, fewer than process_count={process_count}: "
                         "some host would read nothing")
    ds = grain.MapDataset.source(source)[process_index::process_count]
    if train:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    ds = ds.map(Tokenize(tokenizer_model, text_key=text_key, add_bos=add_bos, add_eos=add_eos))
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=256))
    ds = pack_dataset(ds, seq_len, method=packing, num_bins=packing_bins, seed=seed)
    return ds.batch(batch_size, drop_remainder=True)
