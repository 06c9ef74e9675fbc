"""Early answers of the session endpoint: an error status raised from deep in a request's
handling, and caught once, where the request is answered.

Raising keeps every check (headers, body, credentials, session lookup) one line at its
call site, and makes "exactly one answer" structural: whatever check fails, the
endpoint's ``__call__`` is the only place that writes it.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.datastructures import Headers
from starlette.types import Receive

from vmcp.errors import (
    INVALID_REQUEST_CODE,
    InvalidSessionId,
    NotPermitted,
    ReplicaBusy,
    SessionClosed,
    SessionError,
    StoreError,
    VmcpError,
)
from vmcp.server import jsonrpc

logger = logging.getLogger(__name__)


class Reply(Exception):
    """An early answer: an HTTP status with a JSON-RPC error body."""

    def __init__(self, status: int, body: dict[str, Any],
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or []


def invalid(status: int, message: str, request_id: Any = None,
            headers: list[tuple[bytes, bytes]] | None = None) -> Reply:
    """A refusal of the request itself (JSON-RPC ``Invalid Request``)."""
    return Reply(status, jsonrpc.error(request_id, INVALID_REQUEST_CODE, message), headers)


def error_reply(exc: VmcpError, request_id: Any) -> Reply:
    """The answer to a vmcp error; the store's and the replica's say when to retry, and
    what clients read never names the store's address."""
    headers = [(b"retry-after", b"1")] if isinstance(exc, StoreError | ReplicaBusy) else []
    if isinstance(exc, ReplicaBusy):
        logger.warning("initialize refused: %s", exc)
        message = exc.public_message
    elif isinstance(exc, StoreError):
        # The detail (which store, which address) is for the log, not for clients.
        logger.warning("session store unavailable: %s", exc)
        message = exc.public_message
    elif isinstance(exc, SessionError | SessionClosed | InvalidSessionId | NotPermitted):
        message = exc.public_message
    else:
        message = str(exc) or exc.public_message
    return Reply(exc.http_status, jsonrpc.error(request_id, exc.jsonrpc_code, message), headers)


async def read_body(receive: Receive, headers: Headers, max_bytes: int) -> bytes:
    """The whole request body, refused with 413 as soon as it is known to be too large
    (by its declared length, or once that many bytes arrived)."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise invalid(413, "Request body too large")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise invalid(400, "Client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise invalid(413, "Request body too large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
