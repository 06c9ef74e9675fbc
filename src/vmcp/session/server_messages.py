"""What backends send a session outside any request, and the client's GET stream for it.

Backends announce list changes and resource updates, and may send requests of their own
(sampling, elicitation) on their own GET streams; a call may also carry such unsolicited
messages. They reach the client on its GET stream, wherever it is: the replica that hears
a message publishes it to the session's channel too, so a stream held by another replica
delivers it. A ``list_changed`` re-routes the session first, so a client that lists again
on it sees the change.

A GET stream listens to every backend that holds an upstream session for this client
session, wherever it was opened: the ones recorded when the stream starts are
re-attached here (no wire traffic), and one opened later on any replica is announced on
the session's relay (``upstream-opened``) and re-attached too. It opens none: a backend
without an upstream session for this client session has nothing of this session to
announce (no subscription, no request of its own, no log level); its list changes reach
the client through the replica's catalogs (listed again once stale) instead.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from vmcp.aggregate import RoutingTable
from vmcp.backend import BackendConnection
from vmcp.errors import SessionClosed, StoreError
from vmcp.session.channel import PendingClientRequests
from vmcp.session.routes import SessionRoutes
from vmcp.store.pubsub import SessionRelay
from vmcp.upstream.client_requests import undeclared

logger = logging.getLogger(__name__)

LIST_CHANGED: Final = frozenset({
    "notifications/tools/list_changed",
    "notifications/prompts/list_changed",
    "notifications/resources/list_changed",
})
UNSOLICITED: Final = LIST_CHANGED | {"notifications/resources/updated"}
"""Notifications about the session as a whole, not about the request they arrived with."""
_LISTS: Final = (
    ("notifications/tools/list_changed", "tools"),
    ("notifications/prompts/list_changed", "prompts"),
    ("notifications/resources/list_changed", "resources"),
)
SUBSCRIBER_BUFFER: Final = 256
BACKLOG: Final = 64
"""Messages kept while the client holds no GET stream here (a ``list_changed`` heard
right after ``initialize``, before the client opened its stream): delivered when it does.
The oldest go first beyond this, counted and logged, never silently."""
BACKEND_REQUEST_SECONDS: Final = 300.0
"""How long a backend's own request (sampling, elicitation) waits for the client."""

Spawn = Callable[[Any], None]
Attach = Callable[[str], Awaitable[object]]
Recorded = Callable[[], Awaitable[Sequence[str]]]
STREAM_OPEN_WAIT_SECONDS: Final = 1.0
"""How long a re-attached backend's stream may take to open before the replica that opened
the upstream session is told to go on anyway (it waits for that word a little longer:
``connector.LISTENER_WAIT_SECONDS``)."""
UPSTREAM_OPENED: Final = "upstream-opened"
"""Relay message type: a replica opened (and recorded) an upstream session."""
UPSTREAM_LISTENING: Final = "upstream-listening"
"""Relay message type: the stream's holder listens to the upstream session just opened
(the answer to ``UPSTREAM_OPENED``, carrying its ``nonce``)."""
FIRST_CALL_DONE: Final = "first-call-done"
"""Relay message type: the first call over a new upstream session ended. A change that
call announced may have reached the backend's stream before anyone listened to it, so
the stream's holder re-lists that backend and announces what changed."""
AnswersElsewhere = Callable[[], contextlib.AbstractAsyncContextManager[None]]


class ServerMessages:
    """Delivers a session's unsolicited backend messages to its client's GET stream."""

    def __init__(self, session_id: str, *, replica_id: str, relay: SessionRelay | None,
                 connections: Mapping[str, BackendConnection], routes: SessionRoutes,
                 pending: PendingClientRequests, answers_elsewhere: AnswersElsewhere,
                 spawn: Spawn, attach: Attach | None = None,
                 recorded: Recorded | None = None,
                 client_capabilities: Callable[[], frozenset[str] | None] = lambda: None
                 ) -> None:
        self._session_id = session_id
        self._replica_id = replica_id
        self._relay = relay
        self._connections = connections  # the session's own mapping, kept current
        self._routes = routes
        self._pending = pending
        self._answers_elsewhere = answers_elsewhere
        self._spawn = spawn
        self._attach = attach
        self._recorded = recorded
        self._client_capabilities = client_capabilities
        self._subscriber: MemoryObjectSendStream[dict[str, Any]] | None = None
        self._listeners: anyio.CancelScope | None = None
        self._listeners_released = anyio.Event()
        self._listening: TaskGroup | None = None
        self._closed = False
        self._backlog: deque[dict[str, Any]] = deque()
        self.dropped = 0

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
        while self._backlog:
            self.publish(self._backlog.popleft())

        def from_elsewhere(payload: dict[str, Any]) -> None:
            # A session closing here has nothing more to deliver (its work refuses to
            # start: ``SessionClosed``).
            with contextlib.suppress(SessionClosed):
                heard_elsewhere(payload)

        def heard_elsewhere(payload: dict[str, Any]) -> None:
            message = payload.get("message")
            kind = payload.get("type")
            if kind == UPSTREAM_OPENED and isinstance(backend := payload.get("backend"), str):
                self._spawn(self._attach_one(backend, payload.get("nonce")))
            elif kind == FIRST_CALL_DONE and isinstance(
                    backend := payload.get("backend"), str):
                self._spawn(self._relist(backend))
            elif (payload.get("type") == "server-message" and isinstance(message, dict)
                    and payload.get("origin") != self._replica_id):
                backend = payload.get("backend")
                if message.get("method") in LIST_CHANGED and isinstance(backend, str):
                    self._spawn(self._refresh_then_publish(backend, message))
                else:
                    self.publish(message)

        relayed = (self._relay.listen(self._session_id, from_elsewhere)
                   if self._relay is not None else contextlib.nullcontext())
        try:
            async with relayed, anyio.create_task_group() as tg:
                await tg.start(self._run_listeners, send)
                try:
                    yield receive
                finally:
                    tg.cancel_scope.cancel()
        finally:
            if self._subscriber is send:
                self._subscriber = None
            send.close()
            receive.close()

    async def _run_listeners(self, subscriber: MemoryObjectSendStream[dict[str, Any]], *,
                             task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                             ) -> None:
        """Listen to the backends for the client stream ``subscriber``, once no other
        stream does; they stop with it.

        The first stream starts them. A newer stream replaces it as the receiver at once,
        and takes the listeners over when the older one ends: otherwise a client that
        reopens its GET stream before the old one is noticed gone would hear nothing more
        from its backends. (The catch-up re-list covers what the handover misses.)

        Started (``task_status``) once the listeners run, so that a backend opened right
        after the client is told its stream is open is listened to; at once if they
        still belong to the stream being replaced."""
        waited = self._listeners is not None
        if waited:
            task_status.started()
        while self._listeners is not None:
            await self._listeners_released.wait()
        if self._subscriber is not subscriber or self._closed:
            if not waited:
                task_status.started()
            return  # a newer stream took over meanwhile, or the session is closing
        released = self._listeners_released = anyio.Event()
        try:
            with anyio.CancelScope() as self._listeners:
                async with anyio.create_task_group() as tg:
                    self._listening = tg
                    for name, connection in self._connections.items():
                        tg.start_soon(self._listen, name, connection)
                    tg.start_soon(self._attach_recorded)
                    tg.start_soon(self._catch_up)
                    if not waited:
                        task_status.started()
                    await anyio.sleep_forever()  # backends opened later join (listen_to)
        finally:
            self._listeners = None
            self._listening = None
            released.set()

    async def _attach_recorded(self) -> None:
        """Re-attach the upstream sessions other replicas opened for this session, so
        this stream hears them too (each is listened to as it attaches)."""
        if self._recorded is None:
            return
        try:
            names = await self._recorded()
        except Exception as exc:
            logger.warning("could not read the session's upstream sessions: %s", exc,
                           extra={"session_id": self._session_id})
            return
        async with anyio.create_task_group() as tg:
            for name in names:
                if name not in self._connections:
                    tg.start_soon(self._attach_one, name)

    async def _attach_one(self, name: str, nonce: object = None) -> None:
        """Re-attach ``name`` and listen to it; then re-list it and announce what changed,
        since a change it announced before this stream listened to it went unheard (a
        tool whose first call, on another replica, changes the list)."""
        if self._attach is None or self._listening is None:
            return
        try:
            connection = await self._attach(name)
        except Exception as exc:
            logger.warning("could not re-attach backend %s for the stream: %s", name, exc,
                           extra={"session_id": self._session_id, "backend": name})
            return
        # Confirm only once the backend holds the stream: what it announces during the
        # call that opened the session (on the other replica) must not go unheard.
        # Transports whose stream is the session itself have no such event.
        opened = getattr(connection, "stream_opened", None)
        if isinstance(opened, anyio.Event):
            with anyio.move_on_after(STREAM_OPEN_WAIT_SECONDS):
                await opened.wait()
        if nonce is not None and self._relay is not None:
            try:
                await self._relay.publish(self._session_id, {
                    "type": UPSTREAM_LISTENING, "backend": name, "nonce": nonce})
            except StoreError as exc:
                logger.warning("could not say the stream listens to %s: %s", name, exc,
                               extra={"session_id": self._session_id, "backend": name})
        await self._relist(name)

    async def _relist(self, name: str) -> None:
        if self._listening is None:
            return
        before = self._routes.table
        await self._routes.refresh(name)
        self._announce_changes(before)

    async def first_call_done(self, backend: str) -> None:
        """The session's first call over ``backend``'s new upstream session ended: catch
        up on what it may have changed unheard (see ``FIRST_CALL_DONE``), here and on
        the replica holding the client's stream."""
        if self._listening is not None:
            self._spawn(self._relist(backend))
        if self._relay is not None:
            try:
                await self._relay.publish(self._session_id, {
                    "type": FIRST_CALL_DONE, "origin": self._replica_id, "backend": backend})
            except StoreError as exc:
                logger.warning("could not relay a first call's end: %s", exc,
                               extra={"session_id": self._session_id, "backend": backend})

    def listen_to(self, name: str, connection: BackendConnection) -> None:
        """A backend opened while the client's stream is up: listen to it too."""
        if self._listening is not None:
            self._listening.start_soon(self._listen, name, connection)

    async def _catch_up(self) -> None:
        """Re-list the backends once the stream listens, and announce what changed.

        A backend announces a change on its own stream, which is open only while the
        client's is: a change made before the client opened its stream (a tool that
        changes the list, called right after ``initialize``) would go unheard."""
        before = self._routes.table
        try:
            await self._routes.refresh_all(list(self._connections))
        except Exception:
            # A catch-up is a courtesy: it must never end the stream it serves.
            logger.warning("re-listing for a new stream failed", exc_info=True,
                           extra={"session_id": self._session_id})
            return
        self._announce_changes(before)

    def _announce_changes(self, before: RoutingTable) -> None:
        after = self._routes.table
        for method, kind in _LISTS:
            if getattr(before, kind) != getattr(after, kind):
                self.publish({"jsonrpc": "2.0", "method": method})

    async def announce(self, backend: str, message: dict[str, Any]) -> None:
        """A message that came with a call but belongs to no request: to the client's GET
        stream, wherever it is."""
        if message.get("method") in LIST_CHANGED:
            await self._routes.refresh(backend)
        self.publish(message)
        if self._relay is not None:
            try:
                await self._relay.publish(self._session_id, {
                    "type": "server-message", "origin": self._replica_id, "backend": backend,
                    "message": message})
            except StoreError as exc:
                logger.warning("could not relay %s: %s", message.get("method"), exc,
                               extra={"session_id": self._session_id})

    def publish(self, message: dict[str, Any]) -> None:
        """To this replica's GET stream of the session, if the client holds one here."""
        subscriber = self._subscriber
        if subscriber is None:
            self._backlog.append(message)
            if len(self._backlog) > BACKLOG:
                self._drop(self._backlog.popleft(), "no client stream for a while")
            return
        try:
            subscriber.send_nowait(message)
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._drop(message, "client stream full or gone")

    def _drop(self, message: dict[str, Any], why: str) -> None:
        self.dropped += 1
        if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:  # a flood logs a few lines
            logger.warning("%s; dropped %s (%d dropped in this session)", why,
                           message.get("method"), self.dropped,
                           extra={"session_id": self._session_id})

    def close(self) -> None:
        """The session is closing: stop listening to backends, end the GET stream."""
        self._closed = True
        if self._listeners is not None:
            self._listeners.cancel()
        if self._subscriber is not None:
            self._subscriber.close()

    async def _listen(self, name: str, connection: BackendConnection) -> None:
        try:
            messages = connection.listen()
            try:
                async for message in messages:
                    await self._on_backend_message(name, connection, message)
            finally:
                aclose = getattr(messages, "aclose", None)
                if aclose is not None:  # release the backend's stream at once
                    await aclose()
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
            await self._routes.refresh(name)
        self.publish(message)

    async def _relay_backend_request(self, connection: BackendConnection,
                                     message: dict[str, Any]) -> None:
        refused = undeclared(str(message["method"]), self._client_capabilities())
        if refused is not None:
            await connection.respond({"jsonrpc": "2.0", "id": message["id"], **refused})
            return
        request_id, answer = self._pending.open()
        try:
            async with self._answers_elsewhere():
                self.publish({**message, "id": request_id})
                with anyio.fail_after(BACKEND_REQUEST_SECONDS):
                    reply = await answer
        except BaseException:
            self._pending.discard(request_id)
            raise
        body = {k: v for k, v in reply.items() if k in ("result", "error")}
        await connection.respond({"jsonrpc": "2.0", "id": message["id"], **body})

    async def _refresh_then_publish(self, backend: str, message: dict[str, Any]) -> None:
        """Re-route first, so a client that lists again on ``list_changed`` sees the change."""
        await self._routes.refresh(backend)
        self.publish(message)
