"""Audit events and their writer: shape, redaction, the size cap, never blocking."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import anyio
import pytest

from vmcp.audit.events import arguments_data, build_event, event_type
from vmcp.audit.record import OperationRecord
from vmcp.audit.trail import AuditTrail
from vmcp.config import AuditConfig
from vmcp.errors import ConfigError
from vmcp.identity import Principal


def test_an_event_names_who_what_where_and_how_it_ended() -> None:
    record = OperationRecord(
        method="tools/call", principal=Principal("https://idp", "u1", "t",
                                                 {"sub": "u1", "email": "u1@example.com"}),
        target_type="tool", name="notes_add", backend="notes", original_name="add",
        arguments={"title": "x", "password": "hunter2"}, policy_ids=("p1",),
        client_name="ide", client_version="1.2", protocol_version="2025-11-25")
    event = build_event(record, status=200, duration_ms=1.23456, replica_id="r1",
                        source_ip="10.0.0.1", user_agent="ua", request_id="req",
                        session_hash="abc", trace_id="0" * 31 + "1", include_arguments=True,
                        redact_keys=frozenset({"password"}))
    assert event["type"] == "mcp_tool_call"
    assert event["outcome"] == "success"
    assert event["subjects"] == {"user": "u1@example.com", "user_id": "u1",
                                 "issuer": "https://idp", "client_name": "ide",
                                 "client_version": "1.2"}
    assert event["source"] == {"type": "network", "value": "10.0.0.1",
                               "extra": {"user_agent": "ua", "request_id": "req"}}
    assert event["target"] == {"method": "tools/call", "type": "tool", "name": "notes_add",
                               "backend": "notes", "original_name": "add"}
    assert event["metadata"]["extra"] == {
        "duration_ms": 1.235, "http_status": 200, "replica_id": "r1", "policy_ids": ["p1"],
        "session_hash": "abc", "trace_id": "0" * 31 + "1", "protocol_version": "2025-11-25"}
    assert event["data"] == {"arguments": {"title": "x", "password": "[REDACTED]"}}
    assert "data" not in build_event(record, status=200, duration_ms=1, replica_id="r",
                                     source_ip=None, user_agent=None, request_id=None,
                                     session_hash=None, trace_id=None)


@pytest.mark.parametrize(("denied", "status", "code", "outcome"), [
    (True, 403, -32602, "denied"), (False, 401, -32600, "failure"),
    (False, 200, -32603, "error"), (False, 200, None, "success")])
def test_outcomes(denied: bool, status: int, code: int | None, outcome: str) -> None:
    record = OperationRecord(method="tools/call", denied=denied, error_code=code)
    event = build_event(record, status=status, duration_ms=1, replica_id="r", source_ip=None,
                        user_agent=None, request_id=None, session_hash=None, trace_id=None)
    assert event["outcome"] == outcome
    assert event["subjects"] == {"user": "anonymous"}


def test_event_types_follow_toolhive_names() -> None:
    assert event_type("tools/list") == "mcp_tools_list"
    assert event_type("notifications/initialized") == "mcp_notification"
    assert event_type("other") == "mcp_request"


def test_arguments_are_redacted_at_any_depth_and_capped() -> None:
    nested = {"outer": {"Token": "t", "list": [{"api_key": "k"}]}}
    assert arguments_data(nested, frozenset({"token", "api_key"}), 4096) == {
        "arguments": {"outer": {"Token": "[REDACTED]", "list": [{"api_key": "[REDACTED]"}]}}}
    capped = arguments_data({"text": "é" * 500}, frozenset(), 64)
    assert capped["truncated"] is True
    assert len(capped["arguments"].encode()) <= 64
    assert capped["arguments_bytes"] > 1000


class _Stalled(io.StringIO):
    """A sink whose writes wait until released: a disk that stopped answering."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        self.release.wait(10)
        return super().write(text)


@pytest.mark.anyio
async def test_a_stalled_sink_drops_and_counts_instead_of_blocking() -> None:
    sink = _Stalled()
    trail = AuditTrail(AuditConfig(enabled=True, queue_size=2), stream=sink)
    async with trail:
        assert trail.emit({"n": 0})
        await anyio.to_thread.run_sync(sink.entered.wait, 5)   # the writer holds event 0
        results = [trail.emit({"n": n}) for n in range(1, 10)]  # never waits
        assert results == [True, True] + [False] * 7
        assert trail.dropped == 7
        sink.release.set()
    assert [json.loads(line)["n"] for line in sink.getvalue().splitlines()] == [0, 1, 2]
    assert trail.written == 3


@pytest.mark.anyio
async def test_a_file_sink_appends_one_json_event_per_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"earlier": true}\n')
    async with AuditTrail(AuditConfig(enabled=True, sink=f"file:{path}")) as trail:
        trail.emit({"type": "mcp_ping"})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"earlier": True}, {"type": "mcp_ping"}]
    with pytest.raises(ConfigError, match=r"audit\.sink"):
        AuditTrail(AuditConfig(enabled=True, sink=f"file:{tmp_path}/missing/dir/a.jsonl"))
