"""One client session's live state on this replica: backend connections and routes.

It cannot be serialized; each replica builds its own from the stored metadata (see
``connector``). It is put together from parts with one job each: ``upstreams`` (the
backends it may use, and the upstream sessions it opened on first use), ``routes``
(catalogs and the routing table), ``messages`` (what backends send outside any request, and the
client's GET stream), ``work`` (request tasks and stream copies that outlive their HTTP
connection) and ``streams`` (each request's outbound events). Closing it answers every
request still open, then ends every backend session it holds.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import anyio
from opentelemetry.trace import SpanKind

from vmcp.aggregate import BackendCatalog, RoutingTable
from vmcp.backend import STREAM_PAUSED, BackendConnection, BackendRpcError
from vmcp.backend.breaker import CircuitBreaker
from vmcp.errors import SessionClosed, VmcpError
from vmcp.session.channel import ClientChannel, PendingClientRequests
from vmcp.session.detached import DetachedWork
from vmcp.session.routes import Discover, Rebuild, SessionRoutes
from vmcp.session.server_messages import (
    LIST_CHANGED,
    UNSOLICITED,
    Recorded,
    ServerMessages,
)
from vmcp.session.streams import ResponseStream, ResponseStreams, StreamBounds
from vmcp.session.upstreams import Opener, SessionUpstreams
from vmcp.store.event_log import EventLog
from vmcp.store.pubsub import SessionRelay
from vmcp.tracing import outgoing_headers, span
from vmcp.upstream.catalogs import BackendProfile
from vmcp.upstream.client_requests import undeclared
from vmcp.upstream.ledger import UpstreamLedger

logger = logging.getLogger(__name__)

__all__ = ["Discover", "MultiSession", "Profiles", "Rebuild", "RequestCancelled"]

Profiles = Callable[[str, bool], Awaitable[BackendProfile | None]]
"""The replica's profile of a backend the session holds no upstream session on: from the
cache only (False), or fetched when stale (True); None when there is none."""


class RequestCancelled(Exception):
    """The client cancelled the request (``notifications/cancelled``): answer nothing."""


class MultiSession:
    """The live session: routes by exposed name to a backend connection.

    Implements ``vmcp.session.live.LiveSession`` for the session manager.
    """

    def __init__(
        self,
        session_id: str,
        connections: Mapping[str, BackendConnection],
        catalogs: Mapping[str, BackendCatalog],
        *,
        rebuild: Rebuild,
        discover: Discover,
        relay: SessionRelay | None = None,
        event_log: EventLog | None = None,
        ledger: UpstreamLedger | None = None,
        breaker: CircuitBreaker | None = None,
        replica_id: str = "",
        stream_bounds: StreamBounds | None = None,
        backends: Sequence[str] = (),
        opener: Opener | None = None,
        profiles: Profiles | None = None,
        initialize_results: Mapping[str, Mapping[str, Any]] | None = None,
        recorded: Recorded | None = None,
    ) -> None:
        self._session_id = session_id
        self.upstreams = SessionUpstreams(session_id, backends, connections, opener=opener,
                                          ledger=ledger, on_opened=self._opened)
        self._connections = self.upstreams.connections
        self._profiles = profiles
        self._known_results = dict(initialize_results or {})
        self._log_level: dict[str, Any] | None = None
        self._relay = relay
        self._ledger = ledger
        self._breaker = breaker
        self.routes = SessionRoutes(session_id, catalogs, rebuild=rebuild, discover=discover,
                                    connection_of=self._relisting)
        self.pending = PendingClientRequests(prefix=f"vmcp-{session_id[:8]}")
        # Stream ids carry the replica id: a client may resume a stream on another replica.
        self.streams = ResponseStreams(prefix=replica_id or "r", bounds=stream_bounds)
        self.work = DetachedWork(session_id, event_log)
        self.messages = ServerMessages(
            session_id, replica_id=replica_id, relay=relay, connections=self._connections,
            routes=self.routes, pending=self.pending,
            answers_elsewhere=self.answers_from_other_replicas, spawn=self.work.spawn,
            attach=self.upstreams.ensure, recorded=recorded,
            client_capabilities=lambda: self.client_capabilities)
        self._requests: dict[Any, anyio.CancelScope] = {}
        self.client_capabilities: frozenset[str] | None = None
        self._closed = False
        self._ended = anyio.Event()

    @property
    def session_id(self) -> str:
        return self._session_id

    @property
    def routing(self) -> RoutingTable:
        return self.routes.table

    @property
    def event_log(self) -> EventLog | None:
        return self.work.event_log

    def backend_names(self) -> list[str]:
        """Every backend this session may use (opened or not)."""
        return self.upstreams.names()

    def backend_states(self) -> dict[str, str]:
        """The upstream sessions held here (only the backends opened so far)."""
        return {name: conn.state.to_json() for name, conn in self._connections.items()}

    async def connection(self, backend: str) -> BackendConnection:
        """The connection to ``backend``, its upstream session opened on first use."""
        return await self.upstreams.ensure(backend)

    def connections(self) -> dict[str, BackendConnection]:
        """The connections opened so far."""
        return dict(self._connections)

    def initialize_results(self) -> dict[str, Mapping[str, Any]]:
        """What each backend said of itself: from its upstream session if opened, else as
        this replica last saw it (a backend never seen is left out)."""
        known: dict[str, Mapping[str, Any]] = {
            name: result for name, result in self._known_results.items()
            if name in self.upstreams.names()}
        known.update({name: conn.state.initialize_result
                      for name, conn in self._connections.items()})
        return known

    async def refresh_all(self) -> None:
        """Re-list every backend (rate-limited; see ``SessionRoutes.refresh_all``): the
        opened ones over their connection, the others through the replica's profiles."""
        await self.routes.refresh_all(list(self._connections))
        await self.sync_unopened(fetch=True)

    async def sync_unopened(self, *, fetch: bool) -> None:
        """Bring the catalogs of the backends without an upstream session here in line
        with the replica's profiles (fetching stale ones if ``fetch``: a listing)."""
        if self._profiles is None:
            return
        profiles = self._profiles
        changed: dict[str, BackendProfile] = {}

        async def one(name: str) -> None:
            profile = await profiles(name, fetch)
            if profile is not None and self.routes.catalog(name) is not profile.catalog:
                changed[name] = profile

        if fetch:
            async with anyio.create_task_group() as tg:
                for name in self.upstreams.unopened():
                    tg.start_soon(one, name)
        else:  # the cache only: answers at once, no tasks on a call's path
            for name in self.upstreams.unopened():
                await one(name)
        if changed:
            for name, profile in changed.items():
                self._known_results[name] = profile.initialize_result
            self.routes.update({name: p.catalog for name, p in changed.items()
                                if name not in self._connections})

    async def _relisting(self, name: str) -> BackendConnection | None:
        """The connection to re-list ``name`` over after its ``list_changed``. What a
        backend lists may depend on its upstream session, so a change announced by the
        upstream session another replica opened is listed over that same session,
        re-attached here (a backend announces changes only on an upstream session it
        has, so one is recorded)."""
        try:
            return await self.upstreams.ensure(name)
        except SessionClosed:
            return None
        except VmcpError as exc:
            logger.warning("cannot re-list backend %s: %s", name, exc,
                           extra={"session_id": self._session_id, "backend": name})
            return None

    async def _opened(self, name: str, connection: BackendConnection) -> None:
        """A backend just opened: listen to it if the client holds a GET stream here, and
        give it the log level the client asked for."""
        self.messages.listen_to(name, connection)
        level = self._log_level
        if level is not None and "logging" in (
                connection.state.initialize_result.get("capabilities") or {}):
            try:
                await connection.request("logging/setLevel", level)
            except Exception as exc:
                logger.warning("logging/setLevel to %s failed: %s", name, exc,
                               extra={"session_id": self._session_id, "backend": name})

    async def set_log_level(self, params: dict[str, Any], channel: ClientChannel) -> None:
        """``logging/setLevel``: to every opened backend that logs now, and to the others
        when they open (no upstream session is opened only to set a level)."""
        self._log_level = dict(params)
        for name, connection in list(self._connections.items()):
            if "logging" in (connection.state.initialize_result.get("capabilities") or {}):
                await self.call(name, "logging/setLevel", params, channel)

    # -- calls ----------------------------------------------------------------------

    async def call(self, backend: str, method: str, params: dict[str, Any] | None,
                   channel: ClientChannel | None) -> dict[str, Any]:
        """Forward one request to ``backend``, relaying what it sends meanwhile; its
        upstream session is opened first if this is the session's first use of it."""
        if self._closed:
            raise SessionClosed(self._session_id)
        first_use = backend not in self._connections

        async def relay(message: dict[str, Any]) -> dict[str, Any] | None:
            if "method" in message and "id" in message:
                refused = undeclared(str(message["method"]), self.client_capabilities)
                if refused is not None:  # the client could not answer: refused here
                    return {"jsonrpc": "2.0", "id": message["id"], **refused}
            if channel is None:
                return None
            if "method" in message and "id" in message:
                answer = await channel.request(message["method"], message.get("params"))
                reply = {k: v for k, v in answer.items() if k in ("result", "error")}
                return {"jsonrpc": "2.0", "id": message["id"], **reply}
            if message.get("method") == STREAM_PAUSED:
                channel.pause(int(message["params"]["retryMs"]))
            elif message.get("method") in UNSOLICITED:
                await self.messages.announce(backend, message)
            else:
                await channel.notify(message)
            return None

        if self._breaker is not None:
            self._breaker.before_call(backend)
        started = time.perf_counter()
        outcome = "error"
        try:
            with span(f"backend {method}", kind=SpanKind.CLIENT,
                      attributes={"mcp.backend": backend, "mcp.method.name": method}):
                connection = await self.upstreams.ensure(backend)
                result = await connection.request(method, params, on_message=relay,
                                                  headers=outgoing_headers() or None)
            outcome = "ok"
            return result
        except BackendRpcError:
            outcome = "rpc_error"
            raise
        finally:
            if self._breaker is not None:
                self._breaker.after_call(backend, failed=outcome == "error")
            if self._ledger is not None:
                self._ledger.record_call(backend, outcome, time.perf_counter() - started)
            if first_use and outcome != "error":
                await self.messages.first_call_done(backend)

    def channel(self, stream: ResponseStream, request_id: Any) -> ClientChannel:
        """The way back to the client for one request on ``stream``."""
        return ClientChannel(self.pending, stream, request_id=request_id,
                             answers_elsewhere=self.answers_from_other_replicas,
                             persist=self.work.persist,
                             stop=lambda: self.cancel_request(request_id))

    def answers_from_other_replicas(self) -> contextlib.AbstractAsyncContextManager[None]:
        """While open, client answers POSTed to other replicas reach ``pending`` here."""
        if self._relay is None:
            return contextlib.nullcontext()

        def deliver(payload: dict[str, Any]) -> None:
            message = payload.get("message")
            if payload.get("type") == "client-response" and isinstance(message, dict):
                self.pending.deliver(message)

        return self._relay.listen(self._session_id, deliver)

    async def forward_client_response(self, message: dict[str, Any]) -> None:
        """A client answer nobody waits for here: hand it to the replica that waits."""
        if self._relay is not None:
            await self._relay.publish(self._session_id,
                                      {"type": "client-response", "message": message})

    def deliver_client_response(self, message: dict[str, Any]) -> bool:
        return self.pending.deliver(message)

    def announce(self, method: str) -> None:
        """Send the client a notification about the session as a whole (``list_changed``)."""
        self.messages.publish({"jsonrpc": "2.0", "method": method})

    async def notify_all(self, method: str, params: dict[str, Any] | None) -> None:
        """Send a notification to every backend; one failing does not stop the others."""
        async def send(name: str, connection: BackendConnection) -> None:
            try:
                await connection.notify(method, params)
            except Exception as exc:
                logger.warning("notification %s to %s failed: %s", method, name, exc)

        async with anyio.create_task_group() as tg:
            for name, connection in self._connections.items():
                tg.start_soon(send, name, connection)

    @contextlib.contextmanager
    def track_request(self, request_id: Any) -> Iterator[None]:
        """Make the running request cancellable by the client's ``notifications/cancelled``."""
        with anyio.CancelScope() as scope:
            if request_id is not None:
                self._requests[request_id] = scope
            try:
                yield
            finally:
                if self._requests.get(request_id) is scope:
                    del self._requests[request_id]
        if scope.cancelled_caught:
            raise RequestCancelled(request_id)

    def cancel_request(self, request_id: Any) -> None:
        scope = self._requests.get(request_id)
        if scope is not None:
            scope.cancel()

    # -- backends joining and leaving --------------------------------------------------

    async def reconcile(self, added: Mapping[str, BackendProfile | None],
                        removed: Sequence[str]) -> None:
        """Take in new backends (opened on first use, like the others), end the upstream
        sessions of removed ones, re-route, and tell the client that the lists changed
        (configuration reload, a backend recovered). A closed session takes nothing in."""
        if self._closed:
            return
        self.upstreams.add(list(added))
        for name, profile in added.items():
            if profile is not None:
                self._known_results[name] = profile.initialize_result
        closing = self.upstreams.remove(removed)
        self.routes.update({name: p.catalog for name, p in added.items() if p is not None},
                           removed=removed)
        async with anyio.create_task_group() as tg:
            for name, connection in closing.items():
                tg.start_soon(self.upstreams.close, name, connection)
        for method in sorted(LIST_CHANGED):
            self.messages.publish({"jsonrpc": "2.0", "method": method})


    # -- closing --------------------------------------------------------------------

    async def wait_calls(self) -> None:
        """Return once no request's work is running on this session."""
        await self.work.wait_requests()

    async def wait_closed(self) -> None:
        """Return once the session is closed (ends streams that outlive no session)."""
        await self._ended.wait()

    async def aclose(self, *, end_upstream: bool = True) -> None:
        """Answer what is still open, then end every upstream session it opened (in
        parallel); idempotent, never raises.

        With ``end_upstream`` False (this replica drops its copy while the client session
        lives on) the backend sessions stay open for the next copy to re-attach to."""
        if self._closed:
            return
        self._closed = True
        self.messages.close()
        self.pending.cancel_all()
        self.work.cancel_requests()
        # A cancelled task writes no answer (one cancelled before it started runs no code
        # at all): the session's own end answers every request still open.
        self.streams.end_all(_ended_answer)
        self._ended.set()
        if end_upstream:
            # The session itself ended: nobody can resume its streams, stop copying.
            await self.work.stop_copies()
        else:
            await self.work.finish_copies()
        await self.upstreams.aclose(end_upstream=end_upstream)


def _ended_answer(request_id: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id,
            "error": {"code": SessionClosed.jsonrpc_code, "message": "Session not found"}}
