"""The data contract every pipeline implements: a host-local, checkpointable iterator of numpy batches."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import Any


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
