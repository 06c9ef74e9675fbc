"""Bulkheads: a backend that hangs takes only its own connection budget, so calls to the
other backend keep their pace, and its own callers beyond the budget are told at once,
with an error naming it, that it is busy.

A real ``vmcp serve`` in front of two recording backends; ``beta``'s ``sleep`` stands for a
tool that never answers (its calls end at beta's short call timeout).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support.mcp_http import RawSession, reply_to
from tests.support.processes import ManagedProcess, running_gateway
from tests.support.recording_backend import RecordingBackend

pytestmark = pytest.mark.timing

CALL_BUDGET = 8
FLOOD = 40
ACQUIRE_TIMEOUT = 1.0
BETA_CALL_TIMEOUT = 4.0
PROBES = 20


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[ManagedProcess, RecordingBackend]]:
    with RecordingBackend() as alpha, RecordingBackend() as beta:
        config = {"backends": [
            # Budgets of the same size: shared, they would be one pool that beta fills.
            {"name": "alpha", "url": alpha.url, "connections": {"calls": CALL_BUDGET}},
            {"name": "beta", "url": beta.url, "call_timeout_seconds": BETA_CALL_TIMEOUT,
             "connections": {"calls": CALL_BUDGET,
                             "acquire_timeout_seconds": ACQUIRE_TIMEOUT}}],
            "health": {"interval_seconds": 0.3, "timeout_seconds": 1.0,
                       "unhealthy_threshold": 1}}
        with running_gateway(config, tmp_path) as managed:
            yield managed, beta


def call(http: httpx2.Client, session: RawSession, tool: str,
         arguments: dict[str, Any]) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    request_id, response = session.rpc("tools/call", {"name": tool, "arguments": arguments})
    assert response.status_code == 200, response.text
    return reply_to(response, request_id), time.perf_counter() - started


def probe_p99(http: httpx2.Client, session: RawSession) -> float:
    seconds = []
    for _ in range(PROBES):
        reply, elapsed = call(http, session, "alpha_echo", {"text": "probe"})
        assert reply["result"]["content"][0]["text"] == "probe", reply
        seconds.append(elapsed)
    return statistics.quantiles(seconds, n=100)[98]


def test_a_hanging_backend_delays_only_its_own_callers(
        gateway: tuple[ManagedProcess, RecordingBackend]) -> None:
    managed, beta = gateway
    limits = httpx2.Limits(max_connections=FLOOD + 10)
    with httpx2.Client(timeout=30.0, limits=limits) as http, \
            ThreadPoolExecutor(FLOOD) as pool:
        session = RawSession.open(http, managed.url)
        baseline = probe_p99(http, session)
        flood = [pool.submit(call, http, session, "beta_sleep", {"seconds": 60})
                 for _ in range(FLOOD)]
        deadline = time.monotonic() + 5
        while len(beta.calls("tools/call")) < CALL_BUDGET and time.monotonic() < deadline:
            time.sleep(0.02)
        during = probe_p99(http, session)
        healths = []
        for _ in range(4):  # several probe rounds while beta's call budget is full
            status = http.get(f"{managed.base_url}/status").json()
            healths.append({b["name"]: b["health"] for b in status["backends"]})
            time.sleep(0.5)
        joined = RawSession.open(http, managed.url)
        tools = joined.tool_names()
        answers = [future.result() for future in flood]

    # Health probes have a budget of their own: beta answers them, so it stays healthy.
    assert healths == [{"alpha": "healthy", "beta": "healthy"}] * 4
    # Sharing beta's budget, a probe would wait out the acquire timeout (1 s) and fail.
    # Below half of that, what remains is the gateway answering beta's 32 refused
    # callers at once, slow under coverage: one probe met that at 0.28 s.
    assert during <= max(3 * baseline, ACQUIRE_TIMEOUT / 2), (baseline, during)
    assert "alpha_echo" in tools
    busy = [seconds for reply, seconds in answers if reply["error"]["message"] == (
        f"backend 'beta': busy: all {CALL_BUDGET} connections for calls in use for "
        f"{ACQUIRE_TIMEOUT:g}s")]
    timed_out = [seconds for reply, seconds in answers
                 if "no answer within" in reply["error"]["message"]]
    for reply, _ in answers:
        assert reply["error"]["message"].startswith("backend 'beta': "), reply
        assert reply["error"]["data"] == {"backend": "beta"}
    assert len(busy) >= FLOOD - CALL_BUDGET
    assert len(busy) + len(timed_out) == FLOOD
    assert max(busy) < ACQUIRE_TIMEOUT + 2.0
    # Every call that reached beta is cancelled there: nothing is left running.
    reached = {seen.rpc_id for seen in beta.calls("tools/call")}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        cancelled = {seen.params["requestId"] for seen in beta.calls("notifications/cancelled")
                     if isinstance(seen.params, dict)}
        if reached <= cancelled:
            break
        time.sleep(0.05)
    assert reached <= cancelled
