"""SIGTERM under traffic: in-flight calls finish, other replicas carry the sessions on."""

from __future__ import annotations

import signal
import threading
import uuid
from collections import Counter
from pathlib import Path

import httpx2
import pytest

from tests.scaleout.conftest import running_cluster
from tests.support.mcp_http import RawSession, reply_to
from tests.support.processes import ManagedProcess, running_gateways
from tests.support.recording_backend import RecordingBackend
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.timing]


def test_sigterm_drains_in_flight_calls_and_loses_no_session(
    scaleout_backends: dict[str, ManagedProcess], redis_server: RedisServer, tmp_path: Path
) -> None:
    with running_cluster(scaleout_backends, redis_server, tmp_path, replicas=2) as cluster, \
            httpx2.Client(timeout=30) as http:
        leaving, staying = cluster.replicas
        sessions = [RawSession.open(http, leaving.url) for _ in range(4)]
        for session in sessions:
            session.tool_names(url=leaving.url)      # every session is live on `leaving`

        # A slow call (40 steps of 50 ms) is in flight on `leaving` when SIGTERM arrives.
        slow_session = sessions[0]
        slow_call = slow_session.message("tools/call", {
            "name": "weather_slow_count", "arguments": {"n": 40}})
        outcome: dict[str, object] = {}
        started = threading.Event()

        def run_slow_call() -> None:
            with httpx2.Client(timeout=30) as own, own.stream(
                    "POST", leaving.url, json=slow_call,
                    headers=slow_session.headers()) as response:
                started.set()
                response.read()
                outcome["status"] = response.status_code
                outcome["reply"] = reply_to(response, slow_call["id"])

        worker = threading.Thread(target=run_slow_call)
        worker.start()
        assert started.wait(10)
        leaving.process.send_signal(signal.SIGTERM)

        seen: Counter[int] = Counter()
        while leaving.process.poll() is None:
            for session in sessions[1:]:
                _, response = session.rpc("tools/list", url=cluster.url)
                seen[response.status_code] += 1
            if sum(seen.values()) > 2000:
                break
        worker.join(timeout=30)
        assert leaving.process.wait(timeout=30) is not None

        assert outcome.get("status") == 200, outcome
        reply = outcome["reply"]
        assert isinstance(reply, dict)
        assert "counted to 40" in str(reply.get("result")), reply
        # Through the balancer, only retryable answers while the replica drains.
        assert set(seen) <= {200, 502, 503}, dict(seen)
        print(f"answers while draining: {dict(seen)}")
        for session in sessions:                     # nothing forgotten: all go on
            assert session.tool_names(url=staying.url)
            result = session.result("tools/call", {"name": "notes_list_notes",
                                                   "arguments": {}}, url=staying.url)
            assert result.get("isError") is not True, result


@pytest.mark.redis
def test_a_replica_stopped_for_a_rolling_upgrade_leaves_its_sessions_upstream_state(
        redis_server: RedisServer, tmp_path: Path) -> None:
    """SIGTERM ends a replica, not its sessions: their upstream sessions (and whatever
    state the backend keeps in them) stay for the replica that carries them on, and end
    only when the client session does."""
    prefix = f"rolling:{uuid.uuid4().hex[:8]}:"
    echo = {"name": "rec_echo", "arguments": {"text": "hi"}}
    with RecordingBackend() as backend:
        config = {"backends": [{"name": "rec", "url": backend.url}],
                  "health": {"enabled": False},
                  "session": {"store": redis_server.url, "key_prefix": prefix}}
        with running_gateways({"old": config, "new": config}, tmp_path) as gateways, \
                httpx2.Client(timeout=10) as http:
            old, new = gateways["old"], gateways["new"]
            session = RawSession.open(http, old.url)
            session.result("tools/call", echo, url=old.url)
            (upstream,) = {seen.header("mcp-session-id") for seen in backend.calls("tools/call")}

            old.process.send_signal(signal.SIGTERM)
            old.process.wait(timeout=30)
            assert upstream not in ended(backend), "the drain ended a live session upstream"

            session.result("tools/call", echo, url=new.url)     # carried on, re-attached
            assert {seen.header("mcp-session-id")
                    for seen in backend.calls("tools/call")} == {upstream}
            assert session.delete(url=new.url).status_code == 200
        # The client's DELETE ends it upstream, once.
        backend.wait_for_http("DELETE", where=lambda seen: seen.header(
            "mcp-session-id") == upstream)
    assert ended(backend).count(upstream) == 1


def ended(backend: RecordingBackend) -> list[str | None]:
    return [seen.header("mcp-session-id") for seen in backend.seen
            if seen.http_method == "DELETE"]
