"""Sessions that expire by TTL have their upstream sessions ended, exactly once, by
whichever replica's sweep claims each; two replicas sweep the same index at once."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path

import httpx2
import pytest
import redis

from tests.support.mcp_http import RawSession
from tests.support.processes import running_gateways
from tests.support.recording_backend import RecordingBackend
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis

SESSIONS = 12
TTL_SECONDS = 1.0
SWEEP_SECONDS = 0.1
WAIT_SECONDS = 15.0
ECHO = {"name": "rec_echo", "arguments": {"text": "hi"}}


def test_expired_sessions_end_their_upstream_sessions_once_across_racing_replicas(
        redis_server: RedisServer, tmp_path: Path) -> None:
    prefix = f"expiry:{uuid.uuid4().hex[:8]}:"
    with RecordingBackend() as backend:
        config = {"backends": [{"name": "rec", "url": backend.url}],
                  "health": {"enabled": False},
                  "session": {"store": redis_server.url, "key_prefix": prefix,
                              "ttl_seconds": TTL_SECONDS,
                              "sweep_interval_seconds": SWEEP_SECONDS}}
        with running_gateways({"a": config, "b": config}, tmp_path) as gateways, \
                httpx2.Client(timeout=10) as http:
            replicas = [gateways["a"], gateways["b"]]
            for n in range(SESSIONS):
                session = RawSession.open(http, replicas[n % 2].url)
                # Used on both replicas: its upstream session is opened by a call on one
                # and re-attached by the other, so each holds a copy of it.
                for replica in (replicas[n % 2], replicas[(n + 1) % 2]):
                    session.result("tools/call", ECHO, url=replica.url)
            used = {seen.header("mcp-session-id") for seen in backend.calls("tools/call")}
            assert len(used) == SESSIONS
            index = redis.Redis.from_url(redis_server.url)
            try:
                deadline = time.monotonic() + WAIT_SECONDS
                # Ending a session needs a claim on the index: once it is empty, nobody
                # can end anything more.
                while index.zcard(prefix + "expiry:{index}") or not used <= set(deletes(backend)):
                    assert time.monotonic() < deadline, (
                        f"{len(used & set(deletes(backend)))} of {SESSIONS} upstream "
                        "sessions ended")
                    time.sleep(0.05)
                assert index.hlen(prefix + "expiry:{index}:records") == 0
            finally:
                index.close()
    # Each upstream session the calls used was ended exactly once (the others ended are
    # the short-lived ones each replica lists the backend over).
    ended = Counter(upstream for upstream in deletes(backend) if upstream in used)
    assert ended == Counter(used), f"DELETEs per upstream session: {ended}"


def deletes(backend: RecordingBackend) -> list[str | None]:
    return [seen.header("mcp-session-id") for seen in backend.seen
            if seen.http_method == "DELETE"]
