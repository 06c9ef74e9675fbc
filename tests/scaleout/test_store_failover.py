"""The store's master is SIGKILLed under traffic, on Sentinel and on Cluster.

Two warm replicas hold the sessions; a third, cold replica first sees them while the
store fails over, so it must restore them from whichever master answers. Every answer
in the window is a 200 or a retryable 503: never a 500, never a 404 (a 404 would make
the client drop a live session), and no session is lost. Every session answers again
on every replica within ``BACK_WITHIN`` seconds of the new master. The figures (503s,
the window's length) are printed; docs/replicas.md quotes a run.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pytest

from tests.scaleout.conftest import Cluster, running_cluster
from tests.support.mcp_http import BASE_HEADERS, RawSession, initialize_body
from tests.support.processes import ManagedProcess
from tests.support.redis_ha import ClusterSetup, SentinelSetup, running

pytestmark = [pytest.mark.slow, pytest.mark.timing]

SESSIONS = 8
BACK_WITHIN = 10.0
# Traffic stops this long after the new master at the latest (a bound, not a wait).
TRAFFIC_AFTER_PROMOTION = BACK_WITHIN + 2.0
TRAFFIC_LIMIT = 45.0
CALL = {"name": "notes_list_notes", "arguments": {}}


@dataclass
class Window:
    """Every answer seen after the kill, with when it came."""

    killed_at: float
    promoted_at: float | None = None
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[tuple[float, str, str, int]] = field(default_factory=list)

    def record(self, replica: str, session: str, status: int) -> None:
        self.statuses[status] += 1
        if status != 200:
            self.failures.append((time.monotonic(), replica, session, status))

    def report(self, kind: str) -> str:
        retryable = [t for t, _, _, status in self.failures if status == 503]
        length = max(retryable) - min(retryable) if retryable else 0.0
        promoted = (self.promoted_at or float("nan")) - self.killed_at
        back = max((t for t, *_ in self.failures), default=self.killed_at) - (
            self.promoted_at or self.killed_at)
        return (f"{kind} failover: {self.statuses[503]} x 503 over {length:.1f} s; "
                f"new master {promoted:.1f} s after the kill; last failure {back:+.1f} s "
                f"from the new master; answers {dict(self.statuses)}")


def call_status(http: httpx2.Client, session: RawSession, url: str) -> int:
    _, response = session.rpc("tools/call", CALL, url=url)
    return response.status_code


def _round(http: httpx2.Client, cluster: Cluster, sessions: list[RawSession],
           window: Window) -> bool:
    """Every session on every replica once (the cold one too); True if all were 200.
    The cold replica also tries to open a session: the store must take new ones."""
    clean = True
    for session in sessions:
        for replica in cluster.replicas:
            status = call_status(http, session, replica.url)
            window.record(replica.name, session.session_id, status)
            clean = clean and status == 200
    cold = cluster.replicas[-1]
    opened = http.post(cold.url, json=initialize_body(1), headers=BASE_HEADERS)
    window.record(cold.name, "(initialize)", opened.status_code)
    if opened.status_code == 200:
        sessions.append(RawSession(http, cold.url, opened.headers["mcp-session-id"]))
    return clean and opened.status_code == 200


@pytest.mark.parametrize("kind", ["sentinel", "cluster"])
def test_a_store_failover_under_traffic_loses_nothing_and_answers_only_200_or_503(
    kind: str, scaleout_backends: dict[str, ManagedProcess], tmp_path: Path
) -> None:
    setup = SentinelSetup(tmp_path / kind) if kind == "sentinel" else ClusterSetup(
        tmp_path / kind)
    with running(setup), running_cluster(scaleout_backends, setup, tmp_path) as cluster, \
            httpx2.Client(timeout=10) as http:
        *warm, cold = cluster.replicas
        sessions = [RawSession.open(http, warm[n % 2].url) for n in range(SESSIONS)]
        for session in sessions:
            for replica in warm:
                assert call_status(http, session, replica.url) == 200

        # On Cluster the master killed is a seed the URL names.
        killed = (setup.kill_master(seed=True) if isinstance(setup, ClusterSetup)
                  else setup.kill_master())
        window = Window(killed_at=time.monotonic())

        def watch() -> None:
            setup.wait_failover(killed)
            window.promoted_at = time.monotonic()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        while time.monotonic() < window.killed_at + TRAFFIC_LIMIT:
            clean = _round(http, cluster, sessions, window)
            promoted = window.promoted_at
            if promoted is not None and (clean or time.monotonic() > promoted
                                         + TRAFFIC_AFTER_PROMOTION):
                break
        watcher.join(timeout=5)
        report = window.report(kind)
        print(report)

        assert window.promoted_at is not None, f"no new master: {report}"
        assert set(window.statuses) <= {200, 503}, report
        assert window.statuses[200] > 0, report
        last_failure = max((t for t, *_ in window.failures), default=window.killed_at)
        assert last_failure <= window.promoted_at + BACK_WITHIN, report
        # Nothing lost: every session, old or opened in the window, on every replica.
        for session in sessions:
            for replica in cluster.replicas:
                assert call_status(http, session, replica.url) == 200, (
                    session.session_id, replica.name, report)
        restored = cluster.status(cold)["cache"]["loads"]
        assert restored >= SESSIONS, f"the cold replica restored {restored} sessions"
