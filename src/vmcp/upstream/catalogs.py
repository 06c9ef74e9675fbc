"""What each backend offers, remembered per replica for a short time.

Listing a backend's tools, resources, templates and prompts costs four round trips per
backend. Without this cache every new session paid them, and so did every restore on a
replica that had not seen the session, although re-attaching itself costs nothing. A
catalog is shared by all sessions that see the backend with the same credentials: per
identity for backends whose outgoing auth carries the caller's own credentials, one for
everybody otherwise. A ``list_changed`` from the backend replaces the entry at once; the
TTL bounds how stale a catalog can be when no such notice comes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vmcp.aggregate import BackendCatalog, RoutingTable, build_routing_table
from vmcp.config import AggregationConfig
from vmcp.errors import ConfigError
from vmcp.lru import LRU

logger = logging.getLogger(__name__)

SHARED = ""
MAX_ENTRIES = 4096


def routing_table(catalogs: Mapping[str, BackendCatalog],
                  aggregation: AggregationConfig) -> RoutingTable:
    """The routing table over ``catalogs``; conflicts and renames are logged as warnings,
    an aggregation that cannot be built (manual conflicts left open) as an error."""
    try:
        return build_routing_table(catalogs, aggregation, on_warning=logger.warning)
    except ConfigError as exc:
        logger.error("aggregation failed: %s", exc)
        raise


@dataclass(frozen=True)
class BackendProfile:
    """What a backend offers and said of itself: its catalog and its initialize result
    (capabilities, instructions), enough to answer a client's ``initialize`` and its
    listings without an upstream session of its own."""

    catalog: BackendCatalog
    initialize_result: Mapping[str, Any] = field(default_factory=dict)


class CatalogCache:
    """Profiles by (backend, scope), each kept for ``ttl_seconds`` (0: not at all)."""

    def __init__(self, ttl_seconds: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: LRU[tuple[str, str], tuple[float, BackendProfile]] = LRU(MAX_ENTRIES)
        self._latest: dict[str, BackendCatalog] = {}

    @property
    def enabled(self) -> bool:
        return self._ttl > 0

    def get(self, backend: str, scope: str) -> BackendProfile | None:
        entry = self._entries.peek((backend, scope))
        if entry is None:
            return None
        stored_at, profile = entry
        if self._clock() - stored_at >= self._ttl:
            self._entries.pop((backend, scope))
            return None
        return profile

    def put(self, backend: str, scope: str, profile: BackendProfile) -> None:
        if scope == SHARED:
            self._latest[backend] = profile.catalog
        if not self.enabled:
            return
        self._entries.put((backend, scope), (self._clock(), profile))

    def latest(self) -> dict[str, BackendCatalog]:
        """Each backend's most recently listed catalog shared by everybody, however old
        (for the operator's view of the aggregated catalog; per-caller catalogs are not
        shown)."""
        return dict(self._latest)
