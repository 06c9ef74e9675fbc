"""A call's deadline is kept to the half second even when its backend is saturated, and a
call whose client hung up (and did not resume) is cancelled at the backend after a short
grace instead of running on until its timeout; one resumed within the grace runs on.

One real ``vmcp serve`` in front of two recording backends: ``tight`` (a short call
timeout and two connections for calls) and ``slow``; their ``sleep`` tools stand for work
that takes too long.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx2
import pytest

from tests.support.mcp_http import EVENT_STREAM, RawSession, reply_to
from tests.support.processes import HOST, ManagedProcess, running_gateway
from tests.support.recording_backend import RecordingBackend

pytestmark = pytest.mark.timing

CALL_TIMEOUT = 1.0
CALLS = 30
CALL_SPACING = 0.05
GRACE = 0.5


@dataclass
class Setup:
    gateway: ManagedProcess
    tight: RecordingBackend
    slow: RecordingBackend


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with RecordingBackend() as tight, RecordingBackend() as slow:
        config = {"backends": [
            {"name": "tight", "url": tight.url, "call_timeout_seconds": CALL_TIMEOUT,
             "connections": {"calls": 2, "acquire_timeout_seconds": 10}},
            {"name": "slow", "url": slow.url}],
            "limits": {"abandoned_call_grace_seconds": GRACE}}
        with running_gateway(config, tmp_path_factory.mktemp("deadlines")) as gateway:
            yield Setup(gateway, tight, slow)


@pytest.fixture
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=30.0, limits=httpx2.Limits(max_connections=CALLS + 5)) as client:
        yield client


def cancelled_ids(backend: RecordingBackend) -> set[object]:
    return {seen.params["requestId"] for seen in backend.calls("notifications/cancelled")
            if isinstance(seen.params, dict)}


def test_the_call_timeout_fires_on_time_when_the_backend_is_saturated(
        setup: Setup, http: httpx2.Client) -> None:
    """A steady stream of calls that hang, more than the backend's connections: the
    cancellation notice of a call that times out queues for a connection behind the calls
    that came before it, and must not hold up the call's answer."""
    session = RawSession.open(http, setup.gateway.url)

    def call() -> tuple[float, dict[str, object]]:
        started = time.monotonic()
        request_id, response = session.rpc(
            "tools/call", {"name": "tight_sleep", "arguments": {"seconds": 30}})
        return time.monotonic() - started, reply_to(response, request_id)

    with ThreadPoolExecutor(CALLS) as pool:
        futures = []
        for _ in range(CALLS):
            futures.append(pool.submit(call))
            time.sleep(CALL_SPACING)  # pacing the load, not waiting for anything
        answers = [future.result() for future in futures]

    for seconds, reply in answers:
        assert reply["error"] == {  # type: ignore[comparison-overlap]
            "code": -32603, "data": {"backend": "tight"},
            "message": f"backend 'tight': no answer within {CALL_TIMEOUT:g}s"}
        assert seconds < CALL_TIMEOUT + 0.5, seconds


def post_and_hang_up(port: int, session: RawSession, body: bytes) -> None:
    """POST a call on a raw socket and close it at once, before any answer."""
    head = (f"POST /mcp HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
            f"Mcp-Session-Id: {session.session_id}\r\nMCP-Protocol-Version: 2025-11-25\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(head + body)


def upstream_call(backend: RecordingBackend, seconds: float) -> object:
    """The backend's id of the sleep call for ``seconds`` (waiting for it to arrive)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for seen in backend.calls("tools/call"):
            if isinstance(seen.params, dict) and seen.params["arguments"] == {
                    "seconds": seconds}:
                return seen.rpc_id
        time.sleep(0.02)
    raise AssertionError(f"the backend never saw the call: {backend.seen}")


def test_a_call_whose_client_hung_up_is_cancelled_at_the_backend_after_the_grace(
        setup: Setup, http: httpx2.Client) -> None:
    session = RawSession.open(http, setup.gateway.url)
    message = session.message("tools/call", {"name": "slow_sleep", "arguments": {"seconds": 61}})
    post_and_hang_up(setup.gateway.port, session, json.dumps(message).encode())
    upstream = upstream_call(setup.slow, 61)
    hung_up = time.monotonic()
    while upstream not in cancelled_ids(setup.slow) and time.monotonic() - hung_up < GRACE + 5:
        time.sleep(0.02)
    waited = time.monotonic() - hung_up
    after = session.result("tools/call", {"name": "slow_echo", "arguments": {"text": "after"}})

    assert upstream in cancelled_ids(setup.slow)
    assert waited < GRACE + 2.0, waited
    assert after["content"][0]["text"] == "after"


def test_a_call_whose_client_resumes_within_the_grace_runs_to_its_answer(
        setup: Setup, http: httpx2.Client) -> None:
    session = RawSession.open(http, setup.gateway.url)
    message = session.message("tools/call", {
        "name": "slow_report_then_sleep", "arguments": {"seconds": GRACE * 4},
        "_meta": {"progressToken": "p1"}})
    with http.stream("POST", setup.gateway.url, json=message,
                     headers=session.headers()) as response:
        assert response.headers["content-type"].startswith(EVENT_STREAM)
        last_id = next(line[4:] for line in response.iter_lines() if line.startswith("id: "))
    # The client hung up (the stream was closed unread); it comes back at once.
    resumed = http.get(setup.gateway.url, headers=session.headers(
        {"Accept": EVENT_STREAM, "Last-Event-ID": last_id}))
    reply = reply_to(resumed, message["id"])

    assert reply["result"]["content"][0]["text"] == f"slept {GRACE * 4}"
    report_calls = [seen.rpc_id for seen in setup.slow.calls("tools/call")
                    if isinstance(seen.params, dict)
                    and seen.params["name"] == "report_then_sleep"]
    assert report_calls
    assert not set(report_calls) & cancelled_ids(setup.slow)
