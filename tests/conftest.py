"""Fixtures shared by every test: the anyio backend and one real redis-server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.redis_server import RedisServer
from vmcp.store import RedisStore


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole run; tests isolate themselves by key prefix."""
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def key_prefix() -> str:
    return f"test:{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def redis_store(redis_server: RedisServer, key_prefix: str) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(
        redis_server.url, key_prefix=key_prefix, ttl_seconds=60, timeout_seconds=2.0
    )
    yield store
    await store.aclose()
