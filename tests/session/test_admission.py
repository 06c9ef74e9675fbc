"""Default caps: sessions per identity (429) and initializes under way per replica (503),
each refused with a clear status and a JSON-RPC error."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.datastructures import Headers

from tests.server.asgi_call import call
from vmcp.config import ServerConfig
from vmcp.config.models import LimitsConfig
from vmcp.errors import ReplicaBusy, TooManySessions
from vmcp.identity import ANONYMOUS, UNAUTHENTICATED, Principal
from vmcp.server.security import RequestGuard
from vmcp.server.session_methods import SessionMethods
from vmcp.server.transport import McpEndpoint
from vmcp.session.admission import Admission
from vmcp.store.identity_index import MemoryIdentityIndex

pytestmark = pytest.mark.anyio


def test_the_caps_are_on_by_default() -> None:
    limits = LimitsConfig()
    assert limits.max_sessions_per_identity == 100
    assert limits.max_initializes_in_flight == 64


def test_initializes_beyond_the_replica_bound_are_refused() -> None:
    admission = Admission(None, max_per_identity=0, max_in_flight=2)
    with admission.initializing(), admission.initializing(), \
            pytest.raises(ReplicaBusy), admission.initializing():
        pass
    with admission.initializing():  # the slots came back
        pass


async def test_the_identity_cap_counts_identities_not_anonymous_callers() -> None:
    held = {"s1", "s2"}
    admission = Admission(MemoryIdentityIndex(held.__contains__, ttl_seconds=60),
                          max_per_identity=1, max_in_flight=0)
    await admission.reserve("iss\x00alice", "s1")
    with pytest.raises(TooManySessions):
        await admission.reserve("iss\x00alice", "s2")
    assert not admission.counts(UNAUTHENTICATED)
    await admission.reserve(UNAUTHENTICATED, "s2")  # no slot taken, no refusal


class Refusing:
    """A manager whose ``initialize`` raises ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def initialize(self, principal: Principal, client_capabilities: object = ()) -> None:
        raise self.error


async def anonymous(headers: Headers) -> Principal:
    return ANONYMOUS


async def initialize(manager: Refusing) -> tuple[int, dict[bytes, bytes], dict[str, Any]]:
    endpoint = McpEndpoint(manager, SessionMethods(), RequestGuard(ServerConfig()),  # type: ignore[arg-type]
                           anonymous, max_body_bytes=65536)
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}}).encode()
    return await call(endpoint, [
        (b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
        (b"accept", b"application/json, text/event-stream")], body)


@pytest.mark.parametrize(("error", "status", "retry_after"), [
    (ReplicaBusy("64 under way"), 503, True),
    (TooManySessions("at most 100"), 429, False),
])
async def test_a_refused_initialize_gets_its_status_and_a_json_rpc_error(
        error: Exception, status: int, retry_after: bool) -> None:
    got_status, headers, body = await initialize(Refusing(error))
    assert got_status == status
    assert (b"retry-after" in headers) == retry_after
    assert body["id"] == 1
    assert body["error"]["code"] in (-32603, -32600)
    assert body["error"]["message"]
