"""What one MCP operation's audit event says, filled in while it is served.

The transport starts a record per request; the layers that learn something (which tool,
which backend, which policies decided) write it in. The record is shared through a
context variable, so detached work started by the request (a session call runs in a
task of its own) writes into the same record the transport reads at the end.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vmcp.identity import Principal


@dataclass
class OperationRecord:
    """One request's facts for its audit event (see :func:`vmcp.audit.events.build_event`)."""

    method: str = ""
    principal: Principal | None = None
    target_type: str | None = None
    name: str | None = None
    backend: str | None = None
    original_name: str | None = None
    arguments: Mapping[str, Any] | None = None
    policy_ids: tuple[str, ...] = ()
    denied: bool = False
    error_code: int | None = None
    client_name: str | None = None
    client_version: str | None = None
    protocol_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


_current: contextvars.ContextVar[OperationRecord | None] = contextvars.ContextVar(
    "vmcp_operation_record", default=None)


def start() -> OperationRecord:
    """A fresh record for the request being served, current from now on."""
    record = OperationRecord()
    _current.set(record)
    return record


def current() -> OperationRecord | None:
    """The record of the request being served, if the transport started one."""
    return _current.get()
