"""The backends' listings as each stateless caller sees them, and the views built on them.

Each backend's tools, resources, templates and prompts are listed per caller and cached:
a modern backend's for as long as its own caching hint says (all callers share a
``public`` listing, a ``private`` one is per identity), a session-based backend's per
identity (it is listed over that identity's upstream session). Nothing is re-listed
sooner than ``stateless.catalog_ttl_seconds``, so calls do not fan out to every backend;
a name nobody knows triggers one early re-listing per identity and interval, and a
backend's ``list_changed`` drops its cached listing. A backend whose listing failed is
not asked again for that interval (at least a second), so a dead backend costs each
request nothing; its last listing, if any, is used meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import anyio

from vmcp.aggregate import BackendCatalog, RoutingTable
from vmcp.concurrency import SingleFlight
from vmcp.errors import BackendError
from vmcp.lru import LRU
from vmcp.stateless.caller import Caller
from vmcp.stateless.pool import BackendKind

logger = logging.getLogger(__name__)

MAX_CATALOG_SECONDS: Final = 300.0
"""The longest a listing is kept, whatever the backend's caching hint says."""
SESSION_CATALOG_SECONDS: Final = 30.0
"""How long a session-based backend's listing is kept (it gives no caching hint)."""
MAX_CATALOG_ENTRIES: Final = 4096
"""Cached listings kept at most (per backend and identity); the least recently used go."""
MAX_VIEWS: Final = 256
SHARED: Final = ""
"""The scope of a listing every caller shares (a modern backend's ``public`` one)."""


@dataclass(frozen=True, eq=False)
class CatalogEntry:
    """One backend's listing as one caller sees it, with what its caching hints allow."""

    backend: str
    kind: BackendKind
    catalog: BackendCatalog
    capabilities: Mapping[str, Any]
    instructions: str | None
    ttl_ms: int
    private: bool
    fetched_at: float


@dataclass(eq=False)
class View:
    """What one caller sees: the routing table over its backends' catalogs.

    ``ttl_ms`` and ``private`` are the caching hints of anything derived from it: the
    shortest of the contributing listings', and private if any of them is. ``shaped``
    memoizes the listings built from it (see the server layer).
    """

    routing: RoutingTable
    entries: Mapping[str, CatalogEntry]
    ttl_ms: int
    private: bool
    shaped: dict[str, dict[str, Any]] = field(default_factory=dict)


Lister = Callable[[str, Caller], Awaitable[CatalogEntry]]
Router = Callable[[Mapping[str, BackendCatalog]], RoutingTable]
Key = tuple[str, str]  # (backend, identity binding or SHARED)


class CallerCatalogs:
    """Listings per (backend, identity), fetched by ``lister``, and the views over them.

    A view is rebuilt only when one of its listings changed, so that callers who see the
    same listings share one routing table (and the listings shaped from it).
    """

    def __init__(self, lister: Lister, route: Router, *, floor_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lister = lister
        self._route = route
        self.floor = floor_seconds
        self._clock = clock
        self._entries: LRU[Key, CatalogEntry] = LRU(MAX_CATALOG_ENTRIES)
        self._failed: LRU[Key, float] = LRU(MAX_CATALOG_ENTRIES)
        self._views: LRU[tuple[tuple[str, int], ...], View] = LRU(MAX_VIEWS)
        self._last_refresh: LRU[str, float] = LRU(MAX_CATALOG_ENTRIES)
        self._listing: SingleFlight[Key, CatalogEntry | None] = SingleFlight()

    async def view(self, caller: Caller, backends: Sequence[str], *,
                   refresh: bool = False) -> View:
        """What ``caller`` sees of ``backends``; ``refresh`` re-lists them first, at most
        once per interval per identity."""
        if refresh and not self._may_refresh(caller.binding):
            refresh = False
        found: dict[str, CatalogEntry] = {}
        stale: list[str] = []
        for name in backends:
            cached = None if refresh else self._fresh(name, caller.binding)
            if cached is not None:
                found[name] = cached
            else:
                stale.append(name)

        async def one(name: str) -> None:
            entry = await self._entry(name, caller)
            if entry is not None:
                found[name] = entry

        if stale:
            async with anyio.create_task_group() as tg:
                for name in stale:
                    tg.start_soon(one, name)
        entries = {name: found[name] for name in backends if name in found}
        key = tuple((name, id(entry)) for name, entry in entries.items())
        view = self._views.get(key)
        if view is None:
            view = View(self._route({name: e.catalog for name, e in entries.items()}),
                        entries, ttl_ms=min((e.ttl_ms for e in entries.values()), default=0),
                        private=any(e.private for e in entries.values()))
            self._views.put(key, view)
        return view

    def invalidate(self, backend: str, binding: str) -> None:
        """Forget ``backend``'s listing as seen by ``binding`` (and its shared one)."""
        self._entries.pop((backend, binding))
        self._entries.pop((backend, SHARED))

    def forget(self, backend: str | None) -> None:
        """Forget every caller's listing of ``backend`` (of every backend if None): it
        announced a change, so whoever lists next must see the new one."""
        for key in self._entries:
            if backend is None or key[0] == backend:
                self._entries.pop(key)

    def _may_refresh(self, binding: str) -> bool:
        now = self._clock()
        last = self._last_refresh.get(binding)
        if last is not None and now - last < max(self.floor, 1.0):
            return False
        self._last_refresh.put(binding, now)
        return True

    def _fresh(self, backend: str, binding: str) -> CatalogEntry | None:
        for key in ((backend, binding), (backend, SHARED)):
            entry = self._entries.peek(key)
            if entry is None:
                continue
            hinted = SESSION_CATALOG_SECONDS if entry.kind is BackendKind.SESSION else (
                entry.ttl_ms / 1000)
            lifetime = min(max(hinted, self.floor), MAX_CATALOG_SECONDS)
            if self._clock() - entry.fetched_at < lifetime:
                self._entries.get(key)  # most recently used
                return entry
        return None

    def _last_known(self, backend: str, binding: str) -> CatalogEntry | None:
        return self._entries.get((backend, binding)) or self._entries.get((backend, SHARED))

    async def _entry(self, name: str, caller: Caller) -> CatalogEntry | None:
        """The caller's listing of ``name``, listed now (one listing per backend and
        identity at a time), or the last one known if listing fails or failed lately."""
        own = (name, caller.binding)
        failed = self._failed.peek(own)
        if failed is not None and self._clock() - failed < max(self.floor, 1.0):
            return self._last_known(name, caller.binding)

        async def list_and_keep() -> CatalogEntry | None:
            try:
                entry = await self._lister(name, caller)
            except (BackendError, TimeoutError) as exc:
                logger.warning("listing backend %s failed: %s", name, exc,
                               extra={"backend": name})
                self._failed.put(own, self._clock())
                return self._last_known(name, caller.binding)
            self._failed.pop(own)
            self._entries.put(own if entry.private else (name, SHARED), entry)
            return entry

        return await self._listing.run(own, list_and_keep)
