"""What an operator keeps of each MCP request: one structured log line, a metric whose
outcome tells a JSON-RPC error from a success, backend and process figures, and no raw
session id or internal detail where it does not belong."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2

from tests.integration.test_operations import metric
from tests.support.mcp_http import RawSession
from tests.support.processes import ManagedProcess, gateway_config, running_gateway
from vmcp.errors import StoreUnavailable
from vmcp.server.replies import error_reply
from vmcp.tracing import session_tag


def _entries(gateway: ManagedProcess) -> list[dict[str, object]]:
    return [json.loads(line) for line in gateway.log_tail(2000).splitlines()
            if line.startswith("{")]


def test_each_request_has_one_log_line_and_an_outcome_label(
        demo_backends: dict[str, ManagedProcess], tmp_path: Path) -> None:
    config = gateway_config(demo_backends, server={"replica_id": "replica-a"})
    with running_gateway(config, tmp_path) as gateway, httpx2.Client(timeout=10) as http:
        session = RawSession.open(http, gateway.url)
        session.result("tools/call", {"name": "notes_list_notes", "arguments": {}})
        _, unknown = session.rpc("tools/call", {"name": "no_such_tool", "arguments": {}})
        assert unknown.status_code == 200                   # a JSON-RPC error inside a 200
        exposition = httpx2.get(gateway.base_url + "/metrics").text
        assert session.delete().status_code == 200
        after_delete = httpx2.get(gateway.base_url + "/metrics").text
        lines = [e for e in _entries(gateway) if e.get("logger") == "vmcp.server.request_log"
                 and e.get("method") == "tools/call"]
        raw_log = gateway.log_tail(2000)

    assert metric(exposition, "vmcp_requests_total", method="tools/call", status="200",
                  outcome="ok") == 1
    assert metric(exposition, "vmcp_requests_total", method="tools/call", status="200",
                  outcome="error") == 1
    assert 'method="POST"' not in exposition
    assert metric(exposition, "vmcp_backend_up", backend="notes") == 1
    assert "process_cpu_seconds_total" in exposition
    assert "python_gc_objects_collected_total" in exposition
    # a client's DELETE closes the session: a removal, not an eviction
    assert metric(after_delete, "vmcp_cache_evictions_total") == 0
    assert metric(after_delete, "vmcp_cache_removals_total") == 1

    ok, error = lines
    assert (ok["tool"], ok["backend"], ok["outcome"], ok["status"]) == (
        "notes_list_notes", "notes", "ok", 200)
    assert (error["tool"], error["outcome"]) == ("no_such_tool", "error")
    for entry in lines:
        assert entry["replica_id"] == "replica-a"
        assert entry["request_id"]
        assert entry["session_id"] == session_tag(session.session_id)
        assert isinstance(entry["duration_ms"], float)
    assert session.session_id not in raw_log


def test_a_store_failure_tells_the_client_to_retry_and_the_log_where() -> None:
    detail = "redis load: ConnectionError: Error 111 connecting to 10.1.2.3:6379"
    reply = error_reply(StoreUnavailable(detail), 7)
    assert reply.status == 503
    assert reply.body["error"]["message"] == "Session store unavailable, retry"
    assert "10.1.2.3" not in json.dumps(reply.body)
