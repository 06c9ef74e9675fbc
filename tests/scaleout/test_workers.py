"""``vmcp serve --workers N``: replica processes on one port over a shared Redis, through
real processes: sessions served by whichever worker a connection lands on, a killed
worker replaced with no session lost, SIGHUP restarting them one at a time, SIGTERM
draining all of them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.support.mcp_http import RawSession
from tests.support.processes import (
    PROJECT_ROOT,
    VMCP_EXECUTABLE,
    ManagedProcess,
    gateway_config,
    running_gateway,
    write_config,
)
from tests.support.redis_server import RedisServer

WAIT_SECONDS = 120.0
"""Bound on a worker (re)starting: a new Python process importing the gateway can take
many seconds on a loaded machine; on a quiet one it takes two or three."""
WORKERS = ["--workers", "2"]


def _connection() -> httpx2.Client:
    """A client that keeps exactly one connection, so it stays with one worker."""
    return httpx2.Client(timeout=30, limits=httpx2.Limits(max_connections=1,
                                                          max_keepalive_connections=1))


def _replica(client: httpx2.Client, gateway: ManagedProcess) -> str:
    response = client.get(f"{gateway.base_url}/status")
    response.raise_for_status()
    replica = response.json()["replica_id"]
    assert isinstance(replica, str)
    return replica


def _pid(replica: str) -> int:
    return int(replica.rsplit("-", 1)[1])


@contextlib.contextmanager
def _connections_to_new_workers(gateway: ManagedProcess, known: set[str], count: int
                                ) -> Iterator[dict[str, httpx2.Client]]:
    """One kept-alive connection to each of ``count`` workers not in ``known``: new
    connections until the kernel has handed them to that many different workers."""
    found: dict[str, httpx2.Client] = {}
    deadline = time.monotonic() + WAIT_SECONDS
    try:
        while len(found) < count:
            assert time.monotonic() < deadline, f"workers answering: {sorted(found)}"
            client = _connection()
            try:
                replica = _replica(client, gateway)
            except httpx2.HTTPError:
                client.close()
                continue
            if replica in found or replica in known:
                client.close()
            else:
                found[replica] = client
        yield found
    finally:
        for client in found.values():
            client.close()


def _add_note(session: RawSession, title: str) -> None:
    result = session.result("tools/call", {"name": "notes_add_note",
                                           "arguments": {"title": title, "body": "b"}})
    assert result.get("isError") is not True, result


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def config(scaleout_backends: dict[str, ManagedProcess],
           redis_server: RedisServer) -> dict[str, object]:
    session = {"store": redis_server.url, "key_prefix": f"vmcp:{uuid.uuid4().hex[:8]}:"}
    return gateway_config({"notes": scaleout_backends["notes"]}, session=session)


def test_two_workers_share_sessions_a_killed_one_is_replaced_sigterm_drains_all(
        config: dict[str, object], tmp_path: Path) -> None:
    with running_gateway(config, tmp_path, args=WORKERS, timeout=WAIT_SECONDS) as gateway, \
            _connections_to_new_workers(gateway, set(), 2) as workers:
        (first, to_first), (second, to_second) = sorted(workers.items())
        one = RawSession.open(to_first, gateway.url)
        two = RawSession.open(to_second, gateway.url)
        # Each session is served by the worker that did not create it.
        _add_note(RawSession(to_second, gateway.url, one.session_id), "one on second")
        _add_note(RawSession(to_first, gateway.url, two.session_id), "two on first")

        os.kill(_pid(first), signal.SIGKILL)
        _add_note(RawSession(to_second, gateway.url, one.session_id), "while replaced")
        with _connections_to_new_workers(gateway, {first, second}, 1) as replacement:
            ((new, to_new),) = replacement.items()
            assert not _alive(_pid(first))
            for session in (one, two):  # no session lost with the worker
                _add_note(RawSession(to_new, gateway.url, session.session_id), "on new")
        workers_now = [_pid(second), _pid(new)]
        assert gateway.stop() == 0
    assert not [pid for pid in workers_now if _alive(pid)]


def test_sighup_restarts_the_workers_one_at_a_time_and_every_call_is_answered(
        config: dict[str, object], tmp_path: Path) -> None:
    with running_gateway(config, tmp_path, args=WORKERS, timeout=WAIT_SECONDS) as gateway, \
            _connections_to_new_workers(gateway, set(), 2) as workers, \
            httpx2.Client(timeout=30) as http:
        session = RawSession.open(http, gateway.url)
        old = {_pid(replica) for replica in workers}
        gateway.process.send_signal(signal.SIGHUP)
        calls = 0
        deadline = time.monotonic() + 2 * WAIT_SECONDS
        while any(_alive(pid) for pid in old):
            assert time.monotonic() < deadline, "the old workers were not replaced"
            # A new connection for every call: whichever worker accepts it must answer.
            with _connection() as fresh:
                _add_note(RawSession(fresh, gateway.url, session.session_id), f"n{calls}")
            calls += 1
        assert calls > 0
        with _connections_to_new_workers(gateway, set(workers), 2) as renewed:
            assert not {_pid(replica) for replica in renewed} & old


def test_more_than_one_worker_on_the_memory_store_is_refused(
        scaleout_backends: dict[str, ManagedProcess], tmp_path: Path) -> None:
    path = write_config(tmp_path / "memory.yaml",
                        gateway_config({"notes": scaleout_backends["notes"]}))
    done = subprocess.run([str(VMCP_EXECUTABLE), "serve", "--config", str(path),
                           "--workers", "2"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "needs a shared session store" in done.stderr
