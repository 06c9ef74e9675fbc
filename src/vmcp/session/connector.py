"""The session factory with real backends: connect or re-attach, discover, route."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

import anyio
import httpx2

from vmcp.aggregate import BackendCatalog, RoutingTable
from vmcp.auth.outgoing import OutgoingAuth, current_caller
from vmcp.backend import BackendConnection, BackendState, StdioProcesses
from vmcp.backend.breaker import CircuitBreaker
from vmcp.config import BackendConfig, VmcpConfig
from vmcp.errors import BackendError, InvalidIdentity
from vmcp.identity import Principal, binding_for
from vmcp.session.live import LiveSession
from vmcp.session.multisession import Discover, MultiSession
from vmcp.session.streams import StreamBounds
from vmcp.store.event_log import EventLog
from vmcp.store.pubsub import SessionRelay
from vmcp.tracing import tracer
from vmcp.upstream.catalogs import SHARED, CatalogCache, routing_table
from vmcp.upstream.dialer import BackendDialer
from vmcp.upstream.discovery import discover
from vmcp.upstream.ledger import UpstreamLedger

logger = logging.getLogger(__name__)


# Persists a backend's new state (after it re-initialized) into the session's record.
StateRecorder = Callable[[str, str, str], Awaitable[bool]]
HealthFilter = Callable[[str], bool]


class BackendConnector:
    """Builds ``MultiSession`` objects: the ``SessionFactory`` of the running gateway.

    New sessions connect every configured backend that the health filter allows, in
    parallel under a concurrency bound, each within its own timeout; a backend that
    fails is left out (a partial session, possibly empty). Restores re-attach to the
    stored backend sessions without any handshake, and are never filtered by health.
    """

    def __init__(
        self,
        config: VmcpConfig,
        http: httpx2.AsyncClient,
        *,
        record_state: StateRecorder | None = None,
        is_healthy: HealthFilter | None = None,
        relay: SessionRelay | None = None,
        event_log: EventLog | None = None,
        outgoing: OutgoingAuth | None = None,
        stdio: StdioProcesses | None = None,
    ) -> None:
        self._config = config
        self._outgoing = outgoing if outgoing is not None else OutgoingAuth({})
        self._relay = relay
        self._event_log = event_log
        self.ledger = UpstreamLedger()
        self._catalogs = CatalogCache(config.session.catalog_ttl_seconds)
        health = config.health
        self.breaker = (CircuitBreaker(failure_threshold=health.breaker_failure_threshold,
                                       open_seconds=health.breaker_open_seconds)
                        if health.breaker_failure_threshold else None)
        self._dialer = BackendDialer(lambda: self._config, http, self._outgoing, stdio)
        self._record_state = record_state
        self._is_healthy = is_healthy
        self._connect_slots = anyio.Semaphore(config.limits.max_concurrent_backend_connects)

    def catalogs_seen(self) -> dict[str, BackendCatalog]:
        """What each backend last listed here (shared catalogs only)."""
        return self._catalogs.latest()

    @property
    def config(self) -> VmcpConfig:
        return self._config

    @property
    def stream_bounds(self) -> StreamBounds:
        """The bounds of each request's response stream, from ``limits``."""
        limits = self._config.limits
        return StreamBounds(max_events=limits.response_buffer_events,
                            max_bytes=limits.response_buffer_bytes,
                            stall_seconds=limits.slow_client_seconds)

    def reconfigure(self, config: VmcpConfig) -> None:
        """Use ``config``'s backends and aggregation for everything from now on."""
        self._config = config

    async def reconcile(self, session: LiveSession) -> bool:
        """Bring a live session in line with the configured backends (after a reload, or
        when a backend recovers): connect the configured ones it lacks that the health
        filter allows, end the removed ones. True if anything changed.

        A backend sent each caller's own credentials is left for the session's next
        ``initialize``: there is no caller here to connect it for."""
        if not isinstance(session, MultiSession):
            raise TypeError("only sessions this connector built can be reconciled")
        wanted = {b.name: b for b in self._config.backends}
        current = set(session.backend_names())
        added = [b for name, b in wanted.items() if name not in current
                 and (self._is_healthy is None or self._is_healthy(name))
                 and not (current_caller() is None and self._outgoing.per_caller(name))]
        removed = sorted(current - set(wanted))
        if not added and not removed:
            return False
        connections = await self._gather(session.session_id, added, states={})
        await session.reconcile(connections, removed)
        return True

    async def open(self, session_id: str, principal: Principal) -> MultiSession:
        backends = [
            b for b in self._config.backends
            if self._is_healthy is None or self._is_healthy(b.name)
        ]
        connections = await self._gather(session_id, backends, states={})
        return await self._assemble(session_id, connections, principal)

    async def restore(self, session_id: str, principal: Principal, backends: Sequence[str],
                      states: Mapping[str, str]) -> MultiSession:
        configured = []
        for name in backends:
            backend = self._config.backend(name)
            if backend is None:
                logger.warning("stored backend %s is no longer configured", name,
                               extra={"session_id": session_id})
                continue
            configured.append(backend)
        with tracer.start_as_current_span("session restore",
                                          attributes={"vmcp.backends": len(configured)}):
            connections = await self._gather(session_id, configured, states)
            return await self._assemble(session_id, connections, principal)

    async def end(self, session_id: str, backends: Sequence[str],
                  states: Mapping[str, str]) -> None:
        """Re-attach each stored backend session and close it, which ends it upstream
        (an HTTP DELETE), without any discovery."""
        configured = [backend for name in backends
                      if name in states and (backend := self._config.backend(name)) is not None]
        connections = await self._gather(session_id, configured, states)
        async with anyio.create_task_group() as tg:
            for name, connection in connections.items():
                tg.start_soon(self._end_one, name, connection)

    async def _end_one(self, name: str, connection: BackendConnection) -> None:
        try:
            await connection.aclose()
        finally:
            self.ledger.record_ended(name)

    async def _gather(self, session_id: str, backends: Sequence[BackendConfig],
                      states: Mapping[str, str]) -> dict[str, BackendConnection]:
        connections: dict[str, BackendConnection] = {}

        async def one(backend: BackendConfig) -> None:
            async with self._connect_slots:
                try:
                    connections[backend.name] = await self._connect(
                        session_id, backend, states.get(backend.name))
                    self.ledger.record_opened(backend.name)
                except (BackendError, TimeoutError) as exc:
                    logger.warning("backend %s left out of session: %s", backend.name, exc,
                                   extra={"session_id": session_id, "backend": backend.name})

        async with anyio.create_task_group() as tg:
            for backend in backends:
                tg.start_soon(one, backend)
        return connections

    async def _connect(self, session_id: str, backend: BackendConfig,
                       stored: str | None) -> BackendConnection:
        """Open or re-attach one backend with the credentials of the request being served."""
        return await self._dialer.dial(
            backend, stored=stored,
            on_reinitialized=self._reinitialized_hook(session_id, backend.name))

    def _reinitialized_hook(self, session_id: str, backend: str
                            ) -> Callable[[BackendState], Awaitable[None]]:
        async def record(state: BackendState) -> None:
            if self._record_state is not None:
                await self._record_state(session_id, backend, state.to_json())

        return record

    def _catalog_scope(self, backend: str, principal: Principal) -> str:
        """Who shares a backend's catalog: everybody, unless the caller's own credentials
        go to that backend (then what it lists may depend on who asks)."""
        config = self._config.backend(backend)
        auth = config.auth if config is not None else None
        if auth is None or (auth.type not in ("forward", "token_exchange")
                            and not auth.allow_headers):
            return SHARED
        try:
            return binding_for(principal)
        except InvalidIdentity:
            return f"unusable:{id(principal)}"

    def _discoverer(self, principal: Principal) -> Discover:
        """Discovery for one session: always asks the backend, and keeps the answer."""
        async def discover_and_keep(name: str, connection: BackendConnection
                                    ) -> BackendCatalog:
            catalog = await discover(connection)
            self._catalogs.put(name, self._catalog_scope(name, principal), catalog)
            return catalog

        return discover_and_keep

    async def _assemble(self, session_id: str, connections: dict[str, BackendConnection],
                        principal: Principal) -> MultiSession:
        catalogs: dict[str, BackendCatalog] = {}
        fresh = self._discoverer(principal)

        async def one(name: str, connection: BackendConnection) -> None:
            cached = self._catalogs.get(name, self._catalog_scope(name, principal))
            if cached is not None:
                catalogs[name] = cached
                return
            try:
                catalogs[name] = await fresh(name, connection)
            except BackendError as exc:
                logger.warning("discovery on backend %s failed: %s", name, exc,
                               extra={"session_id": session_id, "backend": name})
                catalogs[name] = BackendCatalog()

        try:
            async with anyio.create_task_group() as tg:
                for name, connection in connections.items():
                    tg.start_soon(one, name, connection)
            return MultiSession(session_id, connections, catalogs, rebuild=self.route,
                                discover=fresh, relay=self._relay,
                                event_log=self._event_log, ledger=self.ledger,
                                breaker=self.breaker,
                                replica_id=self._config.server.replica_id,
                                stream_bounds=self.stream_bounds)
        except BaseException:
            with anyio.CancelScope(shield=True):
                for name, connection in connections.items():
                    await connection.aclose()
                    self.ledger.record_ended(name)
            raise

    def route(self, catalogs: Mapping[str, BackendCatalog]) -> RoutingTable:
        return routing_table(catalogs, self._config.aggregation)
