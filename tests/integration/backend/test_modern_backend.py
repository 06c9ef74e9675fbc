"""ModernBackend: calls at the stateless revision (2026-07-28), one self-contained POST each.

Against real SDK servers (which serve the revision beside the handshake ones), and against
canned answers for the refusals a server of the handshake era gives.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx2
import pytest

from vmcp.backend import BackendRpcError, BackendTarget
from vmcp.backend.modern import ModernBackend, NotModern, routing_headers, speaks_modern
from vmcp.errors import BackendProtocolError, BackendUnavailable

pytestmark = pytest.mark.anyio

MODERN = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientInfo": {"name": "vmcp-test", "version": "0"},
        "io.modelcontextprotocol/clientCapabilities": {}}
WAIT = 10


def client(url: str, http: httpx2.AsyncClient) -> ModernBackend:
    return ModernBackend(BackendTarget("test", url), http, timeout=5.0)


@pytest.mark.parametrize("json_response", [False, True], ids=["sse-responses", "json-responses"])
async def test_discover_and_call_without_a_session(start_backend: Any, http: httpx2.AsyncClient,
                                                   json_response: bool) -> None:
    backend = start_backend(json_response=json_response)
    modern = client(backend.url, http)
    with anyio.fail_after(WAIT):
        found = await modern.request("server/discover", {"_meta": META})
        assert speaks_modern(found)
        result = await modern.request("tools/call", {"name": "add", "arguments": {"a": 2, "b": 3},
                                                     "_meta": META})
    assert result["resultType"] == "complete"
    assert result["content"] == [{"type": "text", "text": "5"}]
    assert {seen.session_id for seen in backend.seen.seen} == {None}
    assert backend.seen.count("initialize") == 0


async def test_notifications_on_the_response_stream_reach_the_handler(
        start_backend: Any, http: httpx2.AsyncClient) -> None:
    backend = start_backend()
    seen: list[dict[str, Any]] = []

    async def on_message(message: dict[str, Any]) -> dict[str, Any] | None:
        seen.append(message)
        return None

    with anyio.fail_after(WAIT):
        result = await client(backend.url, http).request(
            "tools/call", {"name": "progress", "arguments": {"steps": 2},
                           "_meta": {**META, "progressToken": "p1"}}, on_message=on_message)
    assert result["content"] == [{"type": "text", "text": "done"}]
    assert [m["params"]["progress"] for m in seen] == [1, 2]
    assert {m["params"]["progressToken"] for m in seen} == {"p1"}


async def test_a_json_rpc_error_is_the_backends_own(start_backend: Any,
                                                    http: httpx2.AsyncClient) -> None:
    backend = start_backend()
    with anyio.fail_after(WAIT), pytest.raises(BackendRpcError) as caught:
        await client(backend.url, http).request("no/such/method", {"_meta": META})
    assert caught.value.code == -32601


def test_routing_headers_mirror_the_body() -> None:
    assert routing_headers("tools/call", {"name": "weather", "_meta": META}) == {
        "mcp-protocol-version": MODERN, "mcp-method": "tools/call", "mcp-name": "weather"}
    assert routing_headers("resources/read", {"uri": "a b\u00e9", "_meta": META})[
        "mcp-name"].startswith("=?base64?")
    assert "mcp-name" not in routing_headers("tools/list", {"_meta": META})


def _canned(status: int, body: Any) -> httpx2.AsyncClient:
    """An HTTP client whose every POST gets ``status`` and ``body`` (or ``body(id)``)."""

    def answer(request: httpx2.Request) -> httpx2.Response:
        sent = json.loads(request.content)
        payload = body(sent["id"]) if callable(body) else body
        return httpx2.Response(status, headers={"content-type": "application/json"},
                               content=json.dumps(payload).encode())

    return httpx2.AsyncClient(transport=httpx2.MockTransport(answer))


@pytest.mark.parametrize(("status", "body"), [
    (400, {"jsonrpc": "2.0", "id": None,
           "error": {"code": -32600, "message": "Bad Request: Unsupported protocol version"}}),
    (404, {"detail": "not here"}),
    (400, lambda i: {"jsonrpc": "2.0", "id": i,
                     "error": {"code": -32022, "message": "Unsupported protocol version",
                               "data": {"supported": ["2025-11-25"], "requested": MODERN}}}),
])
async def test_a_refusal_of_the_revision_says_so(status: int, body: Any) -> None:
    async with _canned(status, body) as http:
        with pytest.raises(NotModern):
            await client("http://backend.test/mcp", http).request("tools/list", {"_meta": META})


@pytest.mark.parametrize(("status", "body", "error"), [
    (400, lambda i: {"jsonrpc": "2.0", "id": i,
                     "error": {"code": -32602, "message": "Invalid params"}}, BackendRpcError),
    (401, {"error": "unauthorized"}, BackendProtocolError),
    (503, {"error": "busy"}, BackendUnavailable),
])
async def test_other_failures_are_not_taken_for_a_refusal_of_the_revision(
        status: int, body: Any, error: type[Exception]) -> None:
    async with _canned(status, body) as http:
        with pytest.raises(error) as caught:
            await client("http://backend.test/mcp", http).request("tools/list", {"_meta": META})
    assert not isinstance(caught.value, NotModern)
