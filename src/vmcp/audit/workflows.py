"""Audit events of composite tool runs: the run's start and end, each step's outcome,
each question to the user.

The composite call itself is audited like any ``tools/call``; these events tell what
happened inside it, in the same shape, joined by the run's ``run_id``, which a run
continued on another replica (after the user's answer) keeps; its start there says
``resumed``. Step arguments and error texts (which may quote them), and the user's
answers, are recorded only with ``audit.include_arguments`` (redacted and capped like a
call's arguments); the step's tool, type, status, attempts and duration always are.

Types: ``mcp_composite_start``, ``mcp_composite_step``, ``mcp_composite_elicitation``,
``mcp_composite_end``.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

from vmcp.audit.events import COMPONENT, arguments_data, subjects_of
from vmcp.audit.trail import AuditTrail
from vmcp.identity import Principal

EVENT_TYPES: Final = {
    "workflow_started": "mcp_composite_start",
    "workflow_ended": "mcp_composite_end",
    "elicitation_asked": "mcp_composite_elicitation",
    "elicitation_answered": "mcp_composite_elicitation",
}
STEP_EVENT: Final = "mcp_composite_step"
OUTCOMES: Final = {"completed": "success", "failed": "failure", "skipped": "skipped",
                   "ok": "success", "cancelled": "cancelled", "suspended": "waiting"}

StepObserver = Callable[[str, str, Mapping[str, Any]], None]


def observer_for(trail: AuditTrail, *, replica_id: str) -> Callable[[str, Principal],
                                                                     StepObserver]:
    """What the composite registry asks for each call: an observer writing its events."""

    def for_call(tool: str, principal: Principal) -> StepObserver:
        def observe(step: str, event: str, facts: Mapping[str, Any]) -> None:
            kind = EVENT_TYPES.get(event, STEP_EVENT)
            if trail.wants(kind):
                trail.emit(build(trail, kind, tool, step, event, facts, principal,
                                 run_id=str(facts.get("run_id")), replica_id=replica_id))

        return observe

    return for_call


def build(trail: AuditTrail, kind: str, tool: str, step: str, event: str,
          facts: Mapping[str, Any], principal: Principal, *, run_id: str,
          replica_id: str) -> dict[str, Any]:
    """One event of a run."""
    target: dict[str, Any] = {"type": "composite_tool", "name": tool}
    extra: dict[str, Any] = {"run_id": run_id, "replica_id": replica_id}
    outcome = "success"
    if step:
        target["step"] = step
    if kind == STEP_EVENT:
        outcome = OUTCOMES.get(event, event)
        target["step_type"] = facts.get("type")
        if facts.get("tool"):
            target["backend_tool"] = facts["tool"]
        extra.update(duration_ms=round(float(facts.get("seconds") or 0) * 1000, 3),
                     attempts=facts.get("attempts"))
    elif event == "elicitation_asked":
        outcome = "asked"
    elif event == "elicitation_answered":
        action = str(facts.get("action"))
        outcome = "answered" if action == "accept" else "declined"
        extra["action"] = action
    elif event == "workflow_ended":
        outcome = OUTCOMES.get(str(facts.get("outcome")), "failure")
        extra["duration_ms"] = round(float(facts.get("seconds") or 0) * 1000, 3)
    elif event == "workflow_started":
        extra["resumed"] = bool(facts.get("resumed"))
    event_body: dict[str, Any] = {
        "metadata": {"auditId": str(uuid.uuid4()), "extra": extra},
        "type": kind,
        "loggedAt": datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z"),
        "outcome": outcome,
        "subjects": subjects_of(principal),
        "component": COMPONENT,
        "target": target,
    }
    if trail.config.include_arguments and facts.get("error"):
        event_body["data"] = arguments_data({"error": str(facts["error"])},
                                            trail.redact_keys, trail.config.max_data_bytes)
    return event_body
