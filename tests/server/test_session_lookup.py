"""A session copy closed between its lookup and the call's start is looked up once more.

Another replica changing a session's backends makes this replica rebuild its copy; a
request that had just looked up the old copy must be served by the new one, not be told
that a live session is gone (404 would make the client throw the session away).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.datastructures import Headers

from tests.server.asgi_call import call
from tests.session.test_session_close_answers import session_without_backends
from vmcp.config import ServerConfig
from vmcp.errors import SessionNotFound
from vmcp.identity import ANONYMOUS, Principal
from vmcp.server.security import RequestGuard
from vmcp.server.session_methods import SessionMethods
from vmcp.server.transport import McpEndpoint
from vmcp.session.multisession import MultiSession

pytestmark = pytest.mark.anyio

SESSION_ID = "close-answers-" + "0" * 18


class Copies:
    """A manager whose lookups hand out the given copies in turn."""

    def __init__(self, *copies: MultiSession | None) -> None:
        self._copies = list(copies)
        self.lookups = 0

    async def get(self, session_id: str, principal: Principal) -> MultiSession:
        self.lookups += 1
        copy = self._copies.pop(0)
        if copy is None:
            raise SessionNotFound(session_id)
        return copy

    def evict_local(self, session_id: str) -> None:
        pass


async def anonymous(headers: Headers) -> Principal:
    return ANONYMOUS


async def ping(manager: Copies) -> tuple[int, dict[str, Any]]:
    endpoint = McpEndpoint(manager, SessionMethods(), RequestGuard(ServerConfig()),  # type: ignore[arg-type]
                           anonymous, max_body_bytes=65536)
    body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "ping"}).encode()
    status, _, payload = await call(endpoint, [
        (b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
        (b"accept", b"application/json, text/event-stream"),
        (b"mcp-session-id", SESSION_ID.encode()), (b"mcp-protocol-version", b"2025-11-25")],
        body)
    return status, payload


async def test_a_copy_closed_before_the_call_started_is_looked_up_again() -> None:
    outdated, rebuilt = session_without_backends(), session_without_backends()
    await outdated.aclose()
    manager = Copies(outdated, rebuilt)
    status, answer = await ping(manager)
    assert (status, answer) == (200, {"jsonrpc": "2.0", "id": 7, "result": {}})
    assert manager.lookups == 2
    await rebuilt.aclose()


async def test_a_session_that_ended_meanwhile_answers_404() -> None:
    ended = session_without_backends()
    await ended.aclose()
    status, answer = await ping(Copies(ended, None))
    assert status == 404
    assert answer["error"]["code"] == -32001
