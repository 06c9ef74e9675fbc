"""``SessionStore`` on Redis (or Valkey): standalone, Sentinel or Cluster."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from vmcp.errors import SessionNotFound, StoreUnavailable
from vmcp.store._redis_errors import (
    connection_options,
    once_more_if_dropped,
    translated_store_errors,
)
from vmcp.store.base import (
    ClosedOnExit,
    Merged,
    shows_own_write,
    validate_metadata,
    validate_session_id,
    validate_timeout,
    validate_ttl,
)

SENTINEL_SCHEME = "redis+sentinel"

# KEYS[1]: the record's key. ARGV[1]: JSON object of fields to set; ARGV[2]: JSON array
# of keys to drop; ARGV[3]: JSON object of expectations (a value, or false: absent);
# ARGV[4]: the TTL in ms. Returns {0} (absent), {1, new record} (written) or
# {2, record as it is} (an expectation failed).
_MERGE = """
local raw = redis.call('GET', KEYS[1])
if not raw then return {0} end
local record = cjson.decode(raw)
for key, value in pairs(cjson.decode(ARGV[3])) do
  local current = record[key]
  if value == false then
    if current ~= nil then return {2, raw} end
  elseif current ~= value then
    return {2, raw}
  end
end
for _, key in ipairs(cjson.decode(ARGV[2])) do record[key] = nil end
for key, value in pairs(cjson.decode(ARGV[1])) do record[key] = value end
local written = cjson.encode(record)
redis.call('SET', KEYS[1], written, 'PX', ARGV[4])
return {1, written}
"""
CLUSTER_SCHEME = "redis+cluster"


class RedisStore(ClosedOnExit):
    """Session records as JSON strings under ``prefix + id``, each with a sliding TTL.

    Every contract operation is one Redis command, so each is atomic on the server:
    ``SET NX PX`` (create), ``SET XX PX`` (update), ``GETEX PX`` (load, which also slides
    the TTL) and ``DEL``. Milliseconds rather than seconds so tests can use short TTLs.

    Each call runs under its own ``asyncio.timeout``: a slow load cannot shorten the
    deadline of the write that follows it. A call whose connection died with an old
    server (Redis restarted, a Sentinel or Cluster failover) is sent once more on a fresh
    connection within that same deadline, so the first request after a restart does not
    fail; ``create`` makes sure that a retry never reports its own landed write as a
    conflict.
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
        self._merge = client.register_script(_MERGE)

    @classmethod
    def from_url(
        cls, url: str, *, key_prefix: str, ttl_seconds: float, timeout_seconds: float
    ) -> RedisStore:
        """Build a store from ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``
        (``host:port[,host:port]/service[/db]``) or ``redis+cluster://host:port[,host:port]``
        (several seed nodes: any one reachable is enough to find the others)."""
        connection = connection_options(validate_timeout(timeout_seconds))
        scheme = urlsplit(url).scheme
        client: aioredis.Redis | RedisCluster
        if scheme == SENTINEL_SCHEME:
            client = _sentinel_client(url, connection)
        elif scheme == CLUSTER_SCHEME:
            client = _cluster_client(url, connection)
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

    async def create(self, session_id: str, metadata: Mapping[str, str]) -> bool:
        key = self.key(validate_session_id(session_id))
        payload = json.dumps(validate_metadata(metadata), separators=(",", ":"))
        value = payload.encode()

        async def attempt(retried: bool) -> bool:
            if not retried:
                return bool(await self._client.set(key, value, px=self._ttl_ms, nx=True))
            # The first try may have landed with its reply lost. SET NX GET (Redis 7.0+,
            # Valkey) tells: the key holding exactly our value is our write (ids are
            # random, so no other writer creates this key, let alone with our bytes, in
            # that window). Older servers refuse NX with GET: a 503, never a false "taken".
            before = await self._client.set(key, value, px=self._ttl_ms, nx=True, get=True)
            return before is None or before == value

        with translated_store_errors("create"):
            async with asyncio.timeout(self._timeout):
                return await once_more_if_dropped(attempt)

    async def update(self, session_id: str, metadata: Mapping[str, str]) -> bool:
        key = self.key(validate_session_id(session_id))
        payload = json.dumps(validate_metadata(metadata), separators=(",", ":"))

        async def attempt(retried: bool) -> bool:  # the same value again: safe to repeat
            return bool(await self._client.set(key, payload, px=self._ttl_ms, xx=True))

        with translated_store_errors("update"):
            async with asyncio.timeout(self._timeout):
                return await once_more_if_dropped(attempt)

    async def merge(self, session_id: str, fields: Mapping[str, str], *,
                    remove: Collection[str] = (),
                    expect: Mapping[str, str | None] | None = None) -> Merged:
        """One Lua script (``_MERGE``): the read, the checks and the write are one step
        on the server, so no other replica's change lands between them."""
        key = self.key(validate_session_id(session_id))
        changes = validate_metadata(fields)
        dropped = sorted(remove)
        expected = {k: (False if v is None else v) for k, v in (expect or {}).items()}
        args: list[str | int] = [json.dumps(changes), json.dumps(dropped),
                                 json.dumps(expected), self._ttl_ms]

        async def attempt(retried: bool) -> Merged:
            reply = await self._merge(keys=[key], args=args)
            if int(reply[0]) == 0:
                return Merged(applied=False, record=None)
            record = _decode_record(session_id, reply[1])
            if int(reply[0]) == 1:
                return Merged(applied=True, record=record)
            # A retry whose first try landed (reply lost) finds its own write in place.
            return Merged(applied=retried and shows_own_write(record, changes, dropped),
                          record=record)

        with translated_store_errors("merge"):
            async with asyncio.timeout(self._timeout):
                return await once_more_if_dropped(attempt)

    async def load(self, session_id: str) -> dict[str, str]:
        key = self.key(validate_session_id(session_id))

        async def attempt(retried: bool) -> Any:
            return await self._client.getex(key, px=self._ttl_ms)

        with translated_store_errors("load"):
            async with asyncio.timeout(self._timeout):
                raw = await once_more_if_dropped(attempt)
        if raw is None:
            raise SessionNotFound(session_id)
        return _decode_record(session_id, raw)

    async def delete(self, session_id: str) -> None:
        key = self.key(validate_session_id(session_id))

        async def attempt(retried: bool) -> Any:
            return await self._client.delete(key)

        with translated_store_errors("delete"):
            async with asyncio.timeout(self._timeout):
                await once_more_if_dropped(attempt)

    async def ping(self) -> None:

        async def attempt(retried: bool) -> Any:
            return await self._client.ping()

        with translated_store_errors("ping"):
            async with asyncio.timeout(self._timeout):
                await once_more_if_dropped(attempt)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._client.aclose()
        if isinstance(self._client, RedisCluster):
            # The seed nodes keep connections of their own, from discovering the cluster.
            await self._client.nodes_manager.aclose("startup_nodes")
        elif isinstance(pool := self._client.connection_pool, SentinelConnectionPool):
            for sentinel in pool.sentinel_manager.sentinels:
                await sentinel.aclose()


def _decode_record(session_id: str, raw: bytes | str) -> dict[str, str]:
    """Parse a stored record; a corrupt one is a store fault, never a crash or a 404."""
    try:
        value = json.loads(raw)
        return validate_metadata(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreUnavailable(f"corrupt record for session {session_id!r}: {exc}") from exc


def _sentinel_client(url: str, connection: dict[str, Any]) -> aioredis.Redis:
    parts = urlsplit(url)
    hosts = _hosts(parts.netloc, default_port=26379)
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("redis+sentinel URL needs a service name: redis+sentinel://h:p/name")
    db = int(path[1]) if len(path) > 1 else 0
    password = unquote(parts.password) if parts.password else None
    # The sentinels are asked with the same short deadlines and no retry of their own: a
    # sentinel that is down must not hold a call past its deadline; the next is asked.
    sentinel = Sentinel(hosts, password=password, db=db,  # type: ignore[no-untyped-call]
                        sentinel_kwargs=dict(connection), **connection)
    master: aioredis.Redis = sentinel.master_for(path[0])
    return master


def _cluster_client(url: str, connection: dict[str, Any]) -> RedisCluster:
    """A Cluster client seeded with every node the URL names.

    One seed is a single point of failure at start-up and whenever the client must
    rediscover the cluster (redis-py adds the nodes it discovers to its seeds, but a
    client that starts while the named node is down has nothing else). The client's own
    retry loop is off for the reason given in ``_redis_errors``: our single retry
    refreshes the slot map, which redis-py marks stale on a connection error.
    """
    parts = urlsplit(url)
    seeds = [ClusterNode(host, port) for host, port in _hosts(parts.netloc, default_port=6379)]
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return _ClusterClient(startup_nodes=seeds, username=username, password=password,
                          **connection)


class _ClusterClient(RedisCluster):
    """redis-py's Cluster client, made to learn the cluster before it routes a command.

    redis-py 8.1 chooses a command's routing before it learns the cluster: commands that
    arrive together at a client that has no slot map yet (just created, or after a
    failed refresh dropped the map) are routed as if keyless, bounce, and refresh the
    map under each other, sharing connections that another task disconnects; a few
    fail with ``AttributeError`` (a 500 before this) or a dropped connection. 50
    concurrent commands on a fresh client failed that way about once in six. Learning
    the map first (``initialize``, a no-op once it is known) removes it.
    """

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        await self.initialize()
        return await super().execute_command(*args, **kwargs)


def _hosts(netloc: str, *, default_port: int) -> list[tuple[str, int]]:
    """``host[:port]`` items of a comma-separated netloc (after any ``user:pass@``)."""
    found = []
    for item in netloc.rpartition("@")[2].split(","):
        if item.startswith("["):  # [IPv6]:port
            host, _, after = item[1:].partition("]")
            port = after.lstrip(":")
        elif ":" in item:
            host, _, port = item.rpartition(":")
        else:
            host, port = item, ""
        found.append((host or "localhost", int(port) if port else default_port))
    return found
