"""What each backend offers, for client sessions that hold no upstream session on it yet.

Client sessions open their upstream sessions on first use (a call, a read, a subscribe),
but their ``initialize`` and their listings need every backend's capabilities and
catalog before that. This replica keeps them per (backend, scope) in a ``CatalogCache``
while fresh; a missing or stale one is fetched over a short-lived upstream session of
its own (initialize, list, DELETE) under the identity of the caller being served, so no
client session is charged an upstream session for a listing. Concurrent fetches of one
(backend, scope) share one run, and a backend that could not be listed is not asked
again for a few seconds: a hanging backend must not make every listing wait for its
connect timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from vmcp.aggregate import BackendCatalog
from vmcp.backend import BackendConnection
from vmcp.concurrency import SingleFlight
from vmcp.config import VmcpConfig
from vmcp.errors import BackendError, InvalidIdentity
from vmcp.identity import Principal, binding_for
from vmcp.lru import LRU
from vmcp.upstream.catalogs import SHARED, BackendProfile, CatalogCache
from vmcp.upstream.dialer import BackendDialer
from vmcp.upstream.discovery import discover
from vmcp.upstream.ledger import UpstreamLedger

logger = logging.getLogger(__name__)

FAILED_PROFILE_SECONDS = 5.0
"""How long a backend that could not be listed is left alone before it is tried again."""
MAX_FAILURES = 1024


class BackendProfiles:
    """The replica's profiles of the backends, fetched when missing or stale."""

    def __init__(self, config: Callable[[], VmcpConfig], dialer: BackendDialer,
                 ledger: UpstreamLedger, *, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self._config = config
        self._dialer = dialer
        self._ledger = ledger
        self._clock = clock
        self.cache = CatalogCache(config().session.catalog_ttl_seconds, clock=clock)
        self._flights: SingleFlight[tuple[str, str], BackendProfile | None] = SingleFlight()
        self._failed: LRU[tuple[str, str], float] = LRU(MAX_FAILURES)

    def scope(self, backend: str, principal: Principal) -> str:
        """Who shares a backend's catalog: everybody, unless the caller's own credentials
        go to that backend (then what it lists may depend on who asks)."""
        config = self._config().backend(backend)
        auth = config.auth if config is not None else None
        if auth is None or (auth.type not in ("forward", "token_exchange")
                            and not auth.allow_headers):
            return SHARED
        try:
            return binding_for(principal)
        except InvalidIdentity:
            return f"unusable:{id(principal)}"

    def cached(self, backend: str, principal: Principal) -> BackendProfile | None:
        """The fresh profile this replica holds, without contacting the backend."""
        return self.cache.get(backend, self.scope(backend, principal))

    def keep(self, backend: str, principal: Principal, connection: BackendConnection,
             catalog: BackendCatalog) -> BackendProfile:
        """Remember what ``backend`` listed over a client session's own connection."""
        profile = BackendProfile(catalog, connection.state.initialize_result)
        self.cache.put(backend, self.scope(backend, principal), profile)
        return profile

    async def get(self, backend: str, principal: Principal) -> BackendProfile | None:
        """The fresh profile, fetched if need be (None: the backend cannot be listed now;
        logged). The fetch runs with the credentials outgoing auth gives the current
        caller, who must be ``principal``."""
        key = (backend, self.scope(backend, principal))
        profile = self.cache.get(*key)
        if profile is not None:
            return profile
        failed_at = self._failed.peek(key)
        if failed_at is not None and self._clock() - failed_at < FAILED_PROFILE_SECONDS:
            return None
        return await self._flights.run(key, lambda: self._fetch(key))

    async def _fetch(self, key: tuple[str, str]) -> BackendProfile | None:
        backend, scope = key
        profile = self.cache.get(backend, scope)  # a flight that just ended may have put it
        if profile is not None:
            return profile
        try:
            connection = await self._dialer.dial(self._dialer.backend(backend))
        except (BackendError, TimeoutError) as exc:
            self._failure(key, exc)
            return None
        self._ledger.record_opened(backend)
        try:
            catalog = await discover(connection)
        except BackendError as exc:
            self._failure(key, exc)
            return None
        finally:
            try:
                await connection.aclose()
            except Exception:
                logger.warning("ending a listing's upstream session on %s failed", backend,
                               exc_info=True, extra={"backend": backend})
            self._ledger.record_ended(backend)
        self._failed.pop(key)
        profile = BackendProfile(catalog, connection.state.initialize_result)
        self.cache.put(backend, scope, profile)
        return profile

    def _failure(self, key: tuple[str, str], exc: Exception) -> None:
        logger.warning("listing backend %s failed: %s", key[0], exc, extra={"backend": key[0]})
        self._failed.put(key, self._clock())
