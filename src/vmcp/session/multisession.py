"""One client session's live state on this replica: backend connections and routes.

It cannot be serialized; each replica builds its own from the stored metadata (see
``connector``). Closing it ends every backend session it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from opentelemetry.trace import SpanKind

from vmcp.aggregate import BackendCatalog, RoutingTable
from vmcp.backend import STREAM_PAUSED, BackendConnection, BackendRpcError
from vmcp.backend.breaker import CircuitBreaker
from vmcp.errors import BackendError, SessionClosed, StoreError
from vmcp.session.channel import ClientChannel, PendingClientRequests
from vmcp.session.streams import ResponseStream, ResponseStreams
from vmcp.store.event_log import EventLog
from vmcp.store.pubsub import SessionRelay
from vmcp.tracing import outgoing_headers, tracer
from vmcp.upstream.ledger import UpstreamLedger

logger = logging.getLogger(__name__)

LIST_CHANGED = {
    "notifications/tools/list_changed",
    "notifications/prompts/list_changed",
    "notifications/resources/list_changed",
}
# Notifications about the session as a whole, not about the request they arrived with.
UNSOLICITED = LIST_CHANGED | {"notifications/resources/updated"}
SUBSCRIBER_BUFFER = 256
REFRESH_INTERVAL = 5.0
# How long a closing session waits for its event-log copies to record their streams'
# final events (each append has the store's own deadline; this bounds them together).
FINAL_COPY_SECONDS = 5.0



class RequestCancelled(Exception):
    """The client cancelled the request (``notifications/cancelled``): answer nothing."""


Rebuild = Callable[[Mapping[str, BackendCatalog]], RoutingTable]
Discover = Callable[[str, BackendConnection], Awaitable[BackendCatalog]]


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
    ) -> None:
        self._session_id = session_id
        self._connections = dict(connections)
        self._catalogs = dict(catalogs)
        self._rebuild = rebuild
        self._discover = discover
        self._relay = relay
        self.event_log = event_log
        self._ledger = ledger
        self._breaker = breaker
        self._persisted: set[str] = set()
        self._replica_id = replica_id
        self.routing = rebuild(self._catalogs)
        self.pending = PendingClientRequests(prefix=f"vmcp-{session_id[:8]}")
        # Stream ids carry the replica id: a client may resume a stream on another replica.
        self.streams = ResponseStreams(prefix=replica_id or "r")
        self._requests: dict[Any, anyio.CancelScope] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._copies: set[asyncio.Task[None]] = set()
        self._subscriber: MemoryObjectSendStream[dict[str, Any]] | None = None
        self._listeners: anyio.CancelScope | None = None
        self._closed = False
        self._ended = anyio.Event()
        self._last_full_refresh = -REFRESH_INTERVAL

    @property
    def session_id(self) -> str:
        return self._session_id

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

    # -- calls ----------------------------------------------------------------------

    async def call(self, backend: str, method: str, params: dict[str, Any] | None,
                   channel: ClientChannel | None) -> dict[str, Any]:
        """Forward one request to ``backend``, relaying what it sends meanwhile."""
        connection = self.connection(backend)

        async def relay(message: dict[str, Any]) -> dict[str, Any] | None:
            if channel is None:
                return None
            if "method" in message and "id" in message:
                answer = await channel.request(message["method"], message.get("params"))
                reply = {k: v for k, v in answer.items() if k in ("result", "error")}
                return {"jsonrpc": "2.0", "id": message["id"], **reply}
            if message.get("method") == STREAM_PAUSED:
                channel.pause(int(message["params"]["retryMs"]))
            elif message.get("method") in UNSOLICITED:
                await self._announce(backend, message)
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
                             answers_elsewhere=self.answers_from_other_replicas)

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

    def spawn(self, work: Awaitable[None]) -> None:
        """Run a request's work detached from its HTTP connection (a client may drop the
        connection and resume the stream); it ends with the session at the latest."""
        if self._closed:
            raise SessionClosed(self._session_id)

        async def run() -> None:
            await work

        task = asyncio.create_task(run(), name=f"vmcp-request-{self._session_id[:8]}")
        self._tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            if isinstance(work, Coroutine):
                work.close()  # cancelled before it started: never awaited, close quietly

        task.add_done_callback(done)

    def persist_stream(self, stream: ResponseStream) -> None:
        """Copy an interrupted stream's events to the event log, so that the client can
        resume it on any replica; follows the stream until its final event.

        The copy is not one of the request tasks that the session's close cancels: the
        close finishes the stream (``-32001``) and the copy records that end too, so a
        client resuming on another replica gets the same answer, not silence."""
        if self.event_log is None or stream.id in self._persisted or self._closed:
            return
        self._persisted.add(stream.id)
        log = self.event_log

        async def copy() -> None:
            position = 0
            while True:
                events = await stream.after(position)
                for position, item in events:
                    record: dict[str, Any] = {"m": item.message, "final": item.final}
                    if item.pause_ms is not None:
                        record["pause"] = item.pause_ms
                    try:
                        await log.append(self._session_id, stream.id, position, record)
                    except StoreError as exc:
                        logger.warning("could not persist stream events: %s", exc,
                                       extra={"session_id": self._session_id})
                        return
                    if item.final:
                        return

        task = asyncio.create_task(copy(), name=f"vmcp-stream-copy-{self._session_id[:8]}")
        self._copies.add(task)
        task.add_done_callback(self._copies.discard)

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

    def deliver_client_response(self, message: dict[str, Any]) -> bool:
        return self.pending.deliver(message)

    # -- server-initiated messages ---------------------------------------------------

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[MemoryObjectReceiveStream[dict[str, Any]]]:
        """The client's GET stream: backend notifications that belong to no request.

        Only the newest stream receives messages, so none is delivered twice. Backend
        streams are opened only while a client listens.
        """
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](SUBSCRIBER_BUFFER)
        previous, self._subscriber = self._subscriber, send
        if previous is not None:
            previous.close()

        def from_elsewhere(payload: dict[str, Any]) -> None:
            message = payload.get("message")
            if (payload.get("type") == "server-message" and isinstance(message, dict)
                    and payload.get("origin") != self._replica_id):
                backend = payload.get("backend")
                if message.get("method") in LIST_CHANGED and isinstance(backend, str):
                    self.spawn(self._refresh_then_publish(backend, message))
                else:
                    self._publish(message)

        relayed = (self._relay.listen(self._session_id, from_elsewhere)
                   if self._relay is not None else contextlib.nullcontext())
        try:
            async with relayed, anyio.create_task_group() as tg:
                if self._listeners is None:
                    self._listeners = tg.cancel_scope
                    for name, connection in self._connections.items():
                        tg.start_soon(self._listen, name, connection)
                try:
                    yield receive
                finally:
                    if self._listeners is tg.cancel_scope:
                        self._listeners = None
                    tg.cancel_scope.cancel()
        finally:
            if self._subscriber is send:
                self._subscriber = None
            send.close()

    async def _listen(self, name: str, connection: BackendConnection) -> None:
        try:
            messages = connection.listen()
            try:
                async for message in messages:
                    await self._on_backend_message(name, connection, message)
            finally:
                await _aclose_iterator(messages)
        except SessionClosed:
            return
        except Exception as exc:
            logger.warning("listening to backend %s stopped: %s", name, exc,
                           extra={"session_id": self._session_id, "backend": name})

    async def _on_backend_message(self, name: str, connection: BackendConnection,
                                  message: dict[str, Any]) -> None:
        method = message.get("method")
        if "id" in message and method is not None:
            await self._relay_backend_request(connection, message)
            return
        if method in LIST_CHANGED:
            await self.refresh_backend(name)
        self._publish(message)

    async def _announce(self, backend: str, message: dict[str, Any]) -> None:
        """A message that belongs to no request: to the client's GET stream, wherever it is."""
        if message.get("method") in LIST_CHANGED:
            await self.refresh_backend(backend)
        self._publish(message)
        if self._relay is not None:
            try:
                await self._relay.publish(self._session_id, {
                    "type": "server-message", "origin": self._replica_id, "backend": backend,
                    "message": message})
            except StoreError as exc:
                logger.warning("could not relay %s: %s", message.get("method"), exc,
                               extra={"session_id": self._session_id})

    async def _relay_backend_request(self, connection: BackendConnection,
                                     message: dict[str, Any]) -> None:
        request_id, answer = self.pending.open()
        try:
            async with self.answers_from_other_replicas():
                self._publish({**message, "id": request_id})
                with anyio.fail_after(300):
                    reply = await answer
        except (TimeoutError, asyncio.CancelledError):
            self.pending.discard(request_id)
            raise
        body = {k: v for k, v in reply.items() if k in ("result", "error")}
        await connection.respond({"jsonrpc": "2.0", "id": message["id"], **body})

    def _publish(self, message: dict[str, Any]) -> None:
        subscriber = self._subscriber
        if subscriber is None:
            return
        try:
            subscriber.send_nowait(message)
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            logger.warning("client stream full or gone; dropped %s", message.get("method"),
                           extra={"session_id": self._session_id})

    async def _refresh_then_publish(self, backend: str, message: dict[str, Any]) -> None:
        """Re-route first, so a client that lists again on ``list_changed`` sees the change."""
        await self.refresh_backend(backend)
        self._publish(message)

    async def refresh_all(self) -> None:
        """Re-discover every backend: a name the routing table lacks may be new (its
        ``list_changed`` went to another replica, or to no listener at all).

        At most once per ``REFRESH_INTERVAL`` per session, so that calls naming unknown
        tools cannot turn into a stream of listings sent to every backend.
        """
        now = time.monotonic()
        if now - self._last_full_refresh < REFRESH_INTERVAL:
            return
        self._last_full_refresh = now
        async with anyio.create_task_group() as tg:
            for name in self._connections:
                tg.start_soon(self.refresh_backend, name)

    async def refresh_backend(self, name: str) -> None:
        """Re-discover one backend's catalog (after its ``list_changed``) and re-route."""
        connection = self._connections.get(name)
        if connection is None:
            return
        try:
            self._catalogs[name] = await self._discover(name, connection)
        except BackendError as exc:
            logger.warning("re-discovering backend %s failed, keeping its old catalog: %s",
                           name, exc, extra={"session_id": self._session_id, "backend": name})
            return
        self.routing = self._rebuild(self._catalogs)

    async def reconcile(self, added: Mapping[str, BackendConnection],
                        removed: Sequence[str]) -> None:
        """Take in new backend connections, end removed ones, re-route, and tell the
        client that the lists changed (configuration reload)."""
        closing = {name: self._connections.pop(name) for name in removed
                   if name in self._connections}
        for name in removed:
            self._catalogs.pop(name, None)
        self._connections.update(added)
        async with anyio.create_task_group() as tg:
            for name in added:
                tg.start_soon(self.refresh_backend, name)
            for name, connection in closing.items():
                tg.start_soon(self._close_connection, name, connection)
        self.routing = self._rebuild(self._catalogs)
        for method in sorted(LIST_CHANGED):
            self._publish({"jsonrpc": "2.0", "method": method})

    async def _close_connection(self, name: str, connection: BackendConnection) -> None:
        try:
            await connection.aclose()
        except Exception:
            logger.warning("closing backend %s failed", name, exc_info=True,
                           extra={"session_id": self._session_id, "backend": name})
        finally:
            if self._ledger is not None:
                self._ledger.record_ended(name)

    # -- closing --------------------------------------------------------------------

    def _ended_answer(self, request_id: Any) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": request_id,
                "error": {"code": SessionClosed.jsonrpc_code, "message": "Session not found"}}

    async def wait_closed(self) -> None:
        """Return once the session is closed (ends streams that outlive no session)."""
        await self._ended.wait()

    async def aclose(self) -> None:
        """End every backend session (in parallel); idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        if self._listeners is not None:
            self._listeners.cancel()
        if self._subscriber is not None:
            self._subscriber.close()
        self.pending.cancel_all()
        for task in list(self._tasks):
            task.cancel()
        # A cancelled task writes no answer (one cancelled before it started runs no code
        # at all): the session's own end answers every request still open.
        self.streams.end_all(self._ended_answer)
        self._ended.set()
        if self._copies:
            copies = list(self._copies)
            _, late = await asyncio.wait(copies, timeout=FINAL_COPY_SECONDS)
            for task in late:
                task.cancel()

        async with anyio.create_task_group() as tg:
            for name, connection in self._connections.items():
                tg.start_soon(self._close_connection, name, connection)


async def _aclose_iterator(iterator: AsyncIterator[Any]) -> None:
    """Release a backend's stream as soon as its consumer stops (async generators)."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
