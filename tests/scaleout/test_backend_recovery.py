"""A backend that was down when a session was created joins that session once it
recovers, on every replica holding it, and the client's GET stream is told
(``list_changed``): before, the session never had its tools for its whole life."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from tests.scaleout.conftest import Cluster, running_cluster
from tests.support.mcp_http import RawSession, listen_until
from tests.support.processes import (
    NOTES_MODULE,
    WEATHER_MODULE,
    ManagedProcess,
    restart_backend,
    running_backends,
)
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio

HEALTH = {"interval_seconds": 0.3, "timeout_seconds": 2, "unhealthy_threshold": 1}
WITHIN_SECONDS = 20.0
LIST_CHANGED = "notifications/tools/list_changed"


def wait_for_health(cluster: Cluster, backend: str, wanted: str) -> None:
    """Poll every replica's /status until ``backend`` has the ``wanted`` health (bounded)."""
    deadline = time.monotonic() + WITHIN_SECONDS
    while True:
        seen = [next(b["health"] for b in cluster.status(replica)["backends"]
                     if b["name"] == backend) for replica in cluster.replicas]
        if all(health == wanted for health in seen):
            return
        assert time.monotonic() < deadline, f"{backend} is {seen}, not {wanted}"
        time.sleep(0.1)


def tools_on(session: RawSession, replica: ManagedProcess) -> set[str]:
    with httpx2.Client(timeout=10) as http:
        session.http = http
        return session.tool_names(url=replica.url)


def call_forecast(session: RawSession, replica: ManagedProcess) -> None:
    """The recovered backend's tool is listed and works on ``replica`` (bounded wait: each
    replica takes the backend in when its own probe sees it back)."""
    deadline = time.monotonic() + WITHIN_SECONDS
    while "weather_forecast" not in tools_on(session, replica):
        assert time.monotonic() < deadline, f"no weather tools on {replica.name}"
        time.sleep(0.1)
    with httpx2.Client(timeout=10) as http:
        session.http = http
        result = session.result("tools/call", {
            "name": "weather_forecast", "arguments": {"city": "Oslo", "days": 1}},
            url=replica.url)
    assert result.get("isError") is not True, result


async def test_a_recovered_backend_joins_sessions_created_while_it_was_down(
        redis_server: RedisServer, tmp_path: Path) -> None:
    modules = {"notes": NOTES_MODULE, "weather": WEATHER_MODULE}
    with running_backends(modules, tmp_path / "backends") as backends:
        backends["weather"].stop()
        with running_cluster(backends, redis_server, tmp_path, replicas=2,
                             health=HEALTH) as cluster:
            first, second = cluster.replicas
            wait_for_health(cluster, "weather", "unhealthy")
            with httpx2.Client(timeout=10) as http:
                session = RawSession.open(http, first.url)
            assert "weather_forecast" not in tools_on(session, first)
            assert "weather_forecast" not in tools_on(session, second)  # restored there

            stream_open = anyio.Event()
            received: list[dict[str, Any]] = []

            async with httpx2.AsyncClient(timeout=30) as client, \
                    anyio.create_task_group() as tg:
                with anyio.fail_after(WITHIN_SECONDS * 3):
                    tg.start_soon(listen_until, client, second.url, session, LIST_CHANGED,
                                  stream_open, received)
                    await stream_open.wait()
                    await anyio.to_thread.run_sync(restart_backend, backends["weather"],
                                                   WEATHER_MODULE)
                    await anyio.to_thread.run_sync(wait_for_health, cluster, "weather",
                                                   "healthy")
                # the task group ends when list_changed has arrived
            assert received[-1]["method"] == LIST_CHANGED
            for replica in (second, first):
                await anyio.to_thread.run_sync(call_forecast, session, replica)
            stored = json.loads(redis_server.command_value(
                "GET", cluster.key_prefix + session.session_id))
            assert "weather" in stored["backends"]
