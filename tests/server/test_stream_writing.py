"""Writing a call's stream to a client that went away stops at once.

uvicorn's ``send`` returns at once, without yielding, once its client is gone: a writer
that only noticed the hang-up when it next waited would push its whole backlog through
in one stall of the event loop."""

from __future__ import annotations

from typing import Any

import pytest

from tests.session.test_session_close_answers import session_without_backends
from vmcp.server.session_streams import WRITE_CHUNK_BYTES, write_events
from vmcp.session.streams import Outbound

pytestmark = pytest.mark.anyio


async def test_a_backlog_is_not_written_to_a_client_that_hung_up() -> None:
    session = session_without_backends()
    stream = session.streams.open(1)
    note = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"x": "z" * 1000}}
    for _ in range(900):
        stream.append(Outbound(note))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:  # a dead client's send: no wait at all
        sent.append(message)

    await write_events(receive, send, session, stream, after=0)
    written = sum(len(m.get("body", b"")) for m in sent)
    assert written <= 2 * WRITE_CHUNK_BYTES, f"{written} bytes written after the hang-up"
    assert stream.can_replay(0), "the events stay for a resume"
    await session.aclose()
