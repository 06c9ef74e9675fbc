"""A call's deadline is kept to the half second even when its backend is saturated, and a
call whose client hung up (and did not resume) is cancelled at the backend after a short
grace instead of running on until its timeout.

A real ``vmcp serve`` in front of a recording backend whose ``sleep`` tool stands for work
that takes too long.
"""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2

from tests.support.mcp_http import EVENT_STREAM, RawSession, reply_to
from tests.support.processes import HOST, running_gateway
from tests.support.recording_backend import RecordingBackend, recording_backend

CALL_TIMEOUT = 1.0
CALLS = 30
CALL_SPACING = 0.05
GRACE = 0.5


def test_the_call_timeout_fires_on_time_when_the_backend_is_saturated(tmp_path: Path) -> None:
    """A steady stream of calls that hang, more than the backend's connections: the
    cancellation notice of a call that times out queues for a connection behind the calls
    that came before it, and must not hold up the call's answer."""
    with recording_backend() as backend:
        config = {"backends": [{"name": "rec", "url": backend.url,
                                "call_timeout_seconds": CALL_TIMEOUT,
                                "connections": {"calls": 2, "acquire_timeout_seconds": 10}}]}
        with running_gateway(config, tmp_path) as gateway, \
                httpx2.Client(timeout=30.0, limits=httpx2.Limits(max_connections=20)) as http, \
                ThreadPoolExecutor(CALLS) as pool:
            session = RawSession.open(http, gateway.url)

            def call() -> tuple[float, dict[str, object]]:
                started = time.monotonic()
                request_id, response = session.rpc(
                    "tools/call", {"name": "rec_sleep", "arguments": {"seconds": 30}})
                return time.monotonic() - started, reply_to(response, request_id)

            futures = []
            for _ in range(CALLS):
                futures.append(pool.submit(call))
                time.sleep(CALL_SPACING)  # pacing the load, not waiting for anything
            answers = [future.result() for future in futures]

    for seconds, reply in answers:
        assert reply["error"] == {"code": -32603, "data": {"backend": "rec"},  # type: ignore[comparison-overlap]
                                  "message": f"backend 'rec': no answer within {CALL_TIMEOUT:g}s"}
        assert seconds < CALL_TIMEOUT + 0.5, seconds


def post_and_hang_up(port: int, session: RawSession, body: bytes) -> None:
    """POST a call on a raw socket, wait until the backend has it, and close the socket."""
    head = (f"POST /mcp HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
            f"Mcp-Session-Id: {session.session_id}\r\nMCP-Protocol-Version: 2025-11-25\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(head + body)


def test_a_call_whose_client_hung_up_is_cancelled_at_the_backend_after_the_grace(
        tmp_path: Path) -> None:
    with RecordingBackend() as backend:
        config = {"backends": [{"name": "rec", "url": backend.url}],
                  "limits": {"abandoned_call_grace_seconds": GRACE}}
        with running_gateway(config, tmp_path) as gateway, httpx2.Client(timeout=30.0) as http:
            session = RawSession.open(http, gateway.url)
            message = session.message("tools/call", {"name": "rec_sleep",
                                                     "arguments": {"seconds": 60}})
            post_and_hang_up(gateway.port, session, json.dumps(message).encode())
            upstream = backend.wait_for("tools/call")
            hung_up = time.monotonic()
            cancelled = backend.wait_for("notifications/cancelled", timeout=GRACE + 5)
            waited = time.monotonic() - hung_up
            after = session.result("tools/call", {"name": "rec_echo",
                                                  "arguments": {"text": "after"}})

    assert isinstance(cancelled.params, dict)
    assert cancelled.params["requestId"] == upstream.rpc_id
    assert waited < GRACE + 2.0, waited
    assert after["content"][0]["text"] == "after"


def test_a_call_whose_client_resumes_within_the_grace_runs_to_its_answer(
        tmp_path: Path) -> None:
    with RecordingBackend() as backend:
        config = {"backends": [{"name": "rec", "url": backend.url}],
                  "limits": {"abandoned_call_grace_seconds": GRACE * 2}}
        with running_gateway(config, tmp_path) as gateway, httpx2.Client(timeout=30.0) as http:
            session = RawSession.open(http, gateway.url)
            message = session.message("tools/call", {
                "name": "rec_report_then_sleep", "arguments": {"seconds": GRACE * 4},
                "_meta": {"progressToken": "p1"}})
            with http.stream("POST", gateway.url, json=message,
                             headers=session.headers()) as response:
                assert response.headers["content-type"].startswith(EVENT_STREAM)
                last_id = next(line[4:] for line in response.iter_lines()
                               if line.startswith("id: "))
            # The client hung up (the stream was closed unread); it comes back at once.
            resumed = http.get(gateway.url, headers=session.headers(
                {"Accept": EVENT_STREAM, "Last-Event-ID": last_id}))
            reply = reply_to(resumed, message["id"])
            cancels = backend.calls("notifications/cancelled")

    assert reply["result"]["content"][0]["text"] == f"slept {GRACE * 4}"
    assert cancels == []
