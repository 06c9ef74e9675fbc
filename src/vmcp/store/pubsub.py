"""Telling every replica at once that a session has ended (Redis pub/sub).

Without it, a replica that holds an ended session finds out at the session's next request
there (its liveness check) or when LRU pressure evicts it; meanwhile it keeps backend
sessions open. A broadcast closes them promptly. It is an optimisation only: a lost
message leaves correctness to the per-request check.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Protocol

import anyio
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from vmcp.errors import InvalidSessionId
from vmcp.store._redis_errors import translated_store_errors
from vmcp.store.base import validate_session_id

logger = logging.getLogger(__name__)

RECONNECT_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)


class EndedSessionBus(Protocol):
    """Broadcasts the ids of ended sessions to every replica (including the sender)."""

    async def publish(self, session_id: str) -> None:
        """Announce that ``session_id`` ended; raises ``StoreError`` if it cannot."""
        ...

    def subscribe(self) -> AsyncIterator[str]:
        """Ids announced by any replica, for as long as the iterator is consumed."""
        ...


class RedisEndedSessionBus:
    """``EndedSessionBus`` on one Redis pub/sub channel; resubscribes after outages."""

    def __init__(self, client: aioredis.Redis | RedisCluster, channel: str,
                 *, timeout_seconds: float) -> None:
        self._client = client
        self._channel = channel
        self._timeout = timeout_seconds

    async def publish(self, session_id: str) -> None:
        validate_session_id(session_id)
        with translated_store_errors("publish"):
            with anyio.fail_after(self._timeout):
                await self._client.publish(self._channel, session_id)

    async def subscribe(self) -> AsyncIterator[str]:
        attempt = 0
        while True:
            try:
                async for session_id in self._listen_once():
                    attempt = 0
                    yield session_id
            except Exception as exc:
                delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
                attempt += 1
                logger.warning("ended-session channel lost (%s); again in %.1fs", exc, delay)
                await anyio.sleep(delay)

    async def _listen_once(self) -> AsyncIterator[str]:
        pubsub = self._client.pubsub()
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
                await pubsub.aclose()  # type: ignore[no-untyped-call]
