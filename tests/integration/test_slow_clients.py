"""What slow and departed readers cost a real ``vmcp serve`` (one Redis, one replica).

A backend floods a call with progress notifications far faster than the client reads.
The gateway's memory must stay within its configured buffer (plus noise) and the stream
must end with the ``-32000`` answer; a client that hangs up mid-call leaves a copy of the
stream in Redis that is bounded and stops as soon as the session is DELETEd.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
import redis

from tests.support.mcp_http import RawSession, raw_post
from tests.support.processes import ManagedProcess, running_gateway
from tests.support.recording_backend import RecordingBackend
from tests.support.redis_server import RedisServer
from vmcp.session import detached

pytestmark = [pytest.mark.redis, pytest.mark.timing]

BUFFER_BYTES = 256 * 1024
STALL_SECONDS = 2.0
MARGIN_BYTES = 40 * 1024 * 1024
"""Noise in a Python process's RSS (allocator arenas, the backend's bursts being parsed)."""
READ_BYTES = 4096
READ_EVERY_SECONDS = 0.25  # the slow client's pace: about 16 KB/s
STOP_BOUND_SECONDS = detached.STOP_COPY_SECONDS + 1.0


@pytest.fixture(scope="module")
def gateway(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[ManagedProcess, str]]:
    prefix = f"slow:{uuid.uuid4().hex[:8]}:"
    with RecordingBackend(stress=True) as backend:
        config = {"backends": [{"name": "rec", "url": backend.url}],
                  "health": {"enabled": False},
                  "session": {"store": redis_server.url, "key_prefix": prefix},
                  "limits": {"response_buffer_bytes": BUFFER_BYTES,
                             "slow_client_seconds": STALL_SECONDS}}
        with running_gateway(config, tmp_path_factory.mktemp("slow")) as process:
            yield process, prefix


def flood(session: RawSession, count: int, size: int) -> dict[str, Any]:
    return session.message("tools/call", {
        "name": "rec_flood", "arguments": {"count": count, "size": size},
        "_meta": {"progressToken": 1}})


def test_a_slow_reader_costs_a_bounded_buffer_and_gets_a_clear_end(
        gateway: tuple[ManagedProcess, str]) -> None:
    process, _ = gateway
    with httpx2.Client(timeout=10) as http:
        session = RawSession.open(http, process.url)
        baseline = peak = process.rss_bytes
        message = flood(session, 3000, 20_000)  # 60 MB of notifications
        sock = raw_post(process.url, session.headers(), message)
        try:
            received = bytearray()
            deadline = time.monotonic() + STALL_SECONDS + 20
            # Slowly, until the gateway gives up on this client; then at full speed, to
            # take what was already sent and the end that follows it (before the
            # connection's own write deadline, twice as long, closes it).
            while "read it too slowly" not in process.log_tail(200):
                assert time.monotonic() < deadline, "the stream never overflowed"
                received += sock.recv(READ_BYTES)
                peak = max(peak, process.rss_bytes)
                time.sleep(READ_EVERY_SECONDS)  # the slow client's pace, not a wait
            peak = max(peak, process.rss_bytes)
            received += read_to_end(sock, seconds=20)
        finally:
            sock.close()
        session.delete()
    final = last_message(bytes(received))
    assert final == {"jsonrpc": "2.0", "id": message["id"], "error": {
        "code": -32000, "message": final["error"]["message"]}}, final
    grown = peak - baseline
    assert grown <= BUFFER_BYTES + MARGIN_BYTES, f"RSS grew by {grown / 2**20:.0f} MiB"


def test_a_hang_up_leaves_a_bounded_copy_that_stops_when_the_session_ends(
        gateway: tuple[ManagedProcess, str], redis_server: RedisServer) -> None:
    process, prefix = gateway
    store = redis.Redis.from_url(redis_server.url)
    with httpx2.Client(timeout=10) as http:
        session = RawSession.open(http, process.url)
        pattern = f"{prefix}events:{session.session_id}:*"
        # Small, many events: the copy is busy writing when the session ends.
        sock = raw_post(process.url, session.headers(), flood(session, 40_000, 100))
        sock.recv(READ_BYTES)
        sock.close()  # the client hangs up mid-call
        deadline = time.monotonic() + 10
        while logged(store, pattern) < 1000:
            assert time.monotonic() < deadline, "the stream was never copied"
            time.sleep(0.05)
        assert session.delete().status_code == 200
        ended = time.monotonic()
        time.sleep(STOP_BOUND_SECONDS)  # the copy's bound to stop
        stopped = logged(store, pattern)
        time.sleep(1.0)  # a window in which nothing more may be written
        after = logged(store, pattern)
    store.close()
    assert time.monotonic() - ended < STOP_BOUND_SECONDS + 5
    assert after == stopped, f"{after - stopped} events copied after the session ended"
    assert stopped <= detached.COPY_MAX_EVENTS + detached.COPY_BATCH_EVENTS


def logged(store: redis.Redis, pattern: str) -> int:
    return sum(int(store.xlen(key)) for key in store.scan_iter(match=pattern))


def read_to_end(sock: socket.socket, *, seconds: float) -> bytes:
    sock.settimeout(seconds)
    chunks = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
    raise AssertionError(f"the stream did not end within {seconds}s")


def last_message(raw: bytes) -> dict[str, Any]:
    """The last JSON-RPC message of an SSE answer (chunked: a message's line may be split
    by chunk framing, but the last one is the tail of the body, in one chunk)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    data = [line[len(b"data: "):] for line in body.split(b"\n") if line.startswith(b"data: {")]
    assert data, body[:500]
    message = json.loads(data[-1])
    assert isinstance(message, dict)
    return message
