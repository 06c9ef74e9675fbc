"""One client session's live state on this replica: backend connections and routes.

It cannot be serialized; each replica builds its own from the stored metadata (see
``connector``). It is put together from parts with one job each: ``routes`` (catalogs
and the routing table), ``messages`` (what backends send outside any request, and the
client's GET stream), ``work`` (request tasks and stream copies that outlive their HTTP
connection) and ``streams`` (each request's outbound events). Closing it answers every
request still open, then ends every backend session it holds.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import anyio
from opentelemetry.trace import SpanKind

from vmcp.aggregate import BackendCatalog, RoutingTable
from vmcp.backend import STREAM_PAUSED, BackendConnection, BackendRpcError
from vmcp.backend.breaker import CircuitBreaker
from vmcp.errors import SessionClosed
from vmcp.session.channel import ClientChannel, PendingClientRequests
from vmcp.session.detached import DetachedWork
from vmcp.session.routes import Discover, Rebuild, SessionRoutes
from vmcp.session.server_messages import LIST_CHANGED, UNSOLICITED, ServerMessages
from vmcp.session.streams import ResponseStream, ResponseStreams, StreamBounds
from vmcp.store.event_log import EventLog
from vmcp.store.pubsub import SessionRelay
from vmcp.tracing import outgoing_headers, tracer
from vmcp.upstream.client_requests import undeclared
from vmcp.upstream.ledger import UpstreamLedger

logger = logging.getLogger(__name__)

__all__ = ["Discover", "MultiSession", "Rebuild", "RequestCancelled"]


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
    ) -> None:
        self._session_id = session_id
        self._connections = dict(connections)
        self._relay = relay
        self._ledger = ledger
        self._breaker = breaker
        self.routes = SessionRoutes(session_id, catalogs, rebuild=rebuild, discover=discover,
                                    connection_of=self._connections.get)
        self.pending = PendingClientRequests(prefix=f"vmcp-{session_id[:8]}")
        # Stream ids carry the replica id: a client may resume a stream on another replica.
        self.streams = ResponseStreams(prefix=replica_id or "r", bounds=stream_bounds)
        self.work = DetachedWork(session_id, event_log)
        self.messages = ServerMessages(
            session_id, replica_id=replica_id, relay=relay, connections=self._connections,
            routes=self.routes, pending=self.pending,
            answers_elsewhere=self.answers_from_other_replicas, spawn=self.work.spawn,
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
        return sorted(self._connections)

    def backend_states(self) -> dict[str, str]:
        return {name: conn.state.to_json() for name, conn in self._connections.items()}

    def connection(self, backend: str) -> BackendConnection:
        if self._closed:
            raise SessionClosed(self._session_id)
        return self._connections[backend]

    def connections(self) -> dict[str, BackendConnection]:
        return dict(self._connections)

    def initialize_results(self) -> dict[str, dict[str, Any]]:
        return {name: conn.state.initialize_result for name, conn in self._connections.items()}

    async def refresh_all(self) -> None:
        """Re-list every backend (rate-limited; see ``SessionRoutes.refresh_all``)."""
        await self.routes.refresh_all(list(self._connections))

    # -- calls ----------------------------------------------------------------------

    async def call(self, backend: str, method: str, params: dict[str, Any] | None,
                   channel: ClientChannel | None) -> dict[str, Any]:
        """Forward one request to ``backend``, relaying what it sends meanwhile."""
        connection = self.connection(backend)

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
            with tracer.start_as_current_span(
                    f"backend {method}", kind=SpanKind.CLIENT,
                    attributes={"mcp.backend": backend, "mcp.method.name": method}):
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

    async def reconcile(self, added: Mapping[str, BackendConnection],
                        removed: Sequence[str]) -> None:
        """Take in new backend connections, end removed ones, re-route, and tell the
        client that the lists changed (configuration reload, a backend recovered).

        A session closed meanwhile (its copy was rebuilt, or it ended) takes nothing in:
        the new connections are closed again, ending the backend sessions just opened."""
        if self._closed:
            async with anyio.create_task_group() as tg:
                for name, connection in added.items():
                    tg.start_soon(self._close_connection, name, connection)
            return
        closing = {name: self._connections.pop(name) for name in removed
                   if name in self._connections}
        self._connections.update(added)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.routes.replace, list(added), list(removed))
            for name, connection in closing.items():
                tg.start_soon(self._close_connection, name, connection)
        for method in sorted(LIST_CHANGED):
            self.messages.publish({"jsonrpc": "2.0", "method": method})

    async def _close_connection(self, name: str, connection: BackendConnection,
                                end_upstream: bool = True) -> None:
        try:
            await connection.aclose(end_session=end_upstream)
        except Exception:
            logger.warning("closing backend %s failed", name, exc_info=True,
                           extra={"session_id": self._session_id, "backend": name})
        finally:
            if self._ledger is not None:
                self._ledger.record_ended(name)

    # -- closing --------------------------------------------------------------------

    async def wait_calls(self) -> None:
        """Return once no request's work is running on this session."""
        await self.work.wait_requests()

    async def wait_closed(self) -> None:
        """Return once the session is closed (ends streams that outlive no session)."""
        await self._ended.wait()

    async def aclose(self, *, end_upstream: bool = True) -> None:
        """Answer what is still open, then end every backend session (in parallel);
        idempotent, never raises.

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
        async with anyio.create_task_group() as tg:
            for name, connection in self._connections.items():
                tg.start_soon(self._close_connection, name, connection, end_upstream)


def _ended_answer(request_id: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id,
            "error": {"code": SessionClosed.jsonrpc_code, "message": "Session not found"}}
