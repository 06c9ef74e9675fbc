"""The request path's side of the audit trail: one event per finished MCP request."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from starlette.datastructures import Headers
from starlette.types import Scope

from vmcp import logs, tracing
from vmcp.audit import events
from vmcp.audit.record import OperationRecord
from vmcp.audit.trail import AuditTrail

UNAUDITED_LABELS = frozenset({"stream", "response"})
"""Requests that are no MCP operation of their own (a GET stream opened, a client's answer
to a backend's question): audited only when refused."""


def note_client(record: OperationRecord, client_info: Any) -> None:
    """Take the client's name and version from an ``initialize``'s or a stateless request's
    ``clientInfo``."""
    if isinstance(client_info, dict):
        name, version = client_info.get("name"), client_info.get("version")
        record.client_name = name[:200] if isinstance(name, str) else None
        record.client_version = version[:100] if isinstance(version, str) else None


def note_trace(record: OperationRecord) -> None:
    """Keep the current span's trace id (call inside the request's span)."""
    context = trace.get_current_span().get_span_context()
    if context.trace_id:
        record.extra["trace_id"] = format(context.trace_id, "032x")


def emit(trail: AuditTrail, record: OperationRecord, *, label: str, scope: Scope,
         headers: Headers, status: int, seconds: float, replica_id: str,
         session_id: str | None) -> None:
    """Queue the event of a finished request, if the trail wants its type."""
    record.method = record.method or label
    if label in UNAUDITED_LABELS and status < 400:
        return
    if not trail.wants(events.event_type(record.method)):
        return
    client = scope.get("client")
    config = trail.config
    trail.emit(events.build_event(
        record, status=status, duration_ms=seconds * 1000, replica_id=replica_id,
        source_ip=client[0] if client else None, user_agent=headers.get("user-agent"),
        request_id=logs.request_id.get(),
        session_hash=tracing.session_tag(session_id) if session_id else None,
        trace_id=record.extra.get("trace_id"), include_arguments=config.include_arguments,
        redact_keys=trail.redact_keys, max_data_bytes=config.max_data_bytes))
