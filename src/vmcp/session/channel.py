"""The way back to the client: messages for one request's stream, and awaited answers.

A backend may send notifications (progress, logs) and requests (sampling, elicitation,
roots) while it serves a call. The gateway relays them on the client's stream under ids
of its own, so two backends' request ids can never collide, and matches the client's
answer (a later POST) back to the waiting call.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

import anyio

from vmcp.session.detached import StreamCopy
from vmcp.session.streams import Outbound, ResponseStream

CLIENT_ANSWER_TIMEOUT = 300.0


class PendingClientRequests:
    """Requests relayed to the client that wait for its answer, by gateway-assigned id."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._ids = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def open(self, request_id: str | None = None
             ) -> tuple[str, asyncio.Future[dict[str, Any]]]:
        """A new awaited answer, under a fresh id unless ``request_id`` (unguessable,
        unique) is given."""
        if request_id is None:
            request_id = f"{self._prefix}-{next(self._ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        return request_id, future

    def discard(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)

    def deliver(self, message: dict[str, Any]) -> bool:
        """Hand the client's answer to whoever waits for it; False if nobody does."""
        request_id = message.get("id")
        future = self._waiting.pop(request_id, None) if isinstance(request_id, str) else None
        if future is None or future.done():
            return False
        future.set_result(message)
        return True

    def cancel_all(self) -> None:
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()


class ClientChannel:
    """What one client request's handler may send back before its final response."""

    def __init__(
        self,
        pending: PendingClientRequests,
        stream: ResponseStream,
        *,
        request_id: Any,
        answers_elsewhere: Callable[[], AbstractAsyncContextManager[None]] | None = None,
        persist: Callable[[ResponseStream], StreamCopy] | None = None,
        stop: Callable[[], None] | None = None,
    ) -> None:
        self._pending = pending
        self._stream = stream
        self.request_id = request_id
        self._answers_elsewhere = answers_elsewhere
        self._persist = persist
        self._stop = stop

    @property
    def stream_id(self) -> str:
        return self._stream.id

    @property
    def next_seq(self) -> int:
        """The sequence number the stream's next event gets."""
        return len(self._stream) + 1

    async def notify(self, message: dict[str, Any]) -> None:
        """Queue a message on the request's stream; waits while the client is behind
        (which stops the backend's response being read: backpressure)."""
        await self._put(Outbound(message))

    async def _put(self, item: Outbound) -> None:
        if not await self._stream.put(item) and self._stop is not None:
            # The stream is over (the client fell too far behind, or it was answered):
            # the request stops, and the backend is told it was cancelled.
            self._stop()

    def pause(self, retry_ms: int) -> None:
        """Ask the client to drop this stream now and resume it after ``retry_ms``."""
        self._stream.append(Outbound(None, pause_ms=retry_ms))

    async def request(self, method: str, params: dict[str, Any] | None, *,
                      request_id: str | None = None, wait_seconds: float = CLIENT_ANSWER_TIMEOUT,
                      answers_elsewhere: AbstractAsyncContextManager[None] | None = None,
                      resumable: bool = False) -> dict[str, Any]:
        """Ask the client and return its JSON-RPC answer (a ``result`` or an ``error``).

        ``request_id``, ``answers_elsewhere`` (where answers POSTed to other replicas come
        from) and ``wait_seconds`` replace the defaults; ``resumable`` copies the stream to the
        event log once the question is on it, so that the client can follow the request
        on another replica even if this one goes away."""
        request_id, answer = self._pending.open(request_id)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        # The client may POST its answer to any replica: listen before asking.
        if answers_elsewhere is None:
            answers_elsewhere = (self._answers_elsewhere() if self._answers_elsewhere
                                 else nullcontext())
        try:
            async with answers_elsewhere:
                await self._put(Outbound(message))
                with anyio.fail_after(wait_seconds):
                    if resumable and self._persist is not None:
                        await self._persist(self._stream).wait()
                    return await answer
        finally:
            self._pending.discard(request_id)
