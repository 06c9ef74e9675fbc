"""One deadline per store call, on the path that loads and writes under a backend call.

A backend that forgot its session answers a call with 404; the connection re-initializes
and records the backend's new session id in the store (``record_backend_state``: one
load, then one set-if-present write) before the call is retried. Here the store is a
real Redis behind a delaying proxy and the backend a real MCP server over HTTP: a slow
load must not eat the write's budget, and a stalled store must end in the store's own
error, not hang the call.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import httpx2
import pytest

from tests.support.recording_backend import RecordingBackend
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import TcpProxy
from vmcp.config import VmcpConfig
from vmcp.errors import StoreError, StoreTimeout
from vmcp.identity import ANONYMOUS
from vmcp.session import SessionManager
from vmcp.session import metadata as md
from vmcp.session.connector import BackendConnector
from vmcp.session.multisession import MultiSession
from vmcp.store import RedisStore

pytestmark = pytest.mark.anyio

DEADLINE = 2.0       # each store call's own deadline
SLOW = 1.2           # two calls this slow fit their own deadlines, but not one shared
BACKEND = "rec"
ECHO = {"name": "echo", "arguments": {"text": "still here"}}


@dataclass
class Rig:
    proxy: TcpProxy
    store: RedisStore
    manager: SessionManager
    backend: RecordingBackend
    http: httpx2.AsyncClient

    async def open_session(self) -> MultiSession:
        """A session with its upstream session on the backend opened (by a first call)."""
        live = await self.manager.initialize(ANONYMOUS)
        assert isinstance(live, MultiSession)
        await live.call(BACKEND, "tools/call", ECHO, None)
        return live

    async def backend_forgets(self, live: MultiSession) -> str:
        """End the backend's own session behind the gateway's back (as a restart would);
        returns the state that was stored for it."""
        stored = (await self.store.load(live.session_id))[md.backend_state_key(BACKEND)]
        state = json.loads(stored)
        response = await self.http.delete(self.backend.url, headers={
            "mcp-session-id": state["session_id"],
            "mcp-protocol-version": state["protocol_version"]})
        assert response.status_code == 200
        return stored


@pytest.fixture
async def rig(redis_server: RedisServer, key_prefix: str) -> AsyncIterator[Rig]:
    with RecordingBackend() as backend:
        async with TcpProxy(redis_server.port) as proxy, httpx2.AsyncClient() as http:
            store = RedisStore.from_url(proxy.url, key_prefix=key_prefix, ttl_seconds=60,
                                        timeout_seconds=DEADLINE)
            config = VmcpConfig.model_validate(
                {"backends": [{"name": BACKEND, "url": backend.url}]})
            connector = BackendConnector(
                config, http, store=store)
            manager = SessionManager(store, connector)
            try:
                yield Rig(proxy, store, manager, backend, http)
            finally:
                proxy.resume()
                await manager.aclose()
                await store.aclose()


async def test_a_slow_load_leaves_the_write_its_own_deadline_after_a_reinitialize(
    rig: Rig,
) -> None:
    live = await rig.open_session()
    old = await rig.backend_forgets(live)
    rig.proxy.delay_once(SLOW)    # record_backend_state's load
    rig.proxy.delay_once(SLOW)    # ... and its write: together longer than one deadline
    with anyio.fail_after(DEADLINE * 2 + 5):
        result = await live.call(BACKEND, "tools/call", ECHO, None)
    assert result["content"][0]["text"] == "still here"
    assert rig.proxy.pending_delays == 0
    connection = await live.connection(BACKEND)
    assert connection.statistics().reinitializations == 1
    stored = (await rig.store.load(live.session_id))[md.backend_state_key(BACKEND)]
    assert stored == connection.state.to_json()
    assert stored != old


async def test_a_stalled_store_under_a_reinitialize_ends_in_the_store_error_not_a_hang(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    live = await rig.open_session()
    old = await rig.backend_forgets(live)
    rig.proxy.stall()
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="vmcp.backend.base"), \
            anyio.fail_after(DEADLINE * 2 + 5):
        result = await live.call(BACKEND, "tools/call", ECHO, None)
    assert result["content"][0]["text"] == "still here"   # the call is served regardless
    assert time.monotonic() - started < DEADLINE * 2 + 2
    failures = [r for r in caplog.records if "on_reinitialized hook failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    error = failures[0].exc_info[1]
    assert isinstance(error, StoreTimeout)
    assert error.http_status == 503

    # Asked directly, the same stalled write answers the store's error within its bound.
    with anyio.fail_after(DEADLINE * 2 + 2), pytest.raises(StoreError) as direct:
        await md.record_backend_state(rig.store, live.session_id, BACKEND, "x")
    assert direct.value.http_status == 503
    rig.proxy.resume()
    assert (await rig.store.load(live.session_id))[md.backend_state_key(BACKEND)] == old
