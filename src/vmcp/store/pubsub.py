"""Telling every replica at once what it should know now (Redis pub/sub): a session
ended, a message for a session, a change to what clients can list.

Without the ended-session broadcast, a replica that holds an ended session finds out at
the session's next request there (its liveness check) or when LRU pressure evicts it;
meanwhile it keeps backend sessions open. A broadcast closes them promptly. It is an
optimisation only: a lost message leaves correctness to the per-request check.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import anyio
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from vmcp.errors import InvalidSessionId
from vmcp.store._redis_errors import once_more_if_dropped, translated_store_errors
from vmcp.store.base import validate_session_id

logger = logging.getLogger(__name__)

RECONNECT_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)


async def new_pubsub(client: aioredis.Redis | RedisCluster, *, after_loss: bool = False
                     ) -> Any:
    """A pub/sub object on ``client``.

    A Cluster client picks the pub/sub's node from its slot map, which it fills only on
    its first command (before that, redis-py fails with a bare ``KeyError``) and marks
    stale only when a command fails, not when a pub/sub connection does. So the map is
    filled first, and read again from the cluster ``after_loss`` of a pub/sub connection:
    otherwise the new pub/sub would dial the node that failed over.
    """
    if isinstance(client, RedisCluster):
        if after_loss:
            await client.nodes_manager.initialize()
        else:
            await client.initialize()
    return client.pubsub()


class EndedSessionBus(Protocol):
    """Broadcasts the ids of ended sessions to every replica (including the sender)."""

    async def publish(self, session_id: str) -> None:
        """Announce that ``session_id`` ended; raises ``StoreError`` if it cannot."""
        ...

    def subscribe(self) -> AsyncIterator[str]:
        """Ids announced by any replica, for as long as the iterator is consumed."""
        ...


class RedisEndedSessionBus:
    """``EndedSessionBus`` on one Redis pub/sub channel; resubscribes after outages.

    Each outage gets a new pub/sub object rather than a reconnect of the old one: on
    Cluster the old one is tied to a node that may be gone for good after a failover,
    while a new one asks the client's current map for a node. Classic (not sharded)
    pub/sub: Cluster carries a ``PUBLISH`` to every node, so any node serves.
    """

    def __init__(self, client: aioredis.Redis | RedisCluster, channel: str,
                 *, timeout_seconds: float) -> None:
        self._client = client
        self._channel = channel
        self._timeout = timeout_seconds

    async def publish(self, session_id: str) -> None:
        validate_session_id(session_id)

        async def attempt(retried: bool) -> Any:  # a second announcement is harmless
            return await self._client.publish(self._channel, session_id)

        with translated_store_errors("publish"), anyio.fail_after(self._timeout):
            await once_more_if_dropped(attempt)

    async def subscribe(self) -> AsyncIterator[str]:
        attempt = 0
        while True:
            try:
                async for session_id in self._listen_once(after_loss=attempt > 0):
                    attempt = 0
                    yield session_id
            except Exception as exc:
                delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
                attempt += 1
                logger.warning("ended-session channel lost (%s); again in %.1fs", exc, delay)
                await anyio.sleep(delay)

    async def _listen_once(self, *, after_loss: bool) -> AsyncIterator[str]:
        pubsub = await new_pubsub(self._client, after_loss=after_loss)
        try:
            await pubsub.subscribe(self._channel)
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                data = message.get("data")
                value = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
                try:
                    yield validate_session_id(value)
                except InvalidSessionId:
                    logger.warning("ignored a malformed id on the ended-session channel")
        finally:
            with anyio.CancelScope(shield=True):
                await pubsub.aclose()


async def _resubscribing(client: aioredis.Redis | RedisCluster, channel: str,
                         what: str) -> AsyncIterator[str]:
    """Every message on ``channel``, subscribing again (with backoff, on a new connection)
    after an outage; what was published meanwhile is lost, so channels carry only hints."""
    attempt = 0
    while True:
        try:
            pubsub = await new_pubsub(client, after_loss=attempt > 0)
            try:
                await pubsub.subscribe(channel)
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    attempt = 0
                    data = message.get("data")
                    yield data.decode(errors="replace") if isinstance(data, bytes) else str(data)
            finally:
                with anyio.CancelScope(shield=True):
                    await pubsub.aclose()
        except Exception as exc:
            delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
            attempt += 1
            logger.warning("%s channel lost (%s); again in %.1fs", what, exc, delay)
            await anyio.sleep(delay)


class ChangeChannel(Protocol):
    """Changes to what clients can list, between replicas: whichever replica sees a change
    (a backend's ``list_changed``, a reload, a health turn) tells the others, whose
    subscribed clients hear it too."""

    async def publish(self, payload: dict[str, Any]) -> None:
        """Send ``payload`` (JSON) to every replica, the sender included."""
        ...

    def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """Payloads from any replica, for as long as the iterator is consumed."""
        ...


class RedisChangeChannel:
    """``ChangeChannel`` on one Redis pub/sub channel; resubscribes after outages."""

    def __init__(self, client: aioredis.Redis | RedisCluster, channel: str,
                 *, timeout_seconds: float) -> None:
        self._client = client
        self._channel = channel
        self._timeout = timeout_seconds

    async def publish(self, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, separators=(",", ":"))
        with translated_store_errors("publish"), anyio.fail_after(self._timeout):
            await self._client.publish(self._channel, data)

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        async for value in _resubscribing(self._client, self._channel, "change"):
            try:
                payload = json.loads(value)
            except ValueError:
                payload = None
            if isinstance(payload, dict):
                yield payload
            else:
                logger.warning("ignored a malformed message on the change channel")


RelayHandler = Callable[[dict[str, Any]], None]


class SessionRelay(Protocol):
    """Messages for one session between replicas: whichever replica holds the client's
    stream, or the call waiting for the client's answer, receives what another replica
    was sent for that session."""

    async def publish(self, session_id: str, payload: dict[str, Any]) -> int:
        """Send ``payload`` (JSON) to every replica listening to ``session_id``; returns
        how many listen (this replica included, if it does)."""
        ...

    def listen(self, session_id: str,
               handler: RelayHandler) -> contextlib.AbstractAsyncContextManager[None]:
        """Call ``handler`` with each payload for ``session_id`` while the context is open.

        The subscription is active when the context has been entered: nothing published
        after that is missed (short of a connection loss).
        """
        ...


class RedisSessionRelay:
    """``SessionRelay`` over one pub/sub connection per replica, one channel per session.

    Channels are subscribed while at least one local listener needs them, so the cost
    is one connection per replica, not per session. When that connection is lost, ``run``
    builds a new one and subscribes it to every channel still needed, retrying with
    backoff while the store is down (a new one, for the reason ``RedisEndedSessionBus``
    gives). Messages published meanwhile are lost, like any pub/sub message.
    """

    def __init__(self, client: aioredis.Redis | RedisCluster, prefix: str,
                 *, timeout_seconds: float) -> None:
        self._client = client
        self._prefix = prefix
        self._timeout = timeout_seconds
        self._handlers: dict[str, list[RelayHandler]] = {}
        self._confirmed: dict[str, anyio.Event] = {}
        self._pubsub: Any = None
        self._lost = False
        self._lock = anyio.Lock()
        self.published = 0
        self.delivered = 0

    def _channel(self, session_id: str) -> str:
        return self._prefix + validate_session_id(session_id)

    async def publish(self, session_id: str, payload: dict[str, Any]) -> int:
        data = json.dumps(payload, separators=(",", ":"))
        with translated_store_errors("publish"), anyio.fail_after(self._timeout):
            receivers = await self._client.publish(self._channel(session_id), data)
        self.published += 1
        return int(receivers)

    @contextlib.asynccontextmanager
    async def listen(self, session_id: str, handler: RelayHandler) -> AsyncIterator[None]:
        channel = self._channel(session_id)
        handlers = self._handlers.setdefault(channel, [])
        handlers.append(handler)
        try:
            if len(handlers) == 1:
                confirmed = self._confirmed[channel] = anyio.Event()
                async with self._lock:
                    with translated_store_errors("subscribe"), anyio.fail_after(self._timeout):
                        await (await self._ensure_pubsub()).subscribe(channel)
            else:
                confirmed = self._confirmed[channel]
            with anyio.fail_after(self._timeout):
                await confirmed.wait()
            yield
        finally:
            handlers.remove(handler)
            if not handlers:
                del self._handlers[channel]
                self._confirmed.pop(channel, None)
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    async with self._lock:
                        await (await self._ensure_pubsub()).unsubscribe(channel)

    async def _ensure_pubsub(self, *, after_loss: bool = False) -> Any:
        if self._pubsub is None:
            self._pubsub = await new_pubsub(self._client, after_loss=after_loss)
        return self._pubsub

    async def run(self) -> None:
        """Deliver incoming payloads to local handlers; a lifespan task, until cancelled."""
        attempt = 0
        while True:
            if self._lost:
                try:
                    await self._resubscribe()
                except Exception as exc:
                    delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
                    attempt += 1
                    logger.warning("session relay: resubscribing failed (%s); again in %.1fs",
                                   exc, delay)
                    await anyio.sleep(delay)
                    continue
                self._lost = False
                attempt = 0
            pubsub = self._pubsub
            if pubsub is None or not pubsub.subscribed:
                await anyio.sleep(0.05)
                continue
            try:
                message = await pubsub.get_message(timeout=1.0)
            except Exception as exc:
                logger.warning("session relay connection lost: %s", exc)
                self._lost = True
                continue
            if message is not None:
                self._dispatch(message)

    async def _resubscribe(self) -> None:
        """Replace the pub/sub connection with a new one on every channel still needed."""
        async with self._lock:
            old, self._pubsub = self._pubsub, None
            if old is not None:
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await old.aclose()
            channels = list(self._handlers)
            if channels:
                with translated_store_errors("subscribe"), anyio.fail_after(self._timeout):
                    await (await self._ensure_pubsub(after_loss=True)).subscribe(*channels)

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel = message.get("channel")
        if isinstance(channel, bytes):
            channel = channel.decode()
        kind = message.get("type")
        if kind == "subscribe":
            event = self._confirmed.get(channel or "")
            if event is not None:
                event.set()
            return
        if kind != "message":
            return
        try:
            payload = json.loads(message["data"])
        except (ValueError, TypeError):
            logger.warning("ignored a malformed relay message")
            return
        for handler in list(self._handlers.get(channel or "", ())):
            self.delivered += 1
            try:
                handler(payload)
            except Exception:
                # One session's handler must never end the relay every session shares
                # (and with it the replica's lifespan).
                logger.exception("a relay message's handler failed")

    async def aclose(self) -> None:
        if self._pubsub is not None:
            with anyio.CancelScope(shield=True):
                await self._pubsub.aclose()
            self._pubsub = None
