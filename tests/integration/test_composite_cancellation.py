"""Cancelling a composite tool's call cancels its running steps at the backend.

The backend records every request it gets; the composite tool runs two long ``sleep``
steps at once. Once both have reached the backend, the session client cancels its call:
the backend must then be told to cancel each of the two calls (``notifications/cancelled``
naming their request ids), and the session keeps working.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx2

from tests.support.mcp_http import RawSession
from tests.support.processes import running_gateway
from tests.support.recording_backend import RecordingBackend, SeenRequest, recording_backend

WAIT_SECONDS = 15.0


def wait_for(what: str, check: Callable[[], list[SeenRequest]], count: int) -> list[SeenRequest]:
    """Poll the recorder (bounded) until ``check`` finds ``count`` requests."""
    deadline = time.monotonic() + WAIT_SECONDS
    while len(found := check()) < count:
        assert time.monotonic() < deadline, f"{what}: saw only {found}"
        time.sleep(0.02)
    return found


def sleeps(backend: RecordingBackend) -> list[SeenRequest]:
    return [s for s in backend.calls("tools/call")
            if isinstance(s.params, dict) and s.params.get("name") == "sleep"]


def test_cancelling_the_call_cancels_both_running_steps_at_the_backend(
        tmp_path: Path) -> None:
    with recording_backend() as backend:
        config = {
            "backends": [{"name": "rec", "url": backend.url}],
            "session": {"store": "memory"},
            "composite_tools": [{"name": "two_sleeps", "steps": [
                {"id": "a", "tool": "rec_sleep", "arguments": {"seconds": 60}},
                {"id": "b", "tool": "rec_sleep", "arguments": {"seconds": 61}},
                {"id": "c", "tool": "rec_echo", "depends_on": ["a", "b"],
                 "arguments": {"text": "never"}}]}],
        }
        with running_gateway(config, tmp_path) as gateway, \
                httpx2.Client(timeout=WAIT_SECONDS) as http:
            session = RawSession.open(http, gateway.url)
            call = session.message("tools/call", {"name": "two_sleeps", "arguments": {}})

            async def run() -> None:
                async with httpx2.AsyncClient(timeout=WAIT_SECONDS) as client, \
                        anyio.create_task_group() as tg:
                    async def post_call() -> None:
                        await client.post(gateway.url, json=call, headers=session.headers())

                    tg.start_soon(post_call)
                    await anyio.to_thread.run_sync(wait_for, "both steps", lambda: sleeps(
                        backend), 2)
                    cancelled = await client.post(gateway.url, headers=session.headers(),
                                                  json={"jsonrpc": "2.0",
                                                        "method": "notifications/cancelled",
                                                        "params": {"requestId": call["id"]}})
                    assert cancelled.status_code == 202, cancelled.text
                    await anyio.to_thread.run_sync(
                        wait_for, "the backend told to cancel",
                        lambda: backend.calls("notifications/cancelled"), 2)
                    tg.cancel_scope.cancel()

            anyio.run(run)
            step_ids = {s.rpc_id for s in sleeps(backend)}
            told = {s.params.get("requestId") for s in backend.calls("notifications/cancelled")
                    if isinstance(s.params, dict)}
            assert told == step_ids
            assert not [s for s in backend.calls("tools/call")
                        if isinstance(s.params, dict) and s.params.get("name") == "echo"]
            assert session.result("tools/call", {"name": "rec_echo",
                                                 "arguments": {"text": "alive"}})[
                "content"][0]["text"] == "alive"
