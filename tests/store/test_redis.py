"""What only the Redis store has: configuration checks, wire format, faults, deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.exceptions
from redis.asyncio.cluster import RedisCluster

from tests.support.redis_ha import ClusterSetup
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import TcpProxy
from vmcp.errors import SessionNotFound, StoreError, StoreTimeout, StoreUnavailable
from vmcp.store import MemoryStore, RedisStore, open_store
from vmcp.store._redis_errors import translated_store_errors

pytestmark = pytest.mark.anyio


def make_store(url: str, prefix: str, *, timeout: float = 2.0, ttl: float = 60) -> RedisStore:
    return RedisStore.from_url(url, key_prefix=prefix, ttl_seconds=ttl, timeout_seconds=timeout)


@contextlib.asynccontextmanager
async def proxied_store(server: RedisServer, prefix: str, *, deadline: float
                        ) -> AsyncIterator[tuple[TcpProxy, RedisStore]]:
    """A store that reaches ``server`` through a fault-injecting proxy."""
    async with TcpProxy(server.port) as proxy:
        store = make_store(proxy.url, prefix, timeout=deadline)
        try:
            yield proxy, store
        finally:
            await store.aclose()


@contextlib.asynccontextmanager
async def own_server_store(workdir: Path, prefix: str) -> AsyncIterator[
        tuple[RedisServer, RedisStore]]:
    """A redis-server of the test's own (AOF on, so it can be restarted) and a store."""
    server = RedisServer(workdir, appendonly=True)
    server.start()
    store = make_store(server.url, prefix, timeout=1.0)
    try:
        yield server, store
    finally:
        await store.aclose()
        server.stop()


@pytest.mark.parametrize("prefix", ["vmcp", "vmcp:x", ""])
def test_b6_prefix_must_end_with_colon(prefix: str) -> None:
    with pytest.raises(ValueError, match="end with ':'"):
        make_store("redis://127.0.0.1:1/0", prefix)


@pytest.mark.parametrize("ttl", [0, -1, -0.5])
def test_b6_ttl_must_be_positive(ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl_seconds"):
        make_store("redis://127.0.0.1:1/0", "p:", ttl=ttl)


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout_seconds"):
        make_store("redis://127.0.0.1:1/0", "p:", timeout=0)


def test_unknown_url_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="scheme"):
        open_store("mongodb://x", key_prefix="p:", ttl_seconds=1, timeout_seconds=1)


def test_sentinel_url_needs_a_service_name() -> None:
    with pytest.raises(ValueError, match=r"^redis\+sentinel URL needs a service name: "
                                         r"redis\+sentinel://h:p/name$"):
        open_store("redis+sentinel://127.0.0.1:26379", key_prefix="p:", ttl_seconds=1,
                   timeout_seconds=1)


def test_sentinel_url_builds_a_sentinel_backed_client() -> None:
    sentinel = open_store("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/2",
                          key_prefix="p:", ttl_seconds=1, timeout_seconds=1)
    assert type(sentinel.client).__name__ == "Redis"
    assert type(sentinel.client.connection_pool).__name__ == "SentinelConnectionPool"


def sentinel_pool(url: str) -> Any:
    store = open_store(url, key_prefix="p:", ttl_seconds=1, timeout_seconds=1.5)
    assert isinstance(store, RedisStore)
    return store.client.connection_pool


def test_sentinel_url_names_every_sentinel_the_service_the_db_and_the_password() -> None:
    pool = sentinel_pool("redis+sentinel://:s3cr%40t@h1:26380,h2,:26381/mymaster/2")
    assert pool.service_name == "mymaster"
    sentinels = [(c.connection_pool.connection_kwargs["host"],
                  c.connection_pool.connection_kwargs["port"],
                  c.connection_pool.connection_kwargs["socket_timeout"],
                  c.connection_pool.connection_kwargs["socket_connect_timeout"])
                 for c in pool.sentinel_manager.sentinels]
    assert sentinels == [("h1", 26380, 1.5, 1.5), ("h2", 26379, 1.5, 1.5),
                         ("localhost", 26381, 1.5, 1.5)]
    master = pool.connection_kwargs
    assert (master["password"], master["db"], master["socket_timeout"],
            master["socket_connect_timeout"]) == ("s3cr@t", 2, 1.5, 1.5)


def test_sentinel_url_takes_an_ipv6_sentinel_and_a_password_with_an_at_sign() -> None:
    pool = sentinel_pool("redis+sentinel://:p@ss@[::1]:26380/svc")
    assert [(c.connection_pool.connection_kwargs["host"],
             c.connection_pool.connection_kwargs["port"])
            for c in pool.sentinel_manager.sentinels] == [("::1", 26380)]
    assert pool.connection_kwargs["password"] == "p@ss"


def test_sentinel_url_defaults_to_db_0_and_no_password() -> None:
    pool = sentinel_pool("redis+sentinel://h1/svc")
    assert pool.service_name == "svc"
    assert (pool.connection_kwargs["db"], pool.connection_kwargs.get("password")) == (0, None)
    assert [(c.connection_pool.connection_kwargs["host"],
             c.connection_pool.connection_kwargs["port"])
            for c in pool.sentinel_manager.sentinels] == [("h1", 26379)]


def test_cluster_and_plain_urls_carry_the_per_call_deadline_to_the_client() -> None:
    cluster = open_store("redis+cluster://h9:7001", key_prefix="p:", ttl_seconds=1,
                         timeout_seconds=1.5)
    assert isinstance(cluster, RedisStore)
    nodes = cluster.client.nodes_manager  # type: ignore[union-attr]
    assert [(n.host, n.port) for n in nodes.startup_nodes.values()] == [("h9", 7001)]
    assert (nodes.connection_kwargs["socket_timeout"],
            nodes.connection_kwargs["socket_connect_timeout"]) == (1.5, 1.5)
    for url, where in (("redis://127.0.0.1:6390/3", {"host": "127.0.0.1", "port": 6390}),
                       ("unix:///tmp/r.sock?db=3", {"path": "/tmp/r.sock"})):
        store = open_store(url, key_prefix="q:", ttl_seconds=2.5, timeout_seconds=1.5)
        assert isinstance(store, RedisStore)
        kwargs = store.client.connection_pool.connection_kwargs
        assert {k: kwargs[k] for k in (*where, "db", "socket_timeout",
                                       "socket_connect_timeout")} == {
            **where, "db": 3, "socket_timeout": 1.5, "socket_connect_timeout": 1.5}
        assert store.key("abc") == "q:abc"
        assert (store._ttl_ms, store._timeout) == (2500, 1.5)


def test_memory_url_gives_the_embedded_store_with_its_ttl_and_sweep() -> None:
    store = open_store("memory", key_prefix="ignored:", ttl_seconds=7, timeout_seconds=1,
                       sweep_interval_seconds=3)
    assert isinstance(store, MemoryStore)
    assert (store._ttl, store._sweep_interval) == (7.0, 3.0)
    default = open_store("memory", key_prefix="p:", ttl_seconds=7, timeout_seconds=1)
    assert isinstance(default, MemoryStore)
    assert default._sweep_interval == 30.0


def test_a_ttl_shorter_than_a_millisecond_still_expires_records() -> None:
    store = make_store("redis://127.0.0.1:1/0", "p:", ttl=0.0001)
    assert store._ttl_ms == 1


async def test_records_are_json_under_prefixed_keys(redis_store: RedisStore) -> None:
    await redis_store.create("abc", {"identity": "unauthenticated"})
    raw = await redis_store.client.get(redis_store.key("abc"))
    assert redis_store.key("abc").endswith(":abc")
    assert json.loads(raw) == {"identity": "unauthenticated"}


@pytest.mark.parametrize("garbage", [b"{not json", b"[1,2]", b'{"a": 1}', b"\xff\xfe"])
async def test_corrupt_record_is_reported_as_store_fault(
    redis_store: RedisStore, garbage: bytes
) -> None:
    await redis_store.client.set(redis_store.key("bad"), garbage)
    with pytest.raises(StoreUnavailable, match="corrupt"):
        await redis_store.load("bad")


def test_every_redis_exception_is_translated_to_a_store_error() -> None:
    """Including those that do not derive from RedisError: the Cluster client's
    RedisClusterException ("cannot be connected") once reached clients as a 500."""
    exported = [
        obj for _, obj in inspect.getmembers(redis.exceptions, inspect.isclass)
        if issubclass(obj, Exception)
    ]
    assert len(exported) > 20
    assert redis.exceptions.RedisClusterException in exported
    for exc_type in exported:
        with pytest.raises(StoreError) as caught, translated_store_errors("op"):
            raise exc_type("1 127.0.0.1:1")  # the one message every constructor parses
        assert caught.value.__cause__ is not None
        expected = StoreTimeout if issubclass(exc_type, redis.exceptions.TimeoutError) else (
            StoreUnavailable)
        assert isinstance(caught.value, expected), exc_type


async def test_stopped_server_gives_store_unavailable_then_service_resumes(
    tmp_path: Path, key_prefix: str
) -> None:
    async with own_server_store(tmp_path / "r", key_prefix) as (server, store):
        assert await store.create("s", {"a": "1"})
        server.stop()
        for call in (store.load("s"), store.update("s", {}), store.create("t", {}),
                     store.delete("s"), store.ping()):
            with pytest.raises(StoreError) as caught:
                await call
            assert not isinstance(caught.value, SessionNotFound)
        server.start()
        assert await store.load("s") == {"a": "1"}


async def test_stalled_server_hits_the_per_call_deadline(
    redis_server: RedisServer, key_prefix: str
) -> None:
    async with proxied_store(redis_server, key_prefix, deadline=0.3) as (proxy, store):
        await store.create("s", {})
        proxy.stall()
        with anyio.fail_after(3), pytest.raises(StoreTimeout):
            await store.load("s")
        proxy.resume()
        assert await store.load("s") == {}


async def test_slow_read_does_not_eat_the_next_writes_deadline(
    redis_server: RedisServer, key_prefix: str
) -> None:
    """A read that takes 98% of the deadline, then a write: the write gets its own."""
    async with proxied_store(redis_server, key_prefix, deadline=1.0) as (proxy, store):
        await store.create("s", {"v": "1"})
        proxy.delay_once(0.98)
        assert await store.load("s") == {"v": "1"}
        proxy.delay_once(0.5)
        assert await store.update("s", {"v": "2"}) is True
        assert await store.load("s") == {"v": "2"}


async def test_the_first_call_after_a_restart_succeeds_on_pooled_connections(
    tmp_path: Path, key_prefix: str
) -> None:
    """Every pooled connection died with the old server; none of them fails a call."""
    async with own_server_store(tmp_path / "r", key_prefix) as (server, store):
        await store.create("s", {"a": "1"})
        async with anyio.create_task_group() as tg:   # several connections in the pool
            for _ in range(4):
                tg.start_soon(store.load, "s")
        server.restart()
        assert await store.load("s") == {"a": "1"}
        assert await store.update("s", {"a": "2"}) is True
        server.restart()
        assert await store.create("t", {}) is True
        server.restart()
        await store.delete("s")
        with pytest.raises(SessionNotFound):
            await store.load("s")


async def test_a_create_whose_reply_was_lost_is_not_reported_as_a_conflict(
    redis_server: RedisServer, key_prefix: str
) -> None:
    """SET NX landed, its answer did not: the retry finds our own value, not a rival's."""
    async with proxied_store(redis_server, key_prefix, deadline=2.0) as (proxy, store):
        assert await store.create("warm", {}) is True   # connected, handshake done
        proxy.lose_next_reply()
        assert await store.create("s", {"who": "me"}) is True
        assert proxy.replies_lost == 1
        assert await store.load("s") == {"who": "me"}
        assert await store.create("s", {"who": "me"}) is False   # a real conflict


@pytest.mark.parametrize("operation", ["load", "update", "delete"])
async def test_a_call_whose_reply_was_lost_is_sent_once_more(
    redis_server: RedisServer, key_prefix: str, operation: str
) -> None:
    async with proxied_store(redis_server, key_prefix, deadline=2.0) as (proxy, store):
        await store.create("s", {"v": "1"})
        proxy.lose_next_reply()
        if operation == "load":
            assert await store.load("s") == {"v": "1"}
        elif operation == "update":
            assert await store.update("s", {"v": "2"}) is True
            assert await store.load("s") == {"v": "2"}
        else:
            await store.delete("s")
            with pytest.raises(SessionNotFound):
                await store.load("s")
        assert proxy.replies_lost == 1


async def test_the_retry_stays_within_the_calls_one_deadline(
    redis_server: RedisServer, key_prefix: str
) -> None:
    """The first try loses its reply, the retry meets a stalled server: one deadline."""
    async with proxied_store(redis_server, key_prefix, deadline=0.5) as (proxy, store):
        await store.create("s", {})
        proxy.lose_next_reply()
        proxy.delay_once(0)   # the first try goes through at once
        proxy.delay_once(3)   # the retry's handshake is held past the deadline
        started = anyio.current_time()
        with anyio.fail_after(3), pytest.raises(StoreTimeout):
            await store.load("s")
        assert anyio.current_time() - started < 0.9
        assert proxy.replies_lost == 1


def test_cluster_url_seeds_the_client_with_every_node_it_names() -> None:
    store = open_store("redis+cluster://u:p%40ss@10.0.0.1:7000,[::1]:7001,node3",
                       key_prefix="p:", ttl_seconds=1, timeout_seconds=1)
    client = store.client
    assert isinstance(client, RedisCluster)
    seeds = sorted(client.nodes_manager.startup_nodes)
    assert seeds == sorted(["10.0.0.1:7000", "::1:7001", "node3:6379"])
    assert client.nodes_manager.connection_kwargs["password"] == "p@ss"


@pytest.mark.slow
async def test_concurrent_first_calls_on_a_fresh_cluster_client_all_succeed(
    redis_cluster: ClusterSetup, key_prefix: str
) -> None:
    """A replica that starts under load: its first calls arrive together, before its
    client knows the cluster. redis-py alone failed about one such burst in six, some
    with an AttributeError; 30 bursts all pass."""
    for burst in range(30):
        # What is tested is that every call succeeds, not how fast: a deadline generous
        # enough for a loaded machine, so only a wrong answer fails the test.
        store = make_store(redis_cluster.url, f"{key_prefix}{burst}:", timeout=15.0)
        try:
            created = await asyncio.gather(*(store.create(f"s{n}", {}) for n in range(50)))
            assert created == [True] * 50, burst
        finally:
            await store.aclose()
