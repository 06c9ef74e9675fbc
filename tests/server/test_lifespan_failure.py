"""A replica whose lifespan ended under it (a background task failed) answers 503 with
``Retry-After`` on the MCP endpoint, never 500, and fails ``/healthz`` so that an
orchestrator restarts it."""

from __future__ import annotations

from typing import Any

import anyio
import httpx2
import pytest
import uvicorn

import vmcp.server.app as app_module
from tests.support.mcp_http import BASE_HEADERS, initialize_body
from tests.support.redis_server import free_port
from vmcp.config import VmcpConfig
from vmcp.server.app import create_app

pytestmark = pytest.mark.anyio


@pytest.fixture
async def crash(monkeypatch: pytest.MonkeyPatch) -> anyio.Event:
    """Set it, and one of the lifespan's background tasks fails."""
    event = anyio.Event()

    async def failing_task(*args: Any) -> None:
        await event.wait()
        raise RuntimeError("a background task failed")

    monkeypatch.setattr(app_module, "_log_when_ready", failing_task)
    return event


async def test_a_replica_whose_lifespan_failed_answers_503_and_fails_its_liveness(
    crash: anyio.Event,
) -> None:
    config = VmcpConfig.model_validate({"backends": [], "health": {"enabled": False}})
    server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1",
                                           port=free_port(), log_level="critical"))
    base = f"http://127.0.0.1:{server.config.port}"
    async with anyio.create_task_group() as tg, httpx2.AsyncClient(timeout=5) as http:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
                await anyio.sleep(0.01)
        assert (await http.get(base + "/healthz")).status_code == 200
        crash.set()
        with anyio.fail_after(10):
            # The lifespan's end has no event to wait for from outside: ask until it shows.
            while (await http.get(base + "/healthz")).status_code == 200:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert (await http.get(base + "/healthz")).status_code == 503
        response = await http.post(base + "/mcp", json=initialize_body(1), headers=BASE_HEADERS)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"]["message"] == "This replica is not serving; retry"
        server.should_exit = True
