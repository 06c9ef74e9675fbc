"""SIGTERM while requests are open that would outlast the drain: each still gets its answer.

A real ``vmcp serve`` in front of a recording backend whose ``sleep`` tool outlasts the
drain deadline, with a GET stream open beside it. The replica must not wait for them
past its deadline, and must not cut them without a word either: the call is answered
``-32001`` (its session closed here) and the stream ends cleanly, before the process
exits.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support.mcp_http import EVENT_STREAM, RawSession, session_not_found
from tests.support.processes import running_gateway
from tests.support.recording_backend import recording_backend
from vmcp.server.serving import DRAIN_SECONDS

pytestmark = pytest.mark.slow

LONGER_THAN_THE_DRAIN = DRAIN_SECONDS * 10


def test_sigterm_answers_every_open_request_and_is_not_held_up(tmp_path: Path) -> None:
    outcomes: dict[str, Any] = {}
    stream_open = threading.Event()
    with recording_backend() as backend, running_gateway(
            {"backends": [{"name": "rec", "url": backend.url}]}, tmp_path) as gateway, \
            httpx2.Client(timeout=DRAIN_SECONDS * 3) as http:
        session = RawSession.open(http, gateway.url)
        call = session.message("tools/call", {"name": "rec_sleep",
                                              "arguments": {"seconds": LONGER_THAN_THE_DRAIN}})

        def slow_call() -> None:
            try:
                with httpx2.Client(timeout=DRAIN_SECONDS * 3) as own:
                    response = own.post(gateway.url, json=call, headers=session.headers())
                outcomes["call"] = (response.status_code, response.json())
            except httpx2.HTTPError as exc:
                outcomes["call"] = exc

        def get_stream() -> None:
            try:
                with httpx2.Client(timeout=DRAIN_SECONDS * 3) as own, own.stream(
                        "GET", gateway.url,
                        headers=session.headers({"Accept": EVENT_STREAM})) as response:
                    chunks = response.iter_bytes()
                    first = next(chunks)
                    stream_open.set()
                    outcomes["stream"] = (response.status_code, first + b"".join(chunks))
            except httpx2.HTTPError as exc:
                outcomes["stream"] = exc
            finally:
                stream_open.set()

        workers = [threading.Thread(target=slow_call), threading.Thread(target=get_stream)]
        for worker in workers:
            worker.start()
        backend.wait_for("tools/call")
        assert stream_open.wait(DRAIN_SECONDS)

        signalled = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        gateway.process.wait(timeout=DRAIN_SECONDS * 2)
        drained_in = time.monotonic() - signalled
        for worker in workers:
            worker.join(timeout=DRAIN_SECONDS)

    print(f"SIGTERM to exit with a call and a stream open: {drained_in:.1f} s")
    assert outcomes["call"] == (404, session_not_found(call["id"])), outcomes["call"]
    status, body = outcomes["stream"]
    assert status == 200
    assert body.startswith(b": stream open"), body
    assert gateway.process.returncode is not None


def test_a_get_stream_alone_does_not_hold_the_drain_up(tmp_path: Path) -> None:
    """A GET stream only listens (clients keep one open all the time): it ends as the
    drain begins, and the client reconnects elsewhere; the deadline is never reached."""
    with recording_backend() as backend, running_gateway(
            {"backends": [{"name": "rec", "url": backend.url}]}, tmp_path) as gateway, \
            httpx2.Client(timeout=DRAIN_SECONDS * 3) as http:
        session = RawSession.open(http, gateway.url)
        with http.stream("GET", gateway.url,
                         headers=session.headers({"Accept": EVENT_STREAM})) as response:
            chunks = response.iter_bytes()
            assert next(chunks).startswith(b": stream open")
            gateway.process.send_signal(signal.SIGTERM)
            rest = b"".join(chunks)  # ends, or the read times out and raises
        gateway.process.wait(timeout=DRAIN_SECONDS * 2)
        log = gateway.log_tail(200)

    assert response.status_code == 200
    assert rest == b""
    assert "drain deadline near" not in log, log
