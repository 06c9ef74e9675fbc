"""A flood of GET streams: beyond the replica's cap they are refused 503, beyond a
session's 429 (both with Retry-After and a JSON-RPC error), the gateway's descriptors stay
bounded, calls keep their pace, and health probes (in a budget of their own) still pass,
so a session opened meanwhile gets every backend's tools.

A real ``vmcp serve`` in front of two recording backends whose stream budget is smaller
than the flood: without separate budgets, the probes would wait behind the streams.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx2
import pytest

from tests.support.mcp_http import (
    BASE_HEADERS,
    EVENT_STREAM,
    PROTOCOL_VERSION,
    initialize_body,
    reply_to,
)
from tests.support.processes import ManagedProcess, running_gateway
from tests.support.recording_backend import RecordingBackend

pytestmark = [pytest.mark.anyio, pytest.mark.timing]

MAX_STREAMS = 16
SESSIONS = 24
STREAM_BUDGET = 8
CALL_BUDGET = 8
HEALTH_BUDGET = 2
PROBES = 20
FD_SLACK = 30


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[ManagedProcess]:
    budget = {"streams": STREAM_BUDGET, "calls": CALL_BUDGET, "health": HEALTH_BUDGET,
              "acquire_timeout_seconds": 1.0}
    with RecordingBackend() as alpha, RecordingBackend() as beta:
        config = {"backends": [{"name": "alpha", "url": alpha.url, "connections": budget},
                               {"name": "beta", "url": beta.url, "connections": budget}],
                  "limits": {"max_streams": MAX_STREAMS, "max_streams_per_session": 1},
                  "health": {"interval_seconds": 0.3, "timeout_seconds": 1.0,
                             "unhealthy_threshold": 1}}
        with running_gateway(config, tmp_path) as managed:
            yield managed


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    limits = httpx2.Limits(max_connections=SESSIONS * 2 + 20)
    async with httpx2.AsyncClient(timeout=15.0, limits=limits) as client:
        yield client


async def open_session(http: httpx2.AsyncClient, url: str) -> dict[str, str]:
    response = await http.post(url, json=initialize_body(1), headers=BASE_HEADERS)
    assert response.status_code == 200, response.text
    headers = {**BASE_HEADERS, "Mcp-Session-Id": response.headers["mcp-session-id"],
               "MCP-Protocol-Version": PROTOCOL_VERSION}
    notified = await http.post(url, json={"jsonrpc": "2.0",
                                          "method": "notifications/initialized"},
                               headers=headers)
    assert notified.status_code == 202
    return headers


async def rpc(http: httpx2.AsyncClient, url: str, headers: dict[str, str], method: str,
              params: dict[str, object] | None = None) -> dict[str, object]:
    response = await http.post(url, json={"jsonrpc": "2.0", "id": 9, "method": method,
                                          "params": params or {}}, headers=headers)
    assert response.status_code == 200, response.text
    return reply_to(response, 9)


async def probe_p99(http: httpx2.AsyncClient, url: str, headers: dict[str, str]) -> float:
    seconds = []
    for _ in range(PROBES):
        started = time.perf_counter()
        reply = await rpc(http, url, headers, "tools/call",
                          {"name": "alpha_echo", "arguments": {"text": "probe"}})
        assert "result" in reply, reply
        seconds.append(time.perf_counter() - started)
    return statistics.quantiles(seconds, n=100)[98]


async def health(http: httpx2.AsyncClient, gateway: ManagedProcess) -> set[str]:
    status = (await http.get(f"{gateway.base_url}/status")).json()
    return {backend["health"] for backend in status["backends"]}


async def test_a_flood_of_get_streams_is_capped_per_replica_and_per_session(
        gateway: ManagedProcess, http: httpx2.AsyncClient) -> None:
    url = gateway.url
    prober = await open_session(http, url)
    baseline = await probe_p99(http, url, prober)
    sessions = [await open_session(http, url) for _ in range(SESSIONS)]
    streams: list[httpx2.Response] = []
    try:
        for headers in sessions:
            request = http.build_request("GET", url, headers={**headers, "Accept": EVENT_STREAM})
            response = await http.send(request, stream=True)
            if response.status_code != 200:
                await response.aread()
            streams.append(response)
        opened = [r for r in streams if r.status_code == 200]
        refused = [r for r in streams if r.status_code != 200]
        second = await http.get(url, headers={**sessions[0], "Accept": EVENT_STREAM})
        most_fds = len(os.listdir(f"/proc/{gateway.process.pid}/fd"))
        during = await probe_p99(http, url, prober)
        healths = [await health(http, gateway)]
        with anyio.fail_after(5):
            while len(healths) < 4:  # several probe rounds, all while the streams are open
                await anyio.sleep(0.3)
                healths.append(await health(http, gateway))
        joined = await open_session(http, url)
        tools = await rpc(http, url, joined, "tools/list")
    finally:
        for response in streams:
            await response.aclose()

    assert len(opened) == MAX_STREAMS
    assert len(refused) == SESSIONS - MAX_STREAMS
    for response in refused:
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        assert "maximum of 16 GET streams" in response.json()["error"]["message"]
    assert second.status_code == 429, second.text
    assert second.headers["retry-after"] == "1"
    assert second.json()["error"]["code"] == -32600
    # Client connections, and each backend's three budgets: nothing else grows.
    assert most_fds <= SESSIONS + 2 * (STREAM_BUDGET + CALL_BUDGET + HEALTH_BUDGET) + FD_SLACK, (
        most_fds)
    assert during <= max(3 * baseline, 0.25), (baseline, during)
    assert healths == [{"healthy"}] * len(healths)
    names = {tool["name"] for tool in tools["result"]["tools"]}  # type: ignore[index]
    assert {"alpha_echo", "beta_echo"} <= names
