"""Spans from a gateway running in this process, captured with an in-memory exporter."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx2
import pytest
import uvicorn
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support.mcp_http import initialize_body, reply_to
from tests.support.processes import ManagedProcess
from tests.support.recording_backend import RecordingBackend
from tests.support.redis_server import RedisServer, free_port
from vmcp.config import VmcpConfig
from vmcp.server.app import create_app

pytestmark = pytest.mark.anyio

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)
    yield memory
    provider.shutdown()


async def serve_in_process(config: VmcpConfig, tg: Any) -> uvicorn.Server:
    server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1",
                                           port=free_port(), log_level="warning",
                                           lifespan="on"))
    tg.start_soon(server.serve)
    with anyio.fail_after(10):
        while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
            await anyio.sleep(0.01)
    return server


def url_of(server: uvicorn.Server) -> str:
    return f"http://127.0.0.1:{server.config.port}/mcp"


@pytest.fixture
async def two_replicas(demo_backends: dict[str, ManagedProcess],
                       redis_server: RedisServer) -> AsyncIterator[tuple[str, str]]:
    config = VmcpConfig.model_validate({
        "session": {"store": redis_server.url, "key_prefix": f"t:{uuid.uuid4().hex[:6]}:"},
        "backends": [{"name": n, "url": b.url} for n, b in demo_backends.items()],
        "health": {"enabled": False},
    })
    async with anyio.create_task_group() as tg:
        servers = [await serve_in_process(config, tg), await serve_in_process(config, tg)]
        yield url_of(servers[0]), url_of(servers[1])
        for server in servers:
            server.should_exit = True


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def test_spans_cover_request_store_restore_and_backend_call(
    exporter: InMemorySpanExporter, two_replicas: tuple[str, str]
) -> None:
    first, second = two_replicas
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.post(first, json=initialize_body(1), headers=HEADERS)
        session_id = response.headers["mcp-session-id"]
        exporter.clear()
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "notes_list_notes", "arguments": {}}}
        traceparent = f"00-{TRACE_ID}-b7ad6b7169203331-01"
        response = await http.post(second, json=call, headers={
            **HEADERS, "Mcp-Session-Id": session_id, "traceparent": traceparent})
        assert "result" in reply_to(response, 2)

    spans = exporter.get_finished_spans()
    (server_span,) = named(spans, "mcp tools/call")
    assert format(server_span.context.trace_id, "032x") == TRACE_ID   # continued
    assert server_span.attributes is not None
    assert server_span.attributes["mcp.tool.name"] == "notes_list_notes"
    assert session_id not in str(server_span.attributes)              # ids are credentials
    (restore,) = named(spans, "session restore")
    (backend_call,) = named(spans, "backend tools/call")
    assert backend_call.attributes is not None
    assert backend_call.attributes["mcp.backend"] == "notes"
    assert named(spans, "store load")
    for span in (restore, backend_call, *named(spans, "store load")):
        assert span.context.trace_id == server_span.context.trace_id


async def test_trace_context_reaches_the_backend(exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    with RecordingBackend() as backend:
        config = VmcpConfig.model_validate({
            "backends": [{"name": "rec", "url": backend.url}],
            "health": {"enabled": False}})
        async with anyio.create_task_group() as tg, httpx2.AsyncClient(timeout=10) as http:
            server = await serve_in_process(config, tg)
            url = url_of(server)
            response = await http.post(url, json=initialize_body(1), headers=HEADERS)
            session_id = response.headers["mcp-session-id"]
            call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                    "params": {"name": "rec_echo", "arguments": {"text": "hi"}}}
            traceparent = f"00-{TRACE_ID}-b7ad6b7169203331-01"
            response = await http.post(url, json=call, headers={
                **HEADERS, "Mcp-Session-Id": session_id, "traceparent": traceparent})
            assert "result" in reply_to(response, 2)
            server.should_exit = True
        (seen,) = backend.calls("tools/call")
        sent = seen.header("traceparent")
        assert sent is not None
        assert sent.split("-")[1] == TRACE_ID          # the client's trace goes on
        (backend_span,) = named(exporter.get_finished_spans(), "backend tools/call")
        assert sent.split("-")[2] == format(backend_span.context.span_id, "016x")
