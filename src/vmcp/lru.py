"""A bounded mapping that forgets the least recently used entries first."""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar, overload

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
D = TypeVar("D")


class LRU(Generic[K, V]):
    """At most ``capacity`` entries; a ``get`` or ``put`` makes an entry the most recent.

    Built on a dict's insertion order (moving an entry is a pop and a re-insert), so it
    costs what a dict costs. Not thread-safe; within one event loop no lock is needed.
    """

    __slots__ = ("_capacity", "_entries")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._entries: dict[K, V] = {}

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[K]:
        """Keys from the least to the most recently used."""
        return iter(list(self._entries))

    def values(self) -> list[V]:
        return list(self._entries.values())

    @overload
    def get(self, key: K) -> V | None: ...
    @overload
    def get(self, key: K, default: D) -> V | D: ...

    def get(self, key: K, default: object = None) -> object:
        """The entry for ``key``, now the most recent; ``default`` if there is none."""
        try:
            value = self._entries.pop(key)
        except KeyError:
            return default
        self._entries[key] = value
        return value

    def peek(self, key: K) -> V | None:
        """The entry for ``key`` without making it more recent."""
        return self._entries.get(key)

    def put(self, key: K, value: V) -> list[tuple[K, V]]:
        """Store ``value`` as the most recent entry; returns the entries it pushed out."""
        self._entries.pop(key, None)
        self._entries[key] = value
        evicted: list[tuple[K, V]] = []
        while len(self._entries) > self._capacity:
            oldest = next(iter(self._entries))
            evicted.append((oldest, self._entries.pop(oldest)))
        return evicted

    def pop(self, key: K) -> V | None:
        return self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
