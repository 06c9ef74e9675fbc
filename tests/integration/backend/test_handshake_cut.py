"""An ``initialize`` whose answer breaks after its headers still ends the backend session.

The backend opened a session and named it in the answer's ``Mcp-Session-Id`` header,
then the connection broke before the result (a reset, a proxy cut). The connect fails,
but the backend holds the session: the client saw its id, so it must DELETE it, or the
session is left open on the backend for good (found by the chaos harness: upstream
sessions that no backend DELETE ever ended, after a connection reset mid-initialize).
"""

from __future__ import annotations

from typing import Any

import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.integration.backend.conftest import Backend, OpenConnection
from vmcp.errors import BackendError

pytestmark = pytest.mark.anyio

SESSION_HEADER = b"mcp-session-id"


def cut_after_headers(app: ASGIApp, answered: list[str]) -> ASGIApp:
    """Answer an ``initialize`` with its status line and headers only, then hang up;
    the session ids so answered go to ``answered``."""

    async def cutting(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or SESSION_HEADER in dict(scope["headers"]) \
                or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        held: list[Message] = []

        async def holding(message: Message) -> None:
            held.append(message)

        await app(scope, receive, holding)
        # Returning with the response begun and no body makes the server drop the
        # connection: the client reads the headers, then a broken stream.
        answered.append(dict(held[0]["headers"])[SESSION_HEADER].decode())
        await send(held[0])

    return cutting


async def test_a_session_whose_initialize_answer_broke_is_ended_on_the_backend(
        start_backend: Any, open_connection: OpenConnection) -> None:
    backend: Backend = start_backend()
    answered: list[str] = []
    backend.seen.app = cut_after_headers(backend.seen.app, answered)
    with pytest.raises(BackendError):
        await open_connection(backend)
    assert len(answered) == 1
    ended = [seen.session_id for seen in backend.seen.http("DELETE")]
    assert ended == answered, "the half-opened session was never ended"
