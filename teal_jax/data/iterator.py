"""The data contract every pipeline implements: a host-local, checkpointable iterator of numpy batches."""

from __future__ import annotations

import abc
import base64
import json
from collections.abc import Iterator
from typing import Any

import numpy as np


class DataIterator(abc.ABC):
    """A host-local iterator of numpy batches that can be checkpointed.

    ``get_state()`` returns a JSON-serialisable dict; ``set_state(state)`` restores it so the next batch is exactly
    the one an uninterrupted run would have seen.
    """

    @abc.abstractmethod
    def __next__(self) -> dict[str, Any]: ...

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    @abc.abstractmethod
    def get_state(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def set_state(self, state: dict[str, Any]) -> None: ...


class IndexedIterator(DataIterator):
    """An iterator whose ``i``-th batch is a pure function of its settings and ``i`` (synthetic and task streams):
    its whole state is the index of the next batch."""

    index: int = 0

    def get_state(self) -> dict[str, Any]:
        return {"index": self.index}

    def set_state(self, state: dict[str, Any]) -> None:
        self.index = int(state["index"])


def _to_json(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _to_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_json(v) for v in x]
    if isinstance(x, bytes):
        return {"__bytes__": base64.b64encode(x).decode("ascii")}
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def _from_json(x: Any) -> Any:
    if isinstance(x, dict):
        if set(x) == {"__bytes__"}:
            return base64.b64decode(x["__bytes__"])
        return {k: _from_json(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_from_json(v) for v in x]
    return x


class GrainBatches(DataIterator):
    """A grain dataset's iterator (text, image and speech pipelines): grain's own state, made JSON-safe (bytes as
    base64, numpy scalars as Python numbers), restores exactly; a state that does not fit the pipeline is a
    ValueError naming ``what`` the pipeline is."""

    def __init__(self, dataset, what: str = "data"):
        self._dataset = dataset
        self._it = iter(dataset)
        self.what = what

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._it)

    def get_state(self) -> dict[str, Any]:
        state = _to_json(self._it.get_state())
        json.dumps(state)  # fail here, not in the checkpointer, if grain ever returns something unexpected
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        try:
            self._it.set_state(_from_json(dict(state)))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"data iterator state {json.dumps(state)[:300]} does not fit this {self.what} pipeline "
                             f"({type(e).__name__}: {e}); was it saved by another data config?") from None
