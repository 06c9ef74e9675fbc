"""Many client sessions' requests over one stdio MCP server's single message stream.

A stdio server has one stdin and one stdout, and the JSON-RPC on them has one id space.
The gateway shares one process among all the client sessions of a replica, so every
request gets a fresh id on the stdio stream (each client session numbers its requests
1, 2, …, so their ids collide), and the answer is matched back by that id. A client's
``progressToken`` is rewritten the same way, so a progress notification reaches the
request (and so the session) that asked for it, with the client's own token restored.
A request the caller abandons is cancelled on the stream under the id it had there.

What the server sends outside an answer is routed like this:

* ``notifications/progress`` — to the request that owns the token; else dropped;
* other notifications — to the link's ``on_message`` (the process broadcasts list
  changes to every session using it, see :mod:`vmcp.backend.stdio`);
* ``ping`` — answered here;
* any other request (sampling, elicitation, ``roots/list``) — stdio carries no "related
  request" id, so it goes to the request whose ``progressToken`` it names in ``_meta``,
  or, if exactly one request that can take one is in flight (a client's call, not a
  listing the gateway makes for itself), to that one (its session's client answers);
  otherwise it is refused with a JSON-RPC error saying why. It is never left unanswered.

The framing (one JSON-RPC message per line) is the SDK's stdio client's; its message
types are the SDK's. The multiplexing is written here because the SDK's
``ClientSession`` serves one client: it answers server requests with callbacks that
cannot tell which caller's request they belong to.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

import anyio
import anyio.abc
import mcp_types as types
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp_types import InitializeResult

from vmcp.backend import wire
from vmcp.backend.contract import MessageHandler
from vmcp.backend.stdio_supervisor import MessageCallback, ReadStream, WriteStream
from vmcp.errors import BackendUnavailable

logger = logging.getLogger(__name__)

NOTIFY_SECONDS: Final = 2.0
"""Time a request's handler has to take one notification before it is dropped (the
stream is shared: one slow client must not hold up the others)."""
CANCEL_SECONDS: Final = 2.0
TOKEN_PREFIX: Final = "vmcp-progress-"


@dataclass(slots=True)
class _Pending:
    """One request in flight on the stream."""

    on_message: MessageHandler | None
    internal: bool = False
    """The supervisor's own (initialize, ping): no client's request."""
    client_token: Any = None
    wire_token: str | None = None
    answer: dict[str, Any] | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None


class StdioLink:
    """The client end of one running stdio server, shared by every caller.

    Used as an async context manager around the process's streams (the supervisor makes
    one per run). :meth:`request` may be called from many tasks at once.
    """

    def __init__(self, backend: str, read: ReadStream, write: WriteStream,
                 on_message: MessageCallback, *, hello: Mapping[str, Any],
                 protocol_version: str, on_closed: Callable[[str], None]) -> None:
        self._backend = backend
        self._on_closed = on_closed
        self._read = read
        self._write = write
        self._on_message = on_message
        self._hello = dict(hello)
        self._protocol_version = protocol_version
        self._ids = itertools.count(1)
        self._tokens = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._by_token: dict[str, int] = {}
        self._closed: str | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self.initialize_result: dict[str, Any] = {}

    async def __aenter__(self) -> StdioLink:
        self._tg = await anyio.create_task_group().__aenter__()
        self._tg.start_soon(self._read_loop)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._close("the stdio server stopped")
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(exc_type, exc, tb)

    # -- what the supervisor uses ----------------------------------------------

    async def initialize(self) -> InitializeResult:
        """The handshake, once per process; raises ``MCPError`` if the server refuses."""
        params = {"protocolVersion": self._protocol_version, **self._hello}
        try:
            answer = await self._request_raw("initialize", params, internal=True)
        except BackendUnavailable:
            raise MCPError(code=types.CONNECTION_CLOSED, message="Connection closed") from None
        if "error" in answer:
            error = answer["error"]
            raise MCPError(code=error.get("code", types.INTERNAL_ERROR),
                           message=str(error.get("message", "")))
        result = InitializeResult.model_validate(answer.get("result"))
        self.initialize_result = answer["result"]
        await self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return result

    async def send_ping(self) -> None:
        try:
            answer = await self._request_raw("ping", None, internal=True)
        except BackendUnavailable:
            raise MCPError(code=types.CONNECTION_CLOSED, message="Connection closed") from None
        if "error" in answer:
            raise MCPError(code=types.INTERNAL_ERROR, message="ping refused")

    # -- what the gateway's connections use --------------------------------------

    async def request(self, method: str, params: dict[str, Any] | None, *,
                      on_message: MessageHandler | None) -> dict[str, Any]:
        """Send one request under a fresh id; its response message (result or error).

        Raises ``BackendUnavailable`` if the server stops before answering. If the caller
        is cancelled, the server is sent ``notifications/cancelled`` for the id it saw.
        """
        return await self._request_raw(method, params, on_message)

    async def send(self, message: dict[str, Any]) -> None:
        """Write one notification or response as it is."""
        if self._closed is not None:
            raise BackendUnavailable(self._backend, self._closed)
        try:
            await self._write.send(SessionMessage(
                types.jsonrpc_message_adapter.validate_python(message)))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._close("the stdio server's stdin closed")
            raise BackendUnavailable(self._backend, "the stdio server's stdin closed") from None

    # -- the multiplexing --------------------------------------------------------

    async def _request_raw(self, method: str, params: dict[str, Any] | None,
                           on_message: MessageHandler | None = None, *,
                           internal: bool = False) -> dict[str, Any]:
        wire_id = next(self._ids)
        pending = _Pending(on_message, internal)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": wire_id, "method": method}
        if params is not None:
            message["params"] = self._with_wire_token(params, pending, wire_id)
        self._pending[wire_id] = pending
        try:
            await self.send(message)
            await pending.done.wait()
        except anyio.get_cancelled_exc_class():
            if not pending.done.is_set() and self._closed is None:
                with anyio.move_on_after(CANCEL_SECONDS, shield=True):
                    with contextlib.suppress(BackendUnavailable):
                        await self.send({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                         "params": {"requestId": wire_id,
                                                    "reason": "cancelled"}})
            raise
        finally:
            self._forget(wire_id)
        if pending.error is not None:
            raise pending.error
        assert pending.answer is not None
        return pending.answer

    def _with_wire_token(self, params: dict[str, Any], pending: _Pending,
                         wire_id: int) -> dict[str, Any]:
        meta = params.get("_meta")
        if not isinstance(meta, dict) or "progressToken" not in meta:
            return params
        token = f"{TOKEN_PREFIX}{next(self._tokens)}"
        pending.client_token, pending.wire_token = meta["progressToken"], token
        self._by_token[token] = wire_id
        return {**params, "_meta": {**meta, "progressToken": token}}

    def _forget(self, wire_id: int) -> None:
        pending = self._pending.pop(wire_id, None)
        if pending is not None and pending.wire_token is not None:
            self._by_token.pop(pending.wire_token, None)

    def _close(self, why: str) -> None:
        """Fail every request in flight with ``why``; later calls fail at once."""
        if self._closed is not None:
            return
        self._closed = why
        for pending in self._pending.values():
            if not pending.done.is_set():
                pending.error = BackendUnavailable(self._backend, f"{why} during the request")
                pending.done.set()

    async def _read_loop(self) -> None:
        try:
            async for item in self._read:
                if isinstance(item, Exception):
                    logger.error("stdio backend %r wrote something that is not JSON-RPC on "
                                 "stdout: %s", self._backend, str(item).splitlines()[0][:200]
                                 if str(item) else type(item).__name__,
                                 extra={"backend": self._backend})
                    await self._on_message(item)
                    continue
                await self._dispatch(item.message.model_dump(by_alias=True, exclude_unset=True,
                                                             mode="json"))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass
        finally:
            self._close("the stdio server stopped (its stdout closed)")
            # The supervisor restarts it; its stderr (in the log) usually says why.
            self._on_closed("it stopped (its stdout closed; its stderr is in the log)")

    async def _dispatch(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        if method is None:
            answer_id = message.get("id")
            if isinstance(answer_id, str) and answer_id.isdigit():
                answer_id = int(answer_id)  # a server that echoes the id as a string
            pending = self._pending.get(answer_id) if isinstance(answer_id, int) else None
            if pending is None or pending.done.is_set():
                logger.debug("stdio backend %r: answer to an unknown id %r", self._backend,
                             message.get("id"))
                return
            pending.answer = message
            pending.done.set()
        elif "id" in message:
            assert self._tg is not None
            self._tg.start_soon(self._answer_server_request, message)
        elif method == "notifications/progress":
            await self._progress(message)
        else:
            await self._on_message(message)

    async def _progress(self, message: dict[str, Any]) -> None:
        params = message.get("params") or {}
        token = params.get("progressToken")
        wire_id = self._by_token.get(token) if isinstance(token, str) else None
        pending = self._pending.get(wire_id) if wire_id is not None else None
        if pending is None or pending.on_message is None:
            return
        restored = {**message, "params": {**params, "progressToken": pending.client_token}}
        with anyio.move_on_after(NOTIFY_SECONDS):
            await wire.deliver(self._backend, restored, pending.on_message)

    def _owner_of(self, message: dict[str, Any]) -> tuple[_Pending | None, str]:
        """The request a server-to-client request belongs to, or why none can be named."""
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        if isinstance(token, str) and token in self._by_token:
            return self._pending.get(self._by_token[token]), ""
        # Only requests that can take a server request count (listings the gateway makes
        # for its catalogs cannot, and are not what a server would be asking for).
        live = [p for p in self._pending.values()
                if not p.done.is_set() and not p.internal and p.on_message is not None]
        if len(live) == 1:
            return live[0], ""
        return None, (f"the stdio backend {self._backend!r} sent {message.get('method')!r} "
                      f"while {len(live)} client requests were in flight on it; stdio cannot "
                      "tell which client it is for, so vmcp refused it")

    async def _answer_server_request(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        if message.get("method") == "ping":
            reply = await wire.answer(self._backend, message, None)
        else:
            owner, why = self._owner_of(message)
            if owner is None:
                logger.warning("%s", why, extra={"backend": self._backend})
                reply = wire.error_reply(request_id, types.INVALID_REQUEST, why)
            else:
                reply = await wire.answer(self._backend, message, owner.on_message)
        try:
            await self.send(reply)
        except BackendUnavailable:
            logger.debug("stdio backend %r: answer to %r not delivered (stopped)",
                         self._backend, message.get("method"))
