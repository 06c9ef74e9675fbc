"""The session factory with real backends: what a session may use, opened on first use.

A new session gets the list of backends it may use and their catalogs from the replica's
profiles (``upstream/profiles``), and no upstream session at all: each is opened when the
client first needs that backend (``session/upstreams``), re-attaching to the one another
replica recorded for this client session if there is one. A restore re-attaches the
recorded ones without any handshake and leaves the others to be opened on first use.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import httpx2

from vmcp.aggregate import BackendCatalog, RoutingTable
from vmcp.auth.outgoing import OutgoingAuth, current_caller
from vmcp.backend import BackendConnection, BackendState, StdioProcesses
from vmcp.backend.breaker import CircuitBreaker
from vmcp.config import BackendConfig, VmcpConfig
from vmcp.errors import BackendError, StoreError
from vmcp.identity import ANONYMOUS, Principal
from vmcp.session import metadata as md
from vmcp.session.live import LiveSession
from vmcp.session.multisession import Discover, MultiSession, Profiles
from vmcp.session.server_messages import UPSTREAM_LISTENING, UPSTREAM_OPENED, Recorded
from vmcp.session.streams import StreamBounds
from vmcp.session.upstreams import Opener
from vmcp.store.base import SessionStore
from vmcp.store.event_log import EventLog
from vmcp.store.pubsub import SessionRelay
from vmcp.tracing import span
from vmcp.upstream.catalogs import BackendProfile, routing_table
from vmcp.upstream.dialer import BackendDialer
from vmcp.upstream.discovery import discover
from vmcp.upstream.ledger import UpstreamLedger
from vmcp.upstream.profiles import BackendProfiles

logger = logging.getLogger(__name__)


HealthFilter = Callable[[str], bool]
LISTENER_WAIT_SECONDS = 2.0
"""How long a first use waits for the replica holding the client's stream to listen to
the new upstream session (a replica that listens to the session for another reason
never answers: the wait ends at this bound)."""


class BackendConnector:
    """Builds ``MultiSession`` objects: the ``SessionFactory`` of the running gateway.

    New sessions may use every configured backend that the health filter allows; their
    capabilities and catalogs come from the replica's profiles (fetched in parallel
    under a concurrency bound when missing). A backend that cannot be listed now is
    still the session's: its first use tries it again and fails clearly if it is down.
    Restores re-attach to the stored upstream sessions without any handshake, and are
    never filtered by health. With the session ``store``, each upstream session is
    recorded as it opens (see ``session/metadata``): a backend opened on one replica is
    re-attached, not opened again, by another, and a re-initialize is recorded too;
    without it (a single process's tests) nothing is recorded.
    """

    def __init__(
        self,
        config: VmcpConfig,
        http: httpx2.AsyncClient,
        *,
        store: SessionStore | None = None,
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
        health = config.health
        self.breaker = (CircuitBreaker(failure_threshold=health.breaker_failure_threshold,
                                       open_seconds=health.breaker_open_seconds)
                        if health.breaker_failure_threshold else None)
        self._dialer = BackendDialer(lambda: self._config, http, self._outgoing, stdio)
        self.profiles = BackendProfiles(lambda: self._config, self._dialer, self.ledger)
        self._store = store
        self._is_healthy = is_healthy
        self._connect_slots = anyio.Semaphore(config.limits.max_concurrent_backend_connects)

    def catalogs_seen(self) -> dict[str, BackendCatalog]:
        """What each backend last listed here (shared catalogs only)."""
        return self.profiles.cache.latest()

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
        when a backend recovers): add the configured ones it lacks that the health
        filter allows (opened on first use, like the others), end the removed ones.
        True if anything changed.

        A backend sent each caller's own credentials is left for the session's next
        ``initialize``: there is no caller here to list it for."""
        if not isinstance(session, MultiSession):
            raise TypeError("only sessions this connector built can be reconciled")
        wanted = {b.name: b for b in self._config.backends}
        current = set(session.backend_names())
        caller = current_caller()
        added = [name for name in wanted if name not in current
                 and (self._is_healthy is None or self._is_healthy(name))
                 and not (caller is None and self._outgoing.per_caller(name))]
        removed = sorted(current - set(wanted))
        if not added and not removed:
            return False
        principal = caller.principal if caller is not None else ANONYMOUS
        profiles = await self._profiles_of(added, principal)
        await session.reconcile({name: profiles.get(name) for name in added}, removed)
        return True

    async def open(self, session_id: str, principal: Principal) -> MultiSession:
        names = [b.name for b in self._config.backends
                 if self._is_healthy is None or self._is_healthy(b.name)]
        profiles = await self._profiles_of(names, principal)
        connections = await self._gather(session_id, self._attached_at_once(names, {}), {})
        return await self._assemble(session_id, principal, names, connections, profiles)

    async def restore(self, session_id: str, principal: Principal, backends: Sequence[str],
                      states: Mapping[str, str]) -> MultiSession:
        names = []
        for name in backends:
            if self._config.backend(name) is None:
                logger.warning("stored backend %s is no longer configured", name,
                               extra={"session_id": session_id})
                continue
            names.append(name)
        opened = [backend for name in names if name in states
                  and (backend := self._config.backend(name)) is not None]
        opened += self._attached_at_once(names, states)
        with span("session restore", attributes={"vmcp.backends": len(names)}):
            connections = await self._gather(session_id, opened, states)
            profiles = {name: profile for name in names
                        if (profile := self.profiles.cached(name, principal)) is not None}
            return await self._assemble(session_id, principal, names, connections, profiles)

    def _attached_at_once(self, names: Sequence[str], states: Mapping[str, str]
                          ) -> list[BackendConfig]:
        """The stdio backends among ``names`` with no stored upstream session: attached
        when the session is built, not on first use. Their upstream session is a virtual
        one on this replica's one process, which costs no traffic, and only an attached
        session hears that process's list changes, which concern every session."""
        return [backend for name in names if name not in states
                and (backend := self._config.backend(name)) is not None
                and backend.transport == "stdio"]

    async def end(self, session_id: str, backends: Sequence[str],
                  states: Mapping[str, str]) -> None:
        """Re-attach each stored backend session and close it, which ends it upstream
        (an HTTP DELETE), without any discovery. Backends without a stored state were
        never opened: there is nothing to end."""
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

    async def _profiles_of(self, names: Sequence[str], principal: Principal
                           ) -> dict[str, BackendProfile]:
        found: dict[str, BackendProfile] = {}

        async def one(name: str) -> None:
            profile = self.profiles.cached(name, principal)
            if profile is None:
                async with self._connect_slots:
                    profile = await self.profiles.get(name, principal)
            if profile is not None:
                found[name] = profile

        async with anyio.create_task_group() as tg:
            for name in names:
                tg.start_soon(one, name)
        return found

    async def _gather(self, session_id: str, backends: Sequence[BackendConfig],
                      states: Mapping[str, str]) -> dict[str, BackendConnection]:
        """Re-attach the stored upstream sessions of ``backends`` (no wire traffic for
        Streamable HTTP); one that cannot be re-attached is left to its next use."""
        connections: dict[str, BackendConnection] = {}

        async def one(backend: BackendConfig) -> None:
            async with self._connect_slots:
                try:
                    connections[backend.name] = await self._connect(
                        session_id, backend, states.get(backend.name))
                    self.ledger.record_opened(backend.name)
                except (BackendError, TimeoutError) as exc:
                    logger.warning("backend %s not re-attached: %s", backend.name, exc,
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
                            ) -> Callable[[BackendState, BackendState], Awaitable[bool]]:
        async def record(replaced: BackendState, state: BackendState) -> bool:
            if self._store is None:
                return True  # nobody but this connection could end it anyway
            return await md.record_backend_state(self._store, session_id, backend,
                                                 state.to_json(), replaces=replaced.session_id)

        return record

    def _opener(self, session_id: str) -> Opener:
        """How a session opens a backend on first use: re-attach to the upstream session
        recorded for it (another replica opened it), or open one and record it; if
        another replica recorded one first, end ours and re-attach to theirs."""
        async def open_backend(name: str) -> BackendConnection:
            backend = self._dialer.backend(name)
            store = self._store
            if store is not None:
                stored = await md.stored_backend_state(store, session_id, name)
                if stored is not None:
                    return await self._connect(session_id, backend, stored)
            connection = await self._connect(session_id, backend, None)
            if store is None:
                return connection
            ours = connection.state.to_json()
            try:
                holds = await md.claim_backend_state(store, session_id, name, ours)
            except BaseException:
                await self._end_unused(name, connection)
                raise
            if holds == ours:
                await self._announce_opened(session_id, name)
                return connection
            await self._end_unused(name, connection)
            return await self._connect(session_id, backend, holds)

        return open_backend

    async def _announce_opened(self, session_id: str, name: str) -> None:
        """Tell the replica holding the client's GET stream, if another, to listen to the
        new upstream session (see ``server_messages``), and wait (bounded) until it says
        it listens: what the backend announces on that session's own stream during the
        call that opened it (a tool that changes the list) must find a listener."""
        relay = self._relay
        if relay is None:
            return
        listening = anyio.Event()
        nonce = uuid.uuid4().hex

        def heard(payload: dict[str, Any]) -> None:
            if payload.get("type") == UPSTREAM_LISTENING and payload.get("nonce") == nonce:
                listening.set()

        try:
            async with relay.listen(session_id, heard):
                receivers = await relay.publish(session_id, {
                    "type": UPSTREAM_OPENED, "backend": name, "nonce": nonce})
                if receivers > 1:       # another replica listens to the session
                    with anyio.move_on_after(LISTENER_WAIT_SECONDS):
                        await listening.wait()
        except StoreError as exc:
            logger.warning("could not announce a new upstream session: %s", exc,
                           extra={"session_id": session_id, "backend": name})

    def _recorded(self, session_id: str) -> Recorded:
        async def recorded() -> list[str]:
            if self._store is None:
                return []
            return sorted(md.backend_states(await self._store.load(session_id)))

        return recorded

    async def _end_unused(self, name: str, connection: BackendConnection) -> None:
        """End an upstream session no client session will use (it lost a race, or its
        client session ended while it opened)."""
        self.ledger.record_opened(name)
        with anyio.CancelScope(shield=True):
            await self._end_one(name, connection)

    def _profile_source(self, principal: Principal) -> Profiles:
        async def profile(name: str, fetch: bool) -> BackendProfile | None:
            if fetch:
                return await self.profiles.get(name, principal)
            return self.profiles.cached(name, principal)

        return profile

    def _discoverer(self, principal: Principal) -> Discover:
        """Discovery over a session's own connection: always asks the backend, and keeps
        the answer as the replica's profile."""
        async def discover_and_keep(name: str, connection: BackendConnection
                                    ) -> BackendCatalog:
            catalog = await discover(connection)
            self.profiles.keep(name, principal, connection, catalog)
            return catalog

        return discover_and_keep

    async def _assemble(self, session_id: str, principal: Principal, names: Sequence[str],
                        connections: dict[str, BackendConnection],
                        profiles: Mapping[str, BackendProfile]) -> MultiSession:
        catalogs = {name: profile.catalog for name, profile in profiles.items()}
        fresh = self._discoverer(principal)

        async def one(name: str, connection: BackendConnection) -> None:
            try:
                catalogs[name] = await fresh(name, connection)
            except BackendError as exc:
                logger.warning("discovery on backend %s failed: %s", name, exc,
                               extra={"session_id": session_id, "backend": name})
                catalogs[name] = BackendCatalog()

        try:
            async with anyio.create_task_group() as tg:
                for name, connection in connections.items():
                    if name not in catalogs:
                        tg.start_soon(one, name, connection)
            return MultiSession(session_id, connections, catalogs, rebuild=self.route,
                                discover=fresh, relay=self._relay,
                                event_log=self._event_log, ledger=self.ledger,
                                breaker=self.breaker,
                                replica_id=self._config.server.replica_id,
                                stream_bounds=self.stream_bounds,
                                backends=names, opener=self._opener(session_id),
                                profiles=self._profile_source(principal),
                                initialize_results={name: profile.initialize_result
                                                    for name, profile in profiles.items()},
                                recorded=self._recorded(session_id))
        except BaseException:
            with anyio.CancelScope(shield=True):
                for name, connection in connections.items():
                    await connection.aclose()
                    self.ledger.record_ended(name)
            raise

    def route(self, catalogs: Mapping[str, BackendCatalog]) -> RoutingTable:
        return routing_table(catalogs, self._config.aggregation)
