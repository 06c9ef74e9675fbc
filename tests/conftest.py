"""Fixtures shared by every test: the anyio backend, one real redis-server, and (started
only when a test asks for them) Redis Sentinel and Redis Cluster setups.

``any_store`` is the store a scale-out behaviour test runs on: parametrized over a
standalone server, Sentinel and Cluster. The setups are shared by the whole run; tests
isolate themselves by key prefix, and a test that kills a store's master starts its own.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.redis_ha import (
    STORE_FIXTURES,
    STORE_KINDS,
    ClusterSetup,
    SentinelSetup,
    StoreServer,
    running,
)
from tests.support.redis_server import RedisServer
from vmcp.store import RedisStore


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def signal_handlers_restored() -> Iterator[None]:
    """Put back SIGTERM/SIGINT handlers a test left installed.

    uvicorn serving on the main thread installs its own handlers and restores the ones it
    found; two servers stopped out of order leave the first one's bound ``handle_exit``
    in place. sse-starlette (under the SDK's servers) finds that server through the
    handler, sees it exiting, and ends every later event stream in the process at once.
    """
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        if signal.getsignal(signum) is not handler:
            signal.signal(signum, handler)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole run; tests isolate themselves by key prefix."""
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    """A master, a replica and three sentinels, for the whole run once a test asks."""
    with running(SentinelSetup(Path(tmp_path_factory.mktemp("sentinel")))) as setup:
        yield setup


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSetup]:
    """Six Cluster nodes (three masters with a replica each), once a test asks."""
    with running(ClusterSetup(Path(tmp_path_factory.mktemp("redis-cluster")))) as setup:
        yield setup


@pytest.fixture(params=STORE_KINDS)
def any_store(request: pytest.FixtureRequest) -> StoreServer:
    """The shared store of each kind in turn: standalone, Sentinel, Cluster."""
    store: StoreServer = request.getfixturevalue(STORE_FIXTURES[request.param])
    return store


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
