"""Log output: one JSON object per line for machines, or plain lines for a terminal.

Modules log with ``extra={"session_id": ..., "backend": ...}``; those fields, the id of
the request being served and this replica's id become JSON keys (or ``key=value`` pairs on
the console). A session id is a credential: it is written as its hash (the same tag the
traces carry), never as is. Tokens are never passed to a logger, and as a second line of
defence any value that looks like a bearer credential is masked.
"""

from __future__ import annotations

import collections
import contextvars
import json
import logging
import re
import sys
import time

from vmcp.tracing import session_tag

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "vmcp_request_id", default=None)

CONTEXT_FIELDS = ("session_id", "backend", "replica_id", "security_event", "error", "method",
                  "tool", "status", "outcome", "duration_ms")
# Libraries whose debug output drowns vmcp's own (the HTTP client logs every header).
CHATTY_LIBRARIES = ("httpx2", "httpcore2", "httpx", "httpcore", "hpack", "h2", "asyncio",
                    "opentelemetry", "urllib3")
_replica: list[str] = []


def set_replica(replica_id: str) -> None:
    """Name this replica on every line from now on."""
    _replica[:] = [replica_id]


def _context(record: logging.LogRecord) -> dict[str, object]:
    """The context fields of ``record``: the request id, the replica, its extras."""
    fields: dict[str, object] = {}
    current = request_id.get()
    if current is not None:
        fields["request_id"] = current
    if _replica:
        fields["replica_id"] = _replica[0]
    for name in CONTEXT_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            fields[name] = session_tag(str(value)) if name == "session_id" else value
    return fields
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9\-._~+/]+=*")


def _mask(text: str) -> str:
    return _BEARER.sub(r"\1***", text)


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", <context fields>, "exc"}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _mask(record.getMessage()),
            **_context(record),
        }
        if record.exc_info:
            entry["exc"] = _mask(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


class ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = _mask(super().format(record))
        context = [f"{name}={value}" for name, value in _context(record).items()]
        return f"{line} [{' '.join(context)}]" if context else line


class RecentProblems(logging.Handler):
    """The last warnings and errors of this process, for the status page."""

    def __init__(self, size: int = 20) -> None:
        super().__init__(logging.WARNING)
        self.entries: collections.deque[dict[str, str]] = collections.deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        self.entries.append({
            "time": time.strftime("%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "message": _mask(record.getMessage())[:500],
        })


_recent = RecentProblems()


def recent_problems() -> list[dict[str, str]]:
    """Newest last; installed on the root logger on first use."""
    root = logging.getLogger()
    if _recent not in root.handlers:
        root.addHandler(_recent)
    return list(_recent.entries)


def configure(level: str = "info", fmt: str = "auto") -> None:
    """Install one handler on the root logger; ``auto`` is console on a TTY, else JSON.

    The HTTP client and other chatty libraries log warnings only, so that ``debug`` shows
    vmcp's own debug lines rather than every header sent; ``trace`` is ``debug`` with
    theirs too."""
    library_level = "debug" if level == "trace" else "warning"
    level = "debug" if level == "trace" else level
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler, _recent]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(library_level.upper())
