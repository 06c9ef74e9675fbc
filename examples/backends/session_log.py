"""A backend's own account of the sessions it opens and ends, one JSON line each.

A gateway's figures say what the gateway believes it did; what counts for a leak is what
the backend saw. Wrapped around a backend's ASGI app, this appends to a file a line
``{"event": "opened", ...}`` for every ``initialize`` answered with an ``Mcp-Session-Id``
and ``{"event": "ended", ...}`` for every DELETE answered 2xx, with this process's pid
(a restarted backend is a new process that remembers none of the old sessions), the time
on the system-wide monotonic clock (``at``, comparable with other processes' on this
machine) and the value of the ``X-Replica`` request header, which a gateway can be
configured to send to name itself.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REPLICA_HEADER = b"x-replica"
SESSION_HEADER = b"mcp-session-id"


def _append(path: Path, line: dict[str, object]) -> None:
    # One short write per line on a file opened for appending: lines never interleave.
    with path.open("a", encoding="utf-8") as log:
        log.write(json.dumps(line) + "\n")


def logging_sessions(app: ASGIApp, path: Path) -> ASGIApp:
    """``app``, writing down each session it opens and ends to ``path``."""
    pid = os.getpid()

    async def logged(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "DELETE"):
            await app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        by = headers.get(REPLICA_HEADER, b"").decode("latin-1")
        asked = headers.get(SESSION_HEADER, b"").decode("latin-1")

        async def watching(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                answered = dict(message.get("headers", [])).get(SESSION_HEADER)
                if scope["method"] == "DELETE" and 200 <= status < 300 and asked:
                    _append(path, {"event": "ended", "session": asked, "pid": pid, "by": by,
                                   "at": time.monotonic()})
                elif scope["method"] == "POST" and not asked and answered and status == 200:
                    _append(path, {"event": "opened", "session": answered.decode("latin-1"),
                                   "pid": pid, "by": by, "at": time.monotonic()})
            await send(message)

        await app(scope, receive, watching)

    return logged


__all__ = ["logging_sessions"]
