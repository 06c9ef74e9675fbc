"""Audit events in the shape ToolHive emits (NIST SP 800-53 AU-3: what, when, where, who,
outcome), plus what a replicated gateway needs to join them up: the replica, a hash of
the session id (never the id: it is a credential), the trace id and the deciding policies.

One event::

    {"type": "mcp_tool_call", "loggedAt": "2026-12-06T10:00:00.123456Z",
     "outcome": "success" | "failure" | "denied" | "error", "component": "vmcp",
     "subjects": {"user", "user_id", "issuer", "client_name", "client_version"},
     "source": {"type": "network", "value": <ip>, "extra": {"user_agent", "request_id"}},
     "target": {"type", "method", "name", "backend", "original_name"},
     "metadata": {"auditId", "extra": {"duration_ms", "jsonrpc_error_code", "http_status",
                  "replica_id", "session_hash", "trace_id", "policy_ids",
                  "protocol_version"}},
     "data": {"arguments": ...}}              # only with include_arguments

``failure`` is a refused or failed request (an authentication refusal, a bad request,
an unknown session); ``error`` is a JSON-RPC error answer or a backend failure;
``denied`` is an authorization refusal.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Mapping
from typing import Any

from vmcp.audit.record import OperationRecord
from vmcp.identity import Principal

COMPONENT = "vmcp"
REDACTED = "[REDACTED]"

EVENT_TYPE_OF = {
    "initialize": "mcp_initialize",
    "tools/call": "mcp_tool_call",
    "tools/list": "mcp_tools_list",
    "prompts/get": "mcp_prompt_get",
    "prompts/list": "mcp_prompts_list",
    "resources/read": "mcp_resource_read",
    "resources/subscribe": "mcp_resource_read",
    "resources/unsubscribe": "mcp_resource_read",
    "resources/list": "mcp_resources_list",
    "resources/templates/list": "mcp_resource_templates_list",
    "completion/complete": "mcp_completion",
    "ping": "mcp_ping",
    "logging/setLevel": "mcp_logging",
    "server/discover": "mcp_discover",
    "end_session": "mcp_session_end",
}


def event_type(method: str) -> str:
    """The event type of an MCP method (``mcp_request`` for any other)."""
    if method.startswith("notifications/"):
        return "mcp_notification"
    return EVENT_TYPE_OF.get(method, "mcp_request")


def outcome_of(record: OperationRecord, status: int) -> str:
    if record.denied:
        return "denied"
    if status >= 400 or not status:
        return "failure"
    if record.error_code is not None:
        return "error"
    return "success"


def build_event(record: OperationRecord, *, status: int, duration_ms: float,
                replica_id: str, source_ip: str | None, user_agent: str | None,
                request_id: str | None, session_hash: str | None, trace_id: str | None,
                include_arguments: bool = False, redact_keys: frozenset[str] = frozenset(),
                max_data_bytes: int = 4096) -> dict[str, Any]:
    """The audit event of one finished request."""
    subjects = subjects_of(record.principal)
    if record.client_name:
        subjects["client_name"] = record.client_name
    if record.client_version:
        subjects["client_version"] = record.client_version
    target: dict[str, str] = {"method": record.method}
    for key, value in (("type", record.target_type), ("name", record.name),
                       ("backend", record.backend), ("original_name", record.original_name)):
        if value:
            target[key] = value
    extra: dict[str, Any] = {"duration_ms": round(duration_ms, 3), "http_status": status,
                             "replica_id": replica_id, "policy_ids": list(record.policy_ids)}
    optional: dict[str, object] = {
        "jsonrpc_error_code": record.error_code, "session_hash": session_hash,
        "trace_id": trace_id, "protocol_version": record.protocol_version}
    extra.update((key, value) for key, value in optional.items() if value is not None)
    source_extra = {k: v for k, v in (("user_agent", user_agent), ("request_id", request_id))
                    if v}
    event: dict[str, Any] = {
        "metadata": {"auditId": str(uuid.uuid4()), "extra": extra},
        "type": event_type(record.method),
        "loggedAt": datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z"),
        "source": {"type": "network", "value": source_ip or "", "extra": source_extra},
        "outcome": outcome_of(record, status),
        "subjects": subjects,
        "component": COMPONENT,
        "target": target,
    }
    if include_arguments and record.arguments is not None:
        event["data"] = arguments_data(record.arguments, redact_keys, max_data_bytes)
    return event


def subjects_of(principal: Principal | None) -> dict[str, str]:
    """Who acted, as an event's ``subjects`` name them (never a credential)."""
    if principal is None or principal.is_anonymous:
        return {"user": "anonymous"}
    claims = principal.claims
    user_id = str(claims.get("sub") or principal.subject or "")
    display = next((claims[k] for k in ("name", "preferred_username", "email")
                    if isinstance(claims.get(k), str) and claims[k]), user_id)
    subjects = {"user": str(display), "user_id": user_id}
    if principal.issuer:
        subjects["issuer"] = principal.issuer
    return subjects


def redact(value: Any, keys: frozenset[str]) -> Any:
    """``value`` with the values of ``keys`` (case-insensitive, any depth) replaced."""
    if isinstance(value, Mapping):
        return {k: REDACTED if str(k).lower() in keys else redact(v, keys)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(item, keys) for item in value]
    return value


def arguments_data(arguments: Mapping[str, Any], keys: frozenset[str],
                   max_bytes: int) -> dict[str, Any]:
    """``{"arguments": <redacted>}``; over ``max_bytes`` of JSON, the start of that JSON
    as a string, marked truncated."""
    text = json.dumps(redact(arguments, keys), ensure_ascii=False, default=str,
                      separators=(",", ":"))
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return {"arguments": json.loads(text)}
    cut = encoded[:max_bytes].decode("utf-8", errors="ignore")
    return {"arguments": cut, "truncated": True, "arguments_bytes": len(encoded)}
