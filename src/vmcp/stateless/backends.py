"""The backends behind a client of the stateless revision (2026-07-28): catalogs and calls.

Such a client has no session with the gateway, so nothing here is tied to one: what a
request needs is derived from the caller (its identity binding and the ``_meta``
envelope its request carries) and from state every replica can rebuild.

* **Catalogs.** Listed per caller (:mod:`.catalogs` keeps them and the views over them);
  the routing table is the session path's own (:func:`vmcp.aggregate.build_routing_table`).
* **Calls.** A modern backend gets the client's request as it came (its envelope,
  ``inputResponses``, ``requestState``, ``Mcp-Param-*`` headers), under the backend's own
  name; its ``input_required`` results go back unchanged. A session-based backend is
  called over the identity's pooled upstream session (:mod:`.pool`) with the
  reserved ``_meta`` keys removed; its requests to the client become ``input_required``
  rounds (:mod:`.input_rounds`), its log messages reach the client only if the request
  asked for them (``_meta`` ``logLevel``), as the revision requires.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import httpx2
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    PROTOCOL_VERSION_META_KEY,
    UNSUPPORTED_PROTOCOL_VERSION,
)
from mcp_types.methods import INPUT_REQUIRED_METHODS
from mcp_types.version import LATEST_MODERN_VERSION

from vmcp.aggregate import BackendCatalog, RoutingTable
from vmcp.auth.outgoing import OutgoingAuth, current_caller
from vmcp.backend import (
    STREAM_PAUSED,
    BackendConnection,
    BackendRpcError,
    MessageHandler,
    StdioProcesses,
)
from vmcp.backend.modern import ModernBackend, NotModern
from vmcp.config import VmcpConfig
from vmcp.errors import (
    BackendError,
    BackendSessionExpired,
    InvalidRound,
)
from vmcp.stateless.caller import LOG_LEVELS, Caller, without_envelope
from vmcp.stateless.catalogs import (
    SESSION_CATALOG_SECONDS,
    CallerCatalogs,
    CatalogEntry,
    View,
)
from vmcp.stateless.input_rounds import Ask, InputRounds, Notify, Outcome, is_round_token
from vmcp.stateless.pool import BackendKind, BackendKinds, UpstreamPool
from vmcp.store.pubsub import SessionRelay
from vmcp.upstream.catalogs import routing_table
from vmcp.upstream.client_requests import CLIENT_CAPABILITY_OF, refusal, undeclared
from vmcp.upstream.dialer import BackendDialer
from vmcp.upstream.discovery import CLIENT_INFO, discover, discover_catalog
from vmcp.upstream.ledger import UpstreamLedger

logger = logging.getLogger(__name__)

__all__ = ["Caller", "CatalogEntry", "InvalidRound", "Outcome", "StatelessBackends", "View"]

LIST_CHANGED = frozenset({
    "notifications/tools/list_changed",
    "notifications/prompts/list_changed",
    "notifications/resources/list_changed",
})

Clock = Callable[[], float]
HealthFilter = Callable[[str], bool]


class _ModernOnly(Exception):
    """A backend classified session-based refused ``initialize`` as a revision it lacks."""


class StatelessBackends:
    """Catalogs and calls of every configured backend for stateless clients; one per process.

    ``config`` is read on every use, so a configuration reload reaches this too.
    """

    def __init__(self, config: Callable[[], VmcpConfig], http: httpx2.AsyncClient, *,
                 outgoing: OutgoingAuth | None = None, ledger: UpstreamLedger | None = None,
                 is_healthy: HealthFilter | None = None, relay: SessionRelay | None = None,
                 clock: Clock = time.monotonic, stdio: StdioProcesses | None = None) -> None:
        self._config = config
        self._http = http
        self._outgoing = outgoing if outgoing is not None else OutgoingAuth({})
        self._dialer = BackendDialer(config, http, self._outgoing, stdio)
        self._is_healthy = is_healthy
        self._clock = clock
        settings = config().stateless
        self._modern: dict[str, tuple[tuple[object, ...], ModernBackend | None]] = {}
        self.kinds = BackendKinds(self._probe)
        self.pool = UpstreamPool(self._connect, idle_seconds=settings.upstream_idle_seconds,
                                 ledger=ledger, clock=clock)
        self.rounds = InputRounds(answer_timeout=settings.answer_timeout_seconds, relay=relay,
                                  relay_timeout=config().session.store_timeout_seconds,
                                  clock=clock)
        self.catalogs = CallerCatalogs(self._list, self._route,
                                       floor_seconds=settings.catalog_ttl_seconds, clock=clock)
        self.on_list_changed: Callable[[str, str], None] | None = None
        """Told (backend, notification method) when a backend announces a list change
        (during a call, or on a pooled session's stream)."""
        self._to_follow, self._following = anyio.create_memory_object_stream[
            tuple[str, BackendConnection]](math.inf)

    # -- lifecycle -------------------------------------------------------------------

    async def run(self) -> None:
        """Background upkeep until cancelled: idle upstream sessions, expired rounds,
        and the streams of pooled sessions."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._follow_pooled)
            await self._upkeep()

    async def _follow_pooled(self) -> None:
        """Hear what each pooled session's backend announces outside a call: a backend
        tells only the session whose request changed its lists, on that session's GET
        stream. Started here, so the streams carry no caller's credentials (a backend
        that takes only callers' credentials is not followed)."""
        async with anyio.create_task_group() as tg, self._following:
            async for name, connection in self._following:
                tg.start_soon(self._follow, name, connection)

    async def _follow(self, name: str, connection: BackendConnection) -> None:
        try:
            async with contextlib.aclosing(connection.listen()) as messages:
                async for message in messages:
                    method = message.get("method")
                    if "id" in message and isinstance(method, str):
                        await connection.respond(
                            {"jsonrpc": "2.0", "id": message["id"],
                             **refusal(f"{method} cannot be answered outside a request")})
                    elif isinstance(method, str) and method in LIST_CHANGED:
                        self.catalogs.forget(name)
                        if self.on_list_changed is not None:
                            self.on_list_changed(name, method)
        except BackendError as exc:
            logger.debug("stream of a pooled session with %s ended: %s", name, exc,
                         extra={"backend": name})

    async def _upkeep(self) -> None:
        interval = max(0.05, min(self._config().stateless.upstream_idle_seconds / 4, 5.0))
        while True:
            await anyio.sleep(interval)
            self.rounds.sweep()
            try:
                await self.pool.sweep()
            except Exception:
                logger.exception("ending idle upstream sessions failed")

    async def aclose(self) -> None:
        # Only the sending end: the follower then ends at the end of the stream. Closing
        # its receiving end too would fail it with ClosedResourceError whenever it wakes
        # during the awaits below (it closes that end itself on the way out).
        self._to_follow.close()
        self.rounds.aclose()
        await self.pool.aclose()

    # -- catalogs --------------------------------------------------------------------

    async def view(self, caller: Caller, *, refresh: bool = False) -> View:
        """The caller's routing table over the usable backends; ``refresh`` re-lists
        them first (at most once per ``catalog_ttl_seconds`` per identity)."""
        names = [b.name for b in self._config().backends if self._usable(b.name)]
        return await self.catalogs.view(caller, names, refresh=refresh)

    def invalidate(self, backend: str, binding: str) -> None:
        """Forget ``backend``'s listing as seen by ``binding`` (and its shared one)."""
        self.catalogs.invalidate(backend, binding)

    def _list_changed(self, backend: str, binding: str, method: str) -> None:
        """A backend announced a change during a call: the caller re-lists it, and
        listen streams hear of it."""
        self.invalidate(backend, binding)
        if self.on_list_changed is not None:
            self.on_list_changed(backend, method)

    def _usable(self, name: str) -> bool:
        """Skip what the health monitor found down - but its probe is a handshake, which
        says nothing about a backend known to speak the stateless revision."""
        if self._is_healthy is None or self.kinds.known(name) is BackendKind.MODERN:
            return True
        return self._is_healthy(name)

    def _route(self, catalogs: Mapping[str, BackendCatalog]) -> RoutingTable:
        return routing_table(catalogs, self._config().aggregation)

    async def _list(self, name: str, caller: Caller) -> CatalogEntry:
        kind = await self.kinds.kind(name)
        if kind is BackendKind.MODERN:
            try:
                return await self._list_modern(name, caller)
            except NotModern:
                self.kinds.correct(name, BackendKind.SESSION)
        try:
            return await self._list_session(name, caller)
        except _ModernOnly:
            self.kinds.correct(name, BackendKind.MODERN)
            return await self._list_modern(name, caller)

    async def _list_modern(self, name: str, caller: Caller) -> CatalogEntry:
        backend = self._modern_backend(name)
        meta = caller.listing_meta()
        headers = await self._auth_headers(name)
        started = self._clock()
        found = await backend.request("server/discover", {"_meta": meta}, headers=headers)
        capabilities = found.get("capabilities")
        capabilities = capabilities if isinstance(capabilities, dict) else {}
        hints = [found]

        async def fetch(method: str, cursor: str | None) -> Mapping[str, Any]:
            params: dict[str, Any] = {"_meta": meta}
            if cursor:
                params["cursor"] = cursor
            page = await backend.request(method, params, headers=headers)
            hints.append(page)
            return page

        catalog = await discover_catalog(fetch, capabilities)
        instructions = found.get("instructions")
        return CatalogEntry(
            backend=name, kind=BackendKind.MODERN,
            catalog=catalog, capabilities=capabilities,
            instructions=instructions if isinstance(instructions, str) else None,
            ttl_ms=min(_ttl_ms(hint) for hint in hints),
            private=any(hint.get("cacheScope") != "public" for hint in hints),
            fetched_at=started)

    async def _list_session(self, name: str, caller: Caller) -> CatalogEntry:
        started = self._clock()
        async with self.pool.session(caller.binding, name) as connection:
            try:
                catalog = await discover(connection)
            except BackendSessionExpired:
                await self.pool.discard(caller.binding, name, connection)
                raise
            initialize = connection.state.initialize_result
        capabilities = initialize.get("capabilities")
        instructions = initialize.get("instructions")
        return CatalogEntry(
            backend=name, kind=BackendKind.SESSION, catalog=catalog,
            capabilities=capabilities if isinstance(capabilities, dict) else {},
            instructions=instructions if isinstance(instructions, str) else None,
            ttl_ms=int(max(SESSION_CATALOG_SECONDS, self.catalogs.floor) * 1000), private=True,
            fetched_at=started)

    # -- calls -----------------------------------------------------------------------

    async def call(self, caller: Caller, backend: str, method: str, params: dict[str, Any], *,
                   target: tuple[str, str], headers: Mapping[str, str],
                   notify: Notify) -> tuple[BackendKind, Outcome]:
        """Serve one request on ``backend``: ``params`` already carry the backend's own
        name; ``target`` is (method, exposed name or URI), what an ``input_required``
        round is bound to; ``headers`` are the request's ``Mcp-Param-*`` headers.

        Returns which kind of backend answered (its result is shaped accordingly) and
        the outcome. Raises ``BackendRpcError`` (the backend's own error, to relay),
        :class:`InvalidRound` and the other ``BackendError`` kinds.
        """
        kind = await self.kinds.kind(backend)
        if kind is BackendKind.MODERN:
            try:
                return kind, Outcome(result=await self._call_modern(
                    caller, backend, method, params, headers, notify))
            except NotModern:
                self.kinds.correct(backend, BackendKind.SESSION)
        try:
            return BackendKind.SESSION, await self._call_session(
                caller, backend, method, params, target, notify)
        except _ModernOnly:
            self.kinds.correct(backend, BackendKind.MODERN)
            return BackendKind.MODERN, Outcome(result=await self._call_modern(
                caller, backend, method, params, headers, notify))

    async def _call_modern(self, caller: Caller, backend: str, method: str,
                           params: dict[str, Any], headers: Mapping[str, str],
                           notify: Notify) -> dict[str, Any]:
        async def relay(message: dict[str, Any]) -> dict[str, Any] | None:
            method = message.get("method")
            if isinstance(method, str) and method in LIST_CHANGED:
                self._list_changed(backend, caller.binding, method)
            else:
                await notify(message)
            return None

        extra = {**headers, **await self._auth_headers(backend)}
        return await self._modern_backend(backend).request(method, params, headers=extra,
                                                           on_message=relay)

    async def _call_session(self, caller: Caller, backend: str, method: str,
                            params: dict[str, Any], target: tuple[str, str],
                            notify: Notify) -> Outcome:
        state = params.get("requestState")
        if state is not None:
            if not is_round_token(state):
                raise InvalidRound("Invalid or expired requestState")
            return await self.rounds.resume(state, caller.binding, target,
                                            params.get("inputResponses"), notify)
        upstream = _upstream_params(params)

        async def work(ask: Ask | None, sink: Notify) -> dict[str, Any]:
            async with self.pool.session(caller.binding, backend) as connection:
                relay = self._relay(caller, backend, ask, sink)
                try:
                    return await connection.request(method, upstream, on_message=relay)
                except BackendSessionExpired:
                    await self.pool.discard(caller.binding, backend, connection)
                    raise

        if method in INPUT_REQUIRED_METHODS:
            return await self.rounds.start(caller.binding, target, work, notify)
        return Outcome(result=await work(None, notify))

    def _relay(self, caller: Caller, backend: str, ask: Ask | None,
               notify: Notify) -> MessageHandler:
        """What a session-based backend sends during a call, turned into what a stateless
        client may receive."""

        async def relay(message: dict[str, Any]) -> dict[str, Any] | None:
            method = message.get("method")
            if "id" in message and isinstance(method, str):
                return await self._client_request(caller, method, message.get("params"), ask)
            if method in LIST_CHANGED:
                self._list_changed(backend, caller.binding, method)
            elif method == "notifications/message":
                if _log_wanted(caller, message):
                    await notify(message)
            elif method not in (STREAM_PAUSED, "notifications/resources/updated"):
                await notify(message)
            return None

        return relay

    @staticmethod
    async def _client_request(caller: Caller, method: str, params: Any,
                              ask: Ask | None) -> dict[str, Any]:
        if method not in CLIENT_CAPABILITY_OF:
            return refusal(f"Method not found: {method}")
        refused = undeclared(method, caller.capabilities)
        if refused is not None:
            return refused
        if ask is None:
            return refusal(f"{method} cannot be answered during this request")
        return await ask(method, params if isinstance(params, dict) else None)

    # -- what the upstream watch needs -----------------------------------------------

    def backend_names(self) -> list[str]:
        """The configured backends, as of now (a reload changes them)."""
        return [b.name for b in self._config().backends]

    def modern_client(self, name: str) -> ModernBackend:
        """``name``'s client of the stateless revision; raises ``NotModern`` for SSE."""
        return self._modern_backend(name)

    async def gateway_headers(self, name: str) -> dict[str, str]:
        """What the gateway sends ``name`` for the caller in context (outgoing auth)."""
        return await self._auth_headers(name)

    async def dial(self, name: str) -> BackendConnection:
        """A new upstream session with session-based ``name``, owned by the caller."""
        try:
            return await self._dial_session(name)
        except _ModernOnly:
            self.kinds.correct(name, BackendKind.MODERN)
            raise BackendError(name, "speaks the stateless revision only") from None

    # -- backends --------------------------------------------------------------------

    def _modern_backend(self, name: str) -> ModernBackend:
        backend = self._modern_of(name)
        if backend is None:  # an SSE or stdio backend: never modern
            raise NotModern(name, "an SSE or stdio backend speaks the handshake revisions "
                                  "only")
        return backend

    def _modern_of(self, name: str) -> ModernBackend | None:
        config = self._dialer.backend(name)
        static = self._outgoing.static_headers(name)
        key = (config, tuple(sorted(static.items())), self._dialer.call_timeout(config))
        cached = self._modern.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        if cached is not None:  # changed by a reload: classify it again
            self.kinds.forget(name)
        client = None
        if config.transport not in ("sse", "stdio"):
            client = ModernBackend(self._dialer.target(config), self._http,
                                   timeout=self._dialer.call_timeout(config))
        self._modern[name] = (key, client)
        return client

    async def _auth_headers(self, name: str) -> dict[str, str]:
        return await self._outgoing.headers_for(name, current_caller())

    async def _probe(self, name: str) -> Mapping[str, Any] | None:
        """``server/discover`` as the gateway itself; None for an SSE or stdio backend
        (reached through a pooled upstream session, the handshake way)."""
        backend = self._modern_of(name)
        if backend is None:
            return None
        meta = {PROTOCOL_VERSION_META_KEY: LATEST_MODERN_VERSION,
                CLIENT_INFO_META_KEY: CLIENT_INFO, CLIENT_CAPABILITIES_META_KEY: {}}
        return await backend.request("server/discover", {"_meta": meta},
                                     headers=await self._auth_headers(name))

    async def _connect(self, name: str) -> BackendConnection:
        """A new upstream session with a session-based backend, for the pool (its stream
        followed)."""
        connection = await self._dial_session(name)
        if not self._outgoing.per_caller(name):
            self._to_follow.send_nowait((name, connection))
        return connection

    async def _dial_session(self, name: str) -> BackendConnection:
        try:
            return await self._dialer.dial(self._dialer.backend(name))
        except BackendRpcError as exc:
            if exc.code == UNSUPPORTED_PROTOCOL_VERSION:
                raise _ModernOnly(name) from exc
            raise


def _upstream_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """A stateless request's params as a session-based backend takes them: without the
    multi-round fields and the reserved ``_meta`` keys (progress tokens stay)."""
    return without_envelope({k: v for k, v in params.items()
                             if k not in ("inputResponses", "requestState")})


def _log_wanted(caller: Caller, message: Mapping[str, Any]) -> bool:
    threshold = caller.log_level
    params = message.get("params")
    level = params.get("level") if isinstance(params, Mapping) else None
    if threshold is None or level not in LOG_LEVELS:
        return False
    return LOG_LEVELS.index(level) >= LOG_LEVELS.index(threshold)


def _ttl_ms(result: Mapping[str, Any]) -> int:
    value = result.get("ttlMs")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
