"""The operational routes of a running gateway: health, readiness, status, metrics."""

from __future__ import annotations

import httpx2

from tests.support.mcp_http import RawSession
from tests.support.processes import ManagedProcess


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{") or line.startswith(f"{name} "):
            series, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in series for k, v in labels.items()) or not wanted:
                return float(value)
    return 0.0


def test_health_readiness_and_status(gateway: ManagedProcess) -> None:
    assert httpx2.get(f"{gateway.base_url}/healthz").json() == {"status": "ok"}
    assert httpx2.get(f"{gateway.base_url}/readyz").json() == {"status": "ready"}
    status = httpx2.get(f"{gateway.base_url}/status").json()
    assert {b["name"] for b in status["backends"]} == {"notes", "weather"}
    assert status["store"] == "memory"
    assert {"replica_id", "version", "cache", "live_sessions", "upstream_sessions"} <= set(status)


def test_metrics_count_requests_store_calls_and_sessions(gateway: ManagedProcess) -> None:
    url = f"{gateway.base_url}/metrics"
    before = httpx2.get(url).text
    with httpx2.Client(timeout=10) as http:
        session = RawSession.open(http, gateway.url)
        session.tool_names()
        session.rpc("no/such/method")
        after_calls = httpx2.get(url).text
        session.delete()
    assert (metric(after_calls, "vmcp_requests_total", method="tools/list", status="200")
            == metric(before, "vmcp_requests_total", method="tools/list", status="200") + 1)
    assert metric(after_calls, "vmcp_requests_total", method="other", status="200") >= 1
    assert "no/such/method" not in after_calls
    assert metric(after_calls, "vmcp_store_operations_total", op="load", outcome="ok") > 0
    assert metric(after_calls, "vmcp_live_sessions") >= 1
    assert metric(after_calls, "vmcp_upstream_sessions_opened_total", backend="notes") >= 1
