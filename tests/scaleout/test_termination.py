"""Ending a session on one replica ends it on all of them, at once; nothing leaks."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx2
import pytest

from tests.scaleout.conftest import Cluster, running_cluster
from tests.support.mcp_http import RawSession, error_of
from tests.support.processes import ManagedProcess
from tests.support.redis_server import RedisServer

WAIT_SECONDS = 5.0


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_SECONDS}s: {what}")
        time.sleep(0.02)


def test_delete_on_one_replica_closes_every_replicas_copy_at_once(any_cluster: Cluster) -> None:
    """B22 through real processes: the other replicas end their upstream sessions without
    waiting for a request (the ended-session broadcast), and all answer 404 afterwards."""
    first, _, third = any_cluster.replicas
    before = [any_cluster.open_upstream(r) for r in any_cluster.replicas]
    with httpx2.Client(timeout=10) as http:
        session = RawSession.open(http, first.url)
        for replica in any_cluster.replicas:
            assert session.tool_names(url=replica.url) >= {"notes_search", "weather_search"}
        listed = [any_cluster.open_upstream(r) for r in any_cluster.replicas]
        assert listed == before             # listings open no upstream session
        for replica in any_cluster.replicas:
            result = session.result("tools/call", {"name": "notes_list_notes",
                                                   "arguments": {}}, url=replica.url)
            assert result.get("isError") is not True, result
        held = [any_cluster.open_upstream(r) for r in any_cluster.replicas]
        # One upstream session (notes), opened on the first replica and re-attached by
        # the others: each holds a connection to it.
        assert [h - b for h, b in zip(held, before, strict=True)] == [1, 1, 1]

        assert session.delete(url=third.url).status_code == 200
        wait_until(lambda: [any_cluster.open_upstream(r) for r in any_cluster.replicas] == before,
                   "every replica closed its copy")
        for replica in any_cluster.replicas:
            request_id, response = session.rpc("tools/list", url=replica.url)
            assert response.status_code == 404
            assert error_of(response) == {"code": -32001, "message": "Session not found"}
            assert response.json().get("id") == request_id


def test_any_replica_serves_a_session_through_the_load_balancer(any_cluster: Cluster) -> None:
    with httpx2.Client(timeout=10) as http:
        session = RawSession.open(http, any_cluster.url)
        for n in range(9):
            result = session.result("tools/call", {"name": "notes_add_note",
                                                   "arguments": {"title": f"t{n}", "body": "b"}})
            assert result.get("isError") is not True, result
        assert session.delete().status_code == 200
    loads = [any_cluster.status(r)["cache"]["loads"] for r in any_cluster.replicas]
    assert all(n > 0 for n in loads), f"every replica restored sessions: {loads}"


def test_evicted_sessions_close_their_connections_restore_transparently_and_nothing_leaks(
    scaleout_backends: dict[str, ManagedProcess], redis_server: RedisServer, tmp_path: Path
) -> None:
    """Cache capacity 10, 100 live sessions: LRU evictions close the replicas' upstream
    connections (the backend sessions themselves stay: B38, counted by a backend in
    tests/session/test_live_sessions.py), the evicted sessions come back on their next
    request, and after every DELETE no replica holds an upstream connection."""
    with running_cluster(scaleout_backends, redis_server, tmp_path,
                         session={"cache_capacity": 10}) as small, \
            httpx2.Client(timeout=20) as http:
        sessions = [RawSession.open(http, small.url) for _ in range(100)]
        for round_ in range(2):
            for session in sessions:
                result = session.result("tools/call", {
                    "name": "weather_forecast", "arguments": {"city": "Oslo", "days": 1}})
                assert result.get("isError") is not True, (round_, result)
        ended = [sum(c["ended"] for c in small.status(r)["upstream_sessions"].values())
                 for r in small.replicas]
        assert all(n > 0 for n in ended), f"evictions closed upstream connections: {ended}"
        live = [small.status(r)["live_sessions"] for r in small.replicas]
        assert all(n <= 10 for n in live), live
        for session in sessions:
            assert session.delete().status_code == 200
        wait_until(lambda: all(small.open_upstream(r) == 0 for r in small.replicas),
                   "no upstream session left open on any replica")


@pytest.mark.parametrize("replica_index", [0, 2])
def test_a_replica_answering_404_drops_its_stale_copy(cluster: Cluster,
                                                      replica_index: int) -> None:
    replica = cluster.replicas[replica_index]
    with httpx2.Client(timeout=10) as http:
        session = RawSession.open(http, replica.url)
        session.tool_names()
        held = cluster.status(replica)["live_sessions"]
        cluster.redis.command("DEL", cluster.key_prefix + session.session_id)
        _, response = session.rpc("tools/list")
        assert response.status_code == 404
        assert cluster.status(replica)["live_sessions"] == held - 1
