"""A client that reopens its GET stream keeps hearing its backends.

Only the newest GET stream of a session receives messages; the backend listeners must
follow it when the older one ends, or a client that reconnects before its old stream is
noticed gone hears nothing more (no list changes, no server requests).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import anyio
import pytest

from vmcp.session.channel import PendingClientRequests
from vmcp.session.routes import SessionRoutes
from vmcp.session.server_messages import ServerMessages

pytestmark = pytest.mark.anyio

NOTICE = {"jsonrpc": "2.0", "method": "notifications/message",
          "params": {"level": "info", "data": "hello"}}


class FedBackend:
    """A backend connection whose own stream the test feeds; counts its listeners."""

    def __init__(self) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[dict[str, Any]](10)
        self.listeners = 0
        self.listening = anyio.Event()

    async def listen(self) -> AsyncIterator[dict[str, Any]]:
        self.listeners += 1
        self.listening.set()
        try:
            with self._receive.clone() as receive:
                async for message in receive:
                    yield message
        finally:
            self.listeners -= 1
            self.listening = anyio.Event()

    async def say(self, message: dict[str, Any]) -> None:
        await self._send.send(message)

    def close(self) -> None:
        self._send.close()
        self._receive.close()


class NoRoutes:
    """Routes that never change: the catch-up re-list finds nothing new."""

    table = SimpleNamespace(tools=[], prompts=[], resources=[], resource_templates=[])

    async def refresh_all(self, names: list[str]) -> None:
        return None

    async def refresh(self, name: str) -> None:
        return None


def messages_of(backend: FedBackend) -> ServerMessages:
    return ServerMessages("s1", replica_id="r1", relay=None, connections={"b": backend},
                          routes=cast(SessionRoutes, NoRoutes()),
                          pending=PendingClientRequests(prefix="p"),
                          answers_elsewhere=contextlib.nullcontext, spawn=lambda work: None)


async def test_a_newer_get_stream_keeps_hearing_the_backends_after_the_older_one_ends() -> None:
    backend = FedBackend()
    messages = messages_of(backend)
    older_ended = anyio.Event()

    async def older_stream() -> None:
        async with messages.subscribe() as received:
            async for _ in received:  # ends when the newer stream replaces it
                pass
        older_ended.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(older_stream)
            await backend.listening.wait()
            async with messages.subscribe() as newer:
                await older_ended.wait()
                await backend.listening.wait()  # the listeners were taken over
                await backend.say(NOTICE)
                assert await newer.receive() == NOTICE
                assert backend.listeners == 1
    assert backend.listeners == 0  # the last stream ended: nobody listens upstream
    backend.close()
