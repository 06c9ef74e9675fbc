"""The session factory with real backends: connect or re-attach, discover, route."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import httpx2

from vmcp import __version__
from vmcp.aggregate import BackendCatalog, RoutingTable, build_routing_table, listings_for
from vmcp.auth.outgoing import OutgoingAuth, current_caller
from vmcp.backend import BackendConnection, BackendState, BackendTarget, attach, connect
from vmcp.backend.breaker import CircuitBreaker
from vmcp.config import BackendConfig, VmcpConfig
from vmcp.errors import BackendError, ConfigError
from vmcp.session.binding import InvalidIdentity, Principal, binding_for
from vmcp.session.catalogs import SHARED, CatalogCache
from vmcp.session.ledger import UpstreamLedger
from vmcp.session.live import LiveSession
from vmcp.session.multisession import Discover, MultiSession
from vmcp.store.event_log import EventLog
from vmcp.store.pubsub import SessionRelay
from vmcp.tracing import tracer

logger = logging.getLogger(__name__)

CLIENT_INFO = {"name": "vmcp", "version": __version__}
# What vmcp tells backends it can do: it relays these requests to its own client.
CLIENT_CAPABILITIES: dict[str, Any] = {
    "sampling": {},
    "elicitation": {"form": {}, "url": {}},
    "roots": {"listChanged": True},
}
MAX_LIST_PAGES = 100

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
        self._http = http
        self._record_state = record_state
        self._is_healthy = is_healthy
        self._connect_slots = anyio.Semaphore(config.limits.max_concurrent_backend_connects)

    def catalogs_seen(self) -> dict[str, BackendCatalog]:
        """What each backend last listed here (shared catalogs only)."""
        return self._catalogs.latest()

    def set_state_recorder(self, record_state: StateRecorder) -> None:
        self._record_state = record_state

    @property
    def config(self) -> VmcpConfig:
        return self._config

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
        """Open or re-attach one backend, with the credentials of the request being served
        (outgoing auth), every call bounded by the backend's and the gateway's timeout."""
        outgoing = self._outgoing
        target = BackendTarget(backend.name, backend.url, backend.transport,
                               {**backend.headers, **outgoing.static_headers(backend.name)})
        hook = self._reinitialized_hook(session_id, backend.name)
        timeout = min(backend.call_timeout_seconds, self._config.limits.call_timeout_seconds)
        with anyio.fail_after(backend.connect_timeout_seconds):
            headers = await outgoing.headers_for(backend.name, current_caller())
            if stored is not None:
                state = BackendState.from_json(stored, backend=backend.name)
                connection = await attach(target, self._http, state, client_info=CLIENT_INFO,
                                          capabilities=CLIENT_CAPABILITIES, timeout=timeout,
                                          on_reinitialized=hook, headers=headers)
            else:
                connection = await connect(target, self._http, client_info=CLIENT_INFO,
                                           capabilities=CLIENT_CAPABILITIES, timeout=timeout,
                                           on_reinitialized=hook, headers=headers)
        return outgoing.wrap(connection)

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
            catalog = await discover(name, connection)
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
                                replica_id=self._config.server.replica_id)
        except BaseException:
            with anyio.CancelScope(shield=True):
                for name, connection in connections.items():
                    await connection.aclose()
                    self.ledger.record_ended(name)
            raise

    def route(self, catalogs: Mapping[str, BackendCatalog]) -> RoutingTable:
        try:
            return build_routing_table(catalogs, self._config.aggregation,
                                       on_warning=logger.warning)
        except ConfigError as exc:
            logger.error("aggregation failed: %s", exc)
            raise


async def discover(name: str, connection: BackendConnection) -> BackendCatalog:
    """Everything one backend offers, following pagination cursors.

    The lists are fetched in parallel; the first failure is raised as itself (not as an
    exception group), so callers can handle a ``BackendError`` like any other.
    """
    capabilities = connection.state.initialize_result.get("capabilities") or {}
    wanted = listings_for(capabilities)
    results: dict[str, list[dict[str, Any]]] = {}
    failures: list[BackendError] = []

    async def collect(method: str, field: str) -> None:
        try:
            results[field] = await _list_all(connection, method, field)
        except BackendError as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        for method, field in wanted:
            tg.start_soon(collect, method, field)
    if failures:
        raise failures[0]
    return BackendCatalog(
        tools=results.get("tools", []),
        resources=results.get("resources", []),
        resource_templates=results.get("resourceTemplates", []),
        prompts=results.get("prompts", []),
    )


async def _list_all(connection: BackendConnection, method: str,
                    field: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(MAX_LIST_PAGES):
        page = await connection.request(method, {"cursor": cursor} if cursor else None)
        items.extend(item for item in page.get(field, []) if isinstance(item, dict))
        cursor = page.get("nextCursor")
        if not cursor:
            break
    return items
