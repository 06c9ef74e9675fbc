"""``limits``: a cap on each identity's live sessions, and a deadline on every backend call.

Real ``vmcp serve`` processes: two replicas on one Redis for the cap (an identity's
``initialize`` requests land on any replica, so the count must span them), one gateway
in front of a recording backend for the deadline (the backend must be told the call was
abandoned).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.support.mcp_http import BASE_HEADERS, PROTOCOL_VERSION, RawSession, initialize_body
from tests.support.processes import ManagedProcess, running_gateway, running_gateways
from tests.support.recording_backend import recording_backend
from tests.support.redis_server import RedisServer

ALICE_TOKEN = "limits-alice-0123456789"
BOB_TOKEN = "limits-bob-0123456789"
TOO_MANY = (
    "Too many sessions: at most 2 live sessions per identity; end one (HTTP DELETE) or let "
    "one expire, then initialize again")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def static_auth() -> dict[str, object]:
    return {"incoming": {"type": "static", "tokens": [
        {"token_sha256": hashlib.sha256(token.encode()).hexdigest(), "issuer": "static",
         "subject": subject}
        for token, subject in ((ALICE_TOKEN, "alice"), (BOB_TOKEN, "bob"))]}}


def initialize(http: httpx2.Client, gateway: ManagedProcess, token: str) -> httpx2.Response:
    return http.post(gateway.url, json=initialize_body(7),
                     headers={**BASE_HEADERS, **bearer(token)})


@pytest.fixture
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=15.0) as client:
        yield client


@pytest.mark.redis
def test_an_identity_at_its_cap_is_refused_on_every_replica(
        redis_server: RedisServer, tmp_path: Path, http: httpx2.Client) -> None:
    with recording_backend() as backend:
        session = {"store": redis_server.url, "key_prefix": f"limits:{uuid.uuid4().hex[:12]}:"}
        configs = {name: {"backends": [{"name": "rec", "url": backend.url}],
                          "session": session, "auth": static_auth(),
                          "limits": {"max_sessions_per_identity": 2}}
                   for name in ("replica-1", "replica-2")}
        with running_gateways(configs, tmp_path) as gateways:
            first, second = gateways["replica-1"], gateways["replica-2"]
            opened = [initialize(http, first, ALICE_TOKEN), initialize(http, second, ALICE_TOKEN)]
            handshakes_before = len(backend.calls("initialize"))
            refused = [initialize(http, first, ALICE_TOKEN),
                       initialize(http, second, ALICE_TOKEN)]
            handshakes_after = len(backend.calls("initialize"))
            other = initialize(http, second, BOB_TOKEN)
            ended = http.delete(second.url, headers={
                **bearer(ALICE_TOKEN), "Mcp-Session-Id": opened[0].headers["mcp-session-id"],
                "MCP-Protocol-Version": PROTOCOL_VERSION})
            again = initialize(http, first, ALICE_TOKEN)

    assert [r.status_code for r in opened] == [200, 200]
    for response in refused:
        assert response.status_code == 429, response.text
        assert response.headers["content-type"] == "application/json"
        assert "mcp-session-id" not in response.headers
        assert response.json() == {"jsonrpc": "2.0", "id": 7,
                                   "error": {"code": -32600, "message": TOO_MANY}}
    assert handshakes_after == handshakes_before  # refused before any backend was asked
    assert other.status_code == 200, other.text
    assert ended.status_code == 200, ended.text
    assert again.status_code == 200, again.text


def test_a_call_past_the_deadline_is_cancelled_at_the_backend_and_names_it(
        tmp_path: Path, http: httpx2.Client) -> None:
    with recording_backend() as backend:
        config = {"backends": [{"name": "rec", "url": backend.url}],
                  "limits": {"call_timeout_seconds": 0.5}}
        with running_gateway(config, tmp_path) as gateway:
            session = RawSession.open(http, gateway.url)
            began = time.monotonic()
            request_id, response = session.rpc(
                "tools/call", {"name": "rec_sleep", "arguments": {"seconds": 5}})
            elapsed = time.monotonic() - began
            cancelled = backend.wait_for("notifications/cancelled")
            still_working = session.result("tools/call", {"name": "rec_echo",
                                                          "arguments": {"text": "after"}})

    assert response.status_code == 200, response.text
    assert elapsed < 3, elapsed
    assert response.json() == {"jsonrpc": "2.0", "id": request_id, "error": {
        "code": -32603, "message": "backend 'rec': no answer within 0.5s",
        "data": {"backend": "rec"}}}
    (upstream,) = backend.calls("tools/call")[:1]
    assert isinstance(cancelled.params, dict)
    assert cancelled.params["requestId"] == upstream.rpc_id
    assert still_working["content"][0]["text"] == "after"
