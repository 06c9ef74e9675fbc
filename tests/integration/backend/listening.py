"""Listening on a backend connection while a test acts on the backend."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

import anyio

from vmcp.backend import BackendConnection


async def first_heard(connection: BackendConnection,
                      *steps: Callable[[], Awaitable[Any]]) -> list[dict[str, Any]]:
    """The messages ``connection.listen()`` yields while ``steps`` run one after another,
    up to the first one; then the connection is closed, which ends the listener."""
    received: list[dict[str, Any]] = []
    got_one = anyio.Event()

    async def consume() -> None:
        async with aclosing(connection.listen()) as messages:
            async for message in messages:
                received.append(message)
                got_one.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        for step in steps:
            await step()
        await got_one.wait()
        await connection.aclose()
    return received
