"""Change notifications for stateless clients (``subscriptions/listen``, 2026-07-28).

A client of the stateless revision hears that the tools, prompts or resources it can list
changed only on a ``subscriptions/listen`` stream. What changes them is seen in many
places: a backend's own ``list_changed`` (heard by :mod:`.watch`, one upstream stream per
backend per replica), a reload that adds or removes backends, a backend turning unhealthy
or healthy. Any replica may see it first, and any replica may hold the client's stream,
so every change seen here is also sent to the other replicas (a :class:`ChangeChannel`,
Redis pub/sub) and every change they see is delivered here.

:class:`ChangeHub` is the one place where changes meet listeners on this replica:

* Bursts are coalesced per kind: the first change of a kind goes out at once, the rest
  within ``coalesce_seconds`` become one more notification at the end of that window
  (every notification is a level trigger: "refetch if you care").
* Bounded: at most ``max_listeners`` streams; each buffers at most ``buffer`` events. A
  listener whose client stopped reading is ended there (it re-listens and refetches),
  rather than allowed to grow this process's memory.
* Draining ends every stream gracefully (the client gets the ``subscriptions/listen``
  result and re-listens elsewhere) and refuses new ones.

Resource subscriptions (``resourceSubscriptions``) are counted here per (backend, URI):
the upstream watch subscribes a URI at its backend when the first listener of this replica
asks for it and unsubscribes when the last one goes. An update is delivered only to the
listeners that asked for that URI, and is not sent to the other replicas: each replica
subscribes upstream for its own listeners, so the replica that holds a listener is the
one whose upstream subscription hears the update.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.subscriptions import (
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    ToolsListChanged,
    event_matches,
)
from mcp_types import SubscriptionFilter

from vmcp.errors import StoreError
from vmcp.store.pubsub import ChangeChannel

logger = logging.getLogger(__name__)

__all__ = [
    "KINDS",
    "ChangeHub",
    "Listener",
    "ListenerEnd",
    "SubscriptionLimit",
    "SubscriptionsClosed",
    "honored_filter",
]

KINDS: Final[dict[str, ServerEvent]] = {
    "tools": ToolsListChanged(),
    "prompts": PromptsListChanged(),
    "resources": ResourcesListChanged(),
}
"""The kinds of change the gateway delivers, by the name they travel under."""
ALL_KINDS: Final = tuple(KINDS)
PUBLISH_QUEUE: Final = 256
"""Changes waiting to be sent to the other replicas; beyond it they are dropped (logged)."""

OnResources = Callable[[str], None]
"""Told the backend whose set of subscribed resource URIs (:meth:`ChangeHub.subscribed`)
changed, so that the upstream subscriptions follow."""
OnChange = Callable[[str | None], None]
"""Told the backend whose listings changed (None: any may have) before listeners hear it,
so that a client's re-listing does not get a cached answer."""


class SubscriptionLimit(Exception):
    """This replica already serves as many listen streams as it may."""


class SubscriptionsClosed(Exception):
    """The replica is draining: it opens no new listen streams."""


class ListenerEnd(enum.Enum):
    """Why a listener's events stopped."""

    DRAINED = "drained"  # the replica is stopping: end gracefully
    SLOW = "slow"  # its buffer overflowed: end abruptly


def honored_filter(requested: SubscriptionFilter,
                   resources: Iterable[str] = ()) -> SubscriptionFilter:
    """What the gateway delivers of ``requested``: the three ``list_changed`` kinds, and
    of its resource subscriptions the ``resources`` it can honour (a URI it cannot route,
    or whose backend offers no subscriptions, is left out, as the revision allows)."""
    uris = [u for u in dict.fromkeys(requested.resource_subscriptions or ()) if u in
            set(resources)]
    return SubscriptionFilter(
        tools_list_changed=True if requested.tools_list_changed else None,
        prompts_list_changed=True if requested.prompts_list_changed else None,
        resources_list_changed=True if requested.resources_list_changed else None,
        resource_subscriptions=uris or None,
    )


class Listener:
    """One open listen stream's side of the hub: a bounded buffer of matching events."""

    def __init__(self, honored: SubscriptionFilter, buffer: int,
                 resources: Mapping[str, str] | None = None) -> None:
        self.honored = honored
        self.resources: dict[str, str] = dict(resources or {})
        """The honoured resource subscriptions: URI -> the backend serving it."""
        self._uris = frozenset(self.resources)
        self.end: ListenerEnd | None = None
        self._send: MemoryObjectSendStream[ServerEvent]
        self.events: MemoryObjectReceiveStream[ServerEvent]
        self._send, self.events = anyio.create_memory_object_stream[ServerEvent](buffer)

    def offer(self, event: ServerEvent) -> None:
        if self.end is not None or not event_matches(self.honored, self._uris, event):
            return
        try:
            self._send.send_nowait(event)
        except anyio.WouldBlock:
            logger.warning("a listen stream stopped reading; ending it")
            self.finish(ListenerEnd.SLOW)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    def finish(self, end: ListenerEnd) -> None:
        """No more events: the stream ends once it has written what it buffered."""
        if self.end is None:
            self.end = end
        self._send.close()

    def close(self) -> None:
        self._send.close()
        self.events.close()


class ChangeHub:
    """Changes to what stateless clients can list, delivered to this replica's listeners."""

    def __init__(self, *, max_listeners: int, buffer: int, coalesce_seconds: float,
                 replica: str, channel: ChangeChannel | None = None,
                 on_change: OnChange | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_listeners < 1 or buffer < 1:
            raise ValueError("max_listeners and buffer must be at least 1")
        self._max = max_listeners
        self._buffer = buffer
        self._window = coalesce_seconds
        self._replica = replica
        self._channel = channel
        self._on_change = on_change
        self._clock = clock
        self._listeners: set[Listener] = set()
        self._quiet_until: dict[str, float] = {}
        self._pending: set[str] = set()
        self._wake = anyio.Event()
        self._outbox: MemoryObjectSendStream[dict[str, Any]] | None = None
        self._outgoing: MemoryObjectReceiveStream[dict[str, Any]] | None = None
        if channel is not None:
            self._outbox, self._outgoing = anyio.create_memory_object_stream[
                dict[str, Any]](PUBLISH_QUEUE)
        self._draining = False
        self.ready: Callable[[], Awaitable[None]] | None = None
        """Set by the upstream watch: waits (bounded) until every backend's stream is open,
        so that a change made right after the acknowledgement is heard."""
        self.on_resources: OnResources | None = None
        """Set by the upstream watch: follows :meth:`subscribed` upstream."""
        self._resource_refs: dict[str, dict[str, int]] = {}
        self.delivered = 0
        self.ended_slow = 0

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    # -- listeners -------------------------------------------------------------------

    def open(self, honored: SubscriptionFilter,
             resources: Mapping[str, str] | None = None) -> Listener:
        """A new listener of ``honored`` kinds and ``resources`` (URI -> its backend);
        raises :class:`SubscriptionLimit` or :class:`SubscriptionsClosed`."""
        if self._draining:
            raise SubscriptionsClosed
        if len(self._listeners) >= self._max:
            raise SubscriptionLimit
        listener = Listener(honored, self._buffer, resources)
        self._listeners.add(listener)
        self._count(listener, +1)
        return listener

    def close(self, listener: Listener) -> None:
        if listener in self._listeners:
            if listener.end is ListenerEnd.SLOW:
                self.ended_slow += 1
            self._count(listener, -1)
        self._listeners.discard(listener)
        listener.close()

    def subscribed(self, backend: str) -> frozenset[str]:
        """The URIs of ``backend`` some listener here subscribes to."""
        return frozenset(self._resource_refs.get(backend, {}))

    def _count(self, listener: Listener, step: int) -> None:
        changed: set[str] = set()
        for uri, backend in listener.resources.items():
            refs = self._resource_refs.setdefault(backend, {})
            count = refs.get(uri, 0) + step
            if count > 0:
                refs[uri] = count
            else:
                refs.pop(uri, None)
            if (step > 0 and count == 1) or (step < 0 and count <= 0):
                changed.add(backend)
            if not refs:
                self._resource_refs.pop(backend, None)
        for backend in sorted(changed):
            if self.on_resources is not None:
                self.on_resources(backend)

    def resource_updated(self, backend: str, uri: str) -> None:
        """``backend`` says the resource at ``uri`` changed: tell the listeners that
        subscribed to it there (not coalesced: each is about one URI)."""
        event = ResourceUpdated(uri=uri)
        for listener in list(self._listeners):
            if listener.resources.get(uri) == backend:
                listener.offer(event)
        self.delivered += 1

    def drain(self) -> None:
        """End every stream gracefully and open no more (the replica is stopping)."""
        self._draining = True
        for listener in list(self._listeners):
            listener.finish(ListenerEnd.DRAINED)

    def close_all(self) -> None:
        """Shutdown: end every stream and release the hub's own buffers."""
        self.drain()
        for listener in list(self._listeners):
            self.close(listener)
        # The sending side first: the publisher, if waiting, sees the end of the stream.
        if self._outbox is not None:
            self._outbox.close()
        if self._outgoing is not None:
            self._outgoing.close()

    # -- changes ---------------------------------------------------------------------

    def changed(self, kinds: Iterable[str] = ALL_KINDS, *, backend: str | None = None) -> None:
        """What clients can list of ``kinds`` changed here (``backend``'s, or anyone's):
        tell this replica's listeners and, through the channel, every other replica's."""
        wanted = [k for k in kinds if k in KINDS]
        if not wanted:
            return
        self._arrived(wanted, backend)
        if self._outbox is not None:
            payload = {"origin": self._replica, "kinds": wanted, "backend": backend}
            try:
                self._outbox.send_nowait(payload)
            except anyio.WouldBlock:
                logger.warning("too many changes waiting for the other replicas; one dropped")
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass  # shutting down

    def _arrived(self, kinds: Iterable[str], backend: str | None) -> None:
        if self._on_change is not None:
            self._on_change(backend)
        for kind in kinds:
            self._offer(kind)

    def _offer(self, kind: str) -> None:
        now = self._clock()
        if now >= self._quiet_until.get(kind, 0.0):
            self._quiet_until[kind] = now + self._window
            self._fan_out(kind)
        else:
            self._pending.add(kind)
            self._wake.set()

    def _fan_out(self, kind: str) -> None:
        event = KINDS[kind]
        for listener in list(self._listeners):
            listener.offer(event)
        self.delivered += 1

    # -- background ------------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled: flush coalesced changes; exchange changes with other replicas."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._flush)
            if self._channel is not None and self._outgoing is not None:
                tg.start_soon(self._publish, self._channel, self._outgoing)
                tg.start_soon(self._receive, self._channel)

    async def _flush(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._pending:
                due = min(self._quiet_until.get(k, 0.0) for k in self._pending)
                await anyio.sleep(max(0.0, due - self._clock()))
                now = self._clock()
                for kind in sorted(k for k in self._pending
                                   if self._quiet_until.get(k, 0.0) <= now):
                    self._pending.discard(kind)
                    self._quiet_until[kind] = now + self._window
                    self._fan_out(kind)

    @staticmethod
    async def _publish(channel: ChangeChannel,
                       outgoing: MemoryObjectReceiveStream[dict[str, Any]]) -> None:
        try:
            async for payload in outgoing:
                try:
                    await channel.publish(payload)
                except StoreError as exc:
                    logger.warning("could not tell the other replicas of a change: %s", exc)
                except Exception:  # a hint only: never let it take the replica down
                    logger.exception("could not tell the other replicas of a change")
        except anyio.ClosedResourceError:
            pass  # shutdown (close_all) closed the outbox while a publish was under way

    async def _receive(self, channel: ChangeChannel) -> None:
        async for payload in channel.subscribe():
            if payload.get("origin") == self._replica:
                continue
            kinds = payload.get("kinds")
            backend = payload.get("backend")
            if not isinstance(kinds, list):
                continue
            self._arrived([k for k in kinds if isinstance(k, str) and k in KINDS],
                          backend if isinstance(backend, str) else None)
