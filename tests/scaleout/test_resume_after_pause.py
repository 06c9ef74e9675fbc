"""A stream the server ends on purpose (a pause) and the client resumes at once elsewhere.

When a backend closes its SSE stream mid-call, the replica mirrors it: it ends the
client's response with a ``retry`` hint, and the client resumes with ``GET`` and
``Last-Event-ID``, through the balancer, on any replica. That replica can only serve the
resume from the event log, so the stream must be in the log before the paused response
ends; otherwise the resume finds nothing, is served as a plain listening stream and never
carries the call's reply.

Replica A reaches Redis through a proxy the test stalls while the pause happens (A serves
its cached session without a store check); the stall lasts until replica B has decided
how to serve the resume, or a second at most.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.to_thread
import httpx2
import pytest

from tests.support.mcp_http import (
    BASE_HEADERS,
    PROTOCOL_VERSION,
    initialize_body,
    is_reply_to,
    sse_events,
)
from tests.support.processes import (
    CONFORMANCE_MODULE,
    gateway_config,
    running_backends,
    start_gateways,
)
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ANSWER_BOUND_SECONDS = 10.0
LONGEST_STALL_SECONDS = 1.0
TOOL = "test_reconnection"  # drops its SSE stream mid-call, answers after the resume
DONE = "Reconnection test completed successfully"
CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": TOOL, "arguments": {}}}


def _headers(session_id: str, accept: str | None = None) -> dict[str, str]:
    return {**BASE_HEADERS, "Mcp-Session-Id": session_id,
            "MCP-Protocol-Version": PROTOCOL_VERSION, **({"Accept": accept} if accept else {})}


@contextlib.asynccontextmanager
async def _two_replicas(redis_server: RedisServer, tmp_path: Path, *,
                        store_timeout_a: float) -> AsyncIterator[tuple[TcpProxy, str, str]]:
    """Replica A (its store behind a proxy, its cached sessions served without a store
    check for a while) and replica B, in front of the conformance fixture."""
    prefix = f"vmcp:{uuid.uuid4().hex[:8]}:"
    async with TcpProxy(redis_server.port) as proxy:
        with running_backends({"everything": CONFORMANCE_MODULE}, tmp_path) as backends:
            configs = {
                "a": gateway_config(backends, aggregation={"prefix_format": ""}, session={
                    "store": proxy.url, "liveness_interval_seconds": 60,
                    "key_prefix": prefix, "store_timeout_seconds": store_timeout_a}),
                "b": gateway_config(backends, aggregation={"prefix_format": ""}, session={
                    "store": redis_server.url, "key_prefix": prefix,
                    "store_timeout_seconds": 5.0}),
            }
            gateways = await anyio.to_thread.run_sync(start_gateways, configs, tmp_path)
            try:
                yield proxy, gateways["a"].url, gateways["b"].url
            finally:
                for managed in gateways.values():
                    await anyio.to_thread.run_sync(managed.stop)


async def _open(http: httpx2.AsyncClient, url: str) -> str:
    opened = await http.post(url, json=initialize_body(1), headers=BASE_HEADERS)
    assert opened.status_code == 200, opened.text
    session_id = opened.headers["mcp-session-id"]
    await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                    headers=_headers(session_id))
    return session_id


async def test_a_paused_stream_resumed_at_once_on_another_replica_gets_its_reply(
        redis_server: RedisServer, tmp_path: Path) -> None:
    async with _two_replicas(redis_server, tmp_path, store_timeout_a=5.0) as (proxy, a, b):
        reply = await _pause_then_resume_elsewhere(proxy, a, b)
    assert reply is not None, "the resumed stream never carried the call's reply"
    assert reply["result"]["content"][0]["text"] == DONE, reply


async def test_a_pause_the_event_log_cannot_hold_is_skipped_and_the_reply_comes_at_once(
        redis_server: RedisServer, tmp_path: Path) -> None:
    """With the store out of reach, a pause would send the client to resume a stream no
    other replica can find; the connection it has carries the reply instead."""
    reply = None
    async with _two_replicas(redis_server, tmp_path, store_timeout_a=0.5) as (proxy, a, _), \
            httpx2.AsyncClient(timeout=30) as http:
        session_id = await _open(http, a)
        # The backend's upstream session is opened (and recorded) while the store answers:
        # a first use needs the store, and is answered with its error while it is out.
        warm = {"jsonrpc": "2.0", "id": 6, "method": "tools/call",
                "params": {"name": "test_simple_text", "arguments": {}}}
        opened = await http.post(a, json=warm, headers=_headers(session_id))
        assert opened.status_code == 200, opened.text
        proxy.stall()
        try:
            with anyio.move_on_after(ANSWER_BOUND_SECONDS):
                async with http.stream("POST", a, json=CALL,
                                       headers=_headers(session_id)) as answer:
                    assert answer.status_code == 200
                    async for _, message in sse_events(answer):
                        if message is not None and is_reply_to(message, CALL["id"]):
                            reply = message
        finally:
            proxy.resume()
    assert reply is not None, "the stream paused although no replica could resume it"
    assert reply["result"]["content"][0]["text"] == DONE, reply


async def _pause_then_resume_elsewhere(proxy: TcpProxy, url_a: str, url_b: str
                                       ) -> dict[str, object] | None:
    decided = anyio.Event()  # B has answered the resume's status line

    async def stall_a_while() -> None:
        proxy.stall()
        with anyio.move_on_after(LONGEST_STALL_SECONDS):
            await decided.wait()
        proxy.resume()

    async with httpx2.AsyncClient(timeout=30) as http:
        session_id = await _open(http, url_a)
        call = CALL
        last_event_id: str | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(stall_a_while)
            async with http.stream("POST", url_a, json=call,
                                   headers=_headers(session_id)) as paused:
                assert paused.status_code == 200
                async for event_id, message in sse_events(paused):
                    last_event_id = event_id or last_event_id
                    assert message is None or not is_reply_to(message, 7), message
            assert last_event_id is not None
            resume = _headers(session_id, "text/event-stream") | {"Last-Event-ID": last_event_id}
            with anyio.move_on_after(ANSWER_BOUND_SECONDS):
                async with http.stream("GET", url_b, headers=resume) as resumed:
                    decided.set()
                    assert resumed.status_code == 200
                    async for _, message in sse_events(resumed):
                        if message is not None and is_reply_to(message, 7):
                            return message
            decided.set()
    return None
