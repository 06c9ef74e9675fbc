"""``SessionStore`` on Redis (or Valkey): standalone, Sentinel or Cluster."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

from vmcp.errors import SessionNotFound, StoreUnavailable
from vmcp.store._redis_errors import translated_store_errors
from vmcp.store.base import (
    validate_metadata,
    validate_session_id,
    validate_timeout,
    validate_ttl,
)

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"


class RedisStore:
    """Session records as JSON strings under ``prefix + id``, each with a sliding TTL.

    Every contract operation is one Redis command, so each is atomic on the server:
    ``SET NX PX`` (create), ``SET XX PX`` (update), ``GETEX PX`` (load, which also slides
    the TTL) and ``DEL``. Milliseconds rather than seconds so tests can use short TTLs.

    Each call runs under its own ``asyncio.timeout``: a slow load cannot shorten the
    deadline of the write that follows it.
    """

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        *,
        key_prefix: str,
        ttl_seconds: float,
        timeout_seconds: float,
    ) -> None:
        if not key_prefix.endswith(":"):
            raise ValueError(f"key_prefix must end with ':', got {key_prefix!r}")
        self._client = client
        self._prefix = key_prefix
        self._ttl_ms = max(1, round(validate_ttl(ttl_seconds) * 1000))
        self._timeout = validate_timeout(timeout_seconds)
        self._closed = False

    @classmethod
    def from_url(
        cls, url: str, *, key_prefix: str, ttl_seconds: float, timeout_seconds: float
    ) -> RedisStore:
        """Build a store from ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``
        (``host:port[,host:port]/service[/db]``) or ``redis+cluster://host:port``."""
        validate_timeout(timeout_seconds)
        connection: dict[str, Any] = {
            "socket_timeout": timeout_seconds,
            "socket_connect_timeout": timeout_seconds,
        }
        scheme = urlsplit(url).scheme
        client: aioredis.Redis | RedisCluster
        if scheme == SENTINEL_SCHEME:
            client = _sentinel_client(url, connection)
        elif scheme == CLUSTER_SCHEME:
            client = RedisCluster.from_url("redis://" + url.split("://", 1)[1], **connection)
        elif scheme in ("redis", "rediss", "unix"):
            client = aioredis.Redis.from_url(url, **connection)
        else:
            raise ValueError(f"unsupported store URL scheme {scheme!r}")
        return cls(client, key_prefix=key_prefix, ttl_seconds=ttl_seconds,
                   timeout_seconds=timeout_seconds)

    @property
    def client(self) -> aioredis.Redis | RedisCluster:
        """The underlying client, shared with pub/sub users of the same server."""
        return self._client

    def key(self, session_id: str) -> str:
        return self._prefix + session_id

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def create(self, session_id: str, metadata: Mapping[str, str]) -> bool:
        key = self.key(validate_session_id(session_id))
        payload = json.dumps(validate_metadata(metadata), separators=(",", ":"))
        with translated_store_errors("create"):
            async with asyncio.timeout(self._timeout):
                created = await self._client.set(key, payload, px=self._ttl_ms, nx=True)
        return bool(created)

    async def update(self, session_id: str, metadata: Mapping[str, str]) -> bool:
        key = self.key(validate_session_id(session_id))
        payload = json.dumps(validate_metadata(metadata), separators=(",", ":"))
        with translated_store_errors("update"):
            async with asyncio.timeout(self._timeout):
                updated = await self._client.set(key, payload, px=self._ttl_ms, xx=True)
        return bool(updated)

    async def load(self, session_id: str) -> dict[str, str]:
        key = self.key(validate_session_id(session_id))
        with translated_store_errors("load"):
            async with asyncio.timeout(self._timeout):
                raw = await self._client.getex(key, px=self._ttl_ms)
        if raw is None:
            raise SessionNotFound(session_id)
        return _decode_record(session_id, raw)

    async def delete(self, session_id: str) -> None:
        key = self.key(validate_session_id(session_id))
        with translated_store_errors("delete"):
            async with asyncio.timeout(self._timeout):
                await self._client.delete(key)

    async def ping(self) -> None:
        with translated_store_errors("ping"):
            async with asyncio.timeout(self._timeout):
                await self._client.ping()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._client.aclose()


def _decode_record(session_id: str, raw: bytes | str) -> dict[str, str]:
    """Parse a stored record; a corrupt one is a store fault, never a crash or a 404."""
    try:
        value = json.loads(raw)
        return validate_metadata(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreUnavailable(f"corrupt record for session {session_id!r}: {exc}") from exc


def _sentinel_client(url: str, connection: dict[str, Any]) -> aioredis.Redis:
    parts = urlsplit(url)
    hosts = []
    for item in parts.netloc.rsplit("@", 1)[-1].split(","):
        host, colon, port = item.rpartition(":")
        if not colon:  # a host without a port
            host, port = item, ""
        hosts.append((host or "localhost", int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("redis+sentinel URL needs a service name: redis+sentinel://h:p/name")
    db = int(path[1]) if len(path) > 1 else 0
    password = unquote(parts.password) if parts.password else None
    sentinel = Sentinel(hosts, password=password, db=db, **connection)  # type: ignore[no-untyped-call]
    master: aioredis.Redis = sentinel.master_for(path[0])
    return master
