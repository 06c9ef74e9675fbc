"""What an operator keeps of each request: its metric, and one structured log line."""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass

from vmcp.server import jsonrpc
from vmcp.server.jsonrpc import Incoming
from vmcp.telemetry import Metrics

logger = logging.getLogger(__name__)


@dataclass
class RequestRecord:
    """What one request's log line and metric say, filled in as it is served (the
    detached work of a call shares it through the context)."""

    status: int = 0
    complete: bool = False
    outcome: str = "ok"
    tool: str | None = None
    backend: str | None = None
    session_id: str | None = None


current_record: contextvars.ContextVar[RequestRecord] = contextvars.ContextVar(
    "vmcp_request_record")
# The metric label of requests that carry no MCP method.
VERB_LABELS = {"GET": "stream", "DELETE": "end_session"}


def method_label(message: Incoming) -> str:
    """The metrics label of a message: MCP's own method names only, so that a client
    sending made-up methods cannot grow the number of time series without bound."""
    if message.kind == "response":
        return "response"
    known = jsonrpc.REQUEST_MODELS if message.kind == "request" else jsonrpc.NOTIFICATION_MODELS
    return message.method if message.method in known else "other"


def log_request(record: RequestRecord, method: str, session_id: str | None, seconds: float,
                metrics: Metrics | None) -> None:
    """The request's metric and its one log line: what an operator keeps of it."""
    outcome = record.outcome
    if record.status >= 400 or not record.status:
        outcome = "error"
    if metrics is not None:
        metrics.observe_request(method, record.status, outcome, seconds)
    session = session_id or record.session_id
    logger.info("%s %s %d in %.1f ms", method, outcome, record.status, seconds * 1000,
                extra={"method": method, "tool": record.tool, "backend": record.backend,
                       "status": record.status, "outcome": outcome,
                       "duration_ms": round(seconds * 1000, 3),
                       "session_id": session or None})
