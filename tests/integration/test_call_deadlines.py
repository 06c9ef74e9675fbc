"""A call's deadline is kept to the half second even when its backend is saturated.

A real ``vmcp serve`` in front of a recording backend whose ``sleep`` tool stands for work
that takes too long.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2

from tests.support.mcp_http import RawSession, reply_to
from tests.support.processes import running_gateway
from tests.support.recording_backend import recording_backend

CALL_TIMEOUT = 1.0
CALLS = 30
CALL_SPACING = 0.05


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
