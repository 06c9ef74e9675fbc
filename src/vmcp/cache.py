"""A bounded LRU of live values that re-validates on every hit and loads on a miss.

Each replica keeps its live sessions (open backend connections) here. The store, not the
cache, is the truth: a hit is only served after ``check`` confirms the value is still
alive there, and a miss rebuilds the value with ``load``.

Why the races come out right (all on one asyncio loop, so a plain dict is safe between
``await`` points and no lock is needed):

- One flight per key. All concurrent ``get`` calls of a key await one task that does the
  whole operation (hit + check, or miss + load). The task is shielded: a waiter that is
  cancelled leaves, the work goes on for the others.
- Set wins over load. While a flight is under way, every ``set`` or ``evict`` of its key
  bumps a per-flight mutation counter. A load that finishes after such a mutation does
  not write back: its value is released through ``on_evict`` and the newer value wins.
- No stored value is a marker. Absence is a private sentinel compared by identity, so a
  value that is None, falsy, or equal to everything is cached, checked and released
  like any other.
- Expiry is identity-checked. A value found expired is removed only if the entry is
  still that very object, never a value a concurrent ``set`` just wrote.
- ``on_evict`` (closing backend connections, which may wait for in-flight calls) runs in
  its own task, so neither a ``get`` nor a ``set`` ever waits for a close. ``aclose``
  waits for those tasks.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Absent(enum.Enum):
    """The one marker for "no entry": never a value anybody can store."""

    ABSENT = enum.auto()


_ABSENT = _Absent.ABSENT


class EvictedWhileLoading(LookupError):
    """The key was evicted while its value was loading, so the loaded value was dropped."""


@dataclass(frozen=True)
class CacheStatistics:
    """Counters since construction, for metrics and the status page."""

    size: int
    capacity: int
    hits: int
    misses: int
    loads: int
    load_failures: int
    expirations: int
    evictions: int
    """Dropped for capacity (least recently used)."""
    removals: int
    """Dropped on purpose: the session ended (a client DELETE, ended on another replica)."""
    check_failures: int


class ValidatingCache(Generic[K, V]):
    """LRU cache whose hits are checked and whose misses are loaded, one flight per key.

    ``load(key)`` builds a value or raises (nothing is cached then). ``check(key, value)``
    returns True while the value is alive and False once it is gone; if it *raises*, the
    failure is taken as transient (the store is down, not the session) and the cached
    value is served. ``on_evict(key, value)`` releases a value that leaves the cache for
    any reason: LRU pressure, expiry, ``evict``, a lost set-vs-load race, or ``aclose``.
    ``on_displace(key, value)``, if given, releases instead a value pushed out by LRU
    pressure alone: it is still valid, only no longer kept here (a live session whose
    backend sessions must outlive this replica's copy).
    """

    def __init__(
        self,
        *,
        capacity: int,
        load: Callable[[K], Awaitable[V]],
        check: Callable[[K, V], Awaitable[bool]],
        on_evict: Callable[[K, V], Awaitable[None]] | None = None,
        on_displace: Callable[[K, V], Awaitable[None]] | None = None,
    ) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
        if load is None or check is None:
            raise ValueError("a ValidatingCache needs both load and check")
        self._capacity = capacity
        self._load = load
        self._check = check
        self._on_evict = on_evict
        self._on_displace = on_displace if on_displace is not None else on_evict
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._flights: dict[K, asyncio.Task[V]] = {}
        self._mutations: dict[K, int] = {}
        self._releases: set[asyncio.Task[None]] = set()
        self._hits = self._misses = self._loads = self._load_failures = 0
        self._expirations = self._evictions = self._removals = self._check_failures = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: K) -> bool:
        return key in self._entries

    def cached_keys(self) -> list[K]:
        """A snapshot of the cached keys, least recently used first."""
        return list(self._entries)

    def peek(self, key: K) -> V | None:
        """The cached value without checking it or touching recency; None if absent
        (``key in cache`` tells a stored None apart)."""
        return self._entries.get(key)

    async def get(self, key: K) -> V:
        """Return a live value for ``key``: a checked hit, or a fresh load.

        Raises whatever ``load`` raises when the key is not cached (or just expired).
        """
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.create_task(self._resolve(key), name=f"vmcp-cache-get-{key!r}")
            self._flights[key] = flight
            self._mutations[key] = 0
            flight.add_done_callback(lambda _: self._end_flight(key, flight))
        return await asyncio.shield(flight)

    def set(self, key: K, value: V, *, release_previous: bool = True) -> None:
        """Insert or replace ``key`` without loading.

        The replaced value is released unless ``release_previous`` is False (for a new
        value that wraps the old one and still needs it open).
        """
        self._mutated(key)
        previous = self._entries.pop(key, _ABSENT)
        if release_previous and previous is not _ABSENT and previous is not value:
            self._release(key, previous)
        self._insert(key, value)

    def evict(self, key: K) -> bool:
        """Drop ``key`` now and release its value; True if it was cached."""
        self._mutated(key)
        value = self._entries.pop(key, _ABSENT)
        if value is _ABSENT:
            return False
        self._removals += 1
        self._release(key, value)
        return True

    def statistics(self) -> CacheStatistics:
        return CacheStatistics(
            size=len(self._entries),
            capacity=self._capacity,
            hits=self._hits,
            misses=self._misses,
            loads=self._loads,
            load_failures=self._load_failures,
            expirations=self._expirations,
            evictions=self._evictions,
            removals=self._removals,
            check_failures=self._check_failures,
        )

    async def aclose(self) -> None:
        """Release every value and wait for all releases (including earlier ones)."""
        for flight in list(self._flights.values()):
            flight.cancel()
        while self._entries:
            key, value = self._entries.popitem(last=False)
            self._release(key, value)
        while self._releases:
            await asyncio.gather(*list(self._releases), return_exceptions=True)

    async def wait_released(self) -> None:
        """Wait until every release started so far has finished (tests, shutdown)."""
        while self._releases:
            await asyncio.gather(*list(self._releases), return_exceptions=True)

    async def _resolve(self, key: K) -> V:
        cached = self._entries.get(key, _ABSENT)
        if cached is not _ABSENT:
            try:
                alive = await self._check(key, cached)
            except Exception:
                self._check_failures += 1
                logger.warning("cache check failed, serving cached value", exc_info=True)
                alive = True
            current = self._entries.get(key, _ABSENT)
            if current is not _ABSENT and (alive or current is not cached):
                # Alive, or replaced by a concurrent set while we checked: serve what is
                # cached now, never a value that was released meanwhile.
                self._hits += 1
                return self._serve(key, current)
            if current is cached:
                self._expirations += 1
                del self._entries[key]
                self._release(key, cached)
            # Gone (expired, or evicted while checking): rebuild it in this same call.
        self._misses += 1
        mutations_before = self._mutations.get(key, 0)
        try:
            value = await self._load(key)
        except BaseException:
            self._load_failures += 1
            raise
        self._loads += 1
        if self._mutations.get(key, 0) != mutations_before:
            current = self._entries.get(key, _ABSENT)
            if current is not value:
                self._release(key, value)
            if current is not _ABSENT:
                return self._serve(key, current)
            # Evicted (e.g. terminated) while loading: the fresh value must not be cached.
            raise EvictedWhileLoading(key)
        self._insert(key, value)
        return value

    def _serve(self, key: K, value: V) -> V:
        if key in self._entries:
            self._entries.move_to_end(key)
        return value

    def _insert(self, key: K, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            old_key, old_value = self._entries.popitem(last=False)
            self._evictions += 1
            self._release(old_key, old_value, self._on_displace)

    def _mutated(self, key: K) -> None:
        if key in self._mutations:
            self._mutations[key] += 1

    def _end_flight(self, key: K, flight: asyncio.Task[V]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
            self._mutations.pop(key, None)
        if not flight.cancelled():
            flight.exception()  # mark it retrieved: every waiter may have been cancelled

    def _release(self, key: K, value: V,
                 release: Callable[[K, V], Awaitable[None]] | None = None) -> None:
        release = release if release is not None else self._on_evict
        if release is None:
            return
        task = asyncio.create_task(
            _release_logging_errors(release, key, value), name="vmcp-cache-release"
        )
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)


async def _release_logging_errors(
    on_evict: Callable[[K, V], Awaitable[None]], key: K, value: V
) -> None:
    """Run one release; a failing close is logged, never raised into the cache's users."""
    try:
        await on_evict(key, value)
    except Exception:
        logger.exception("releasing a cached value failed")
