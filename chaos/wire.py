"""One HTTP exchange with the gateway, read to its end and written down as a Record.

Every request the clients make goes through :meth:`Wire.exchange`, which enforces the
request's bound (past it the request counts as unanswered), reads JSON or SSE answers,
answers the server's own requests met on a stream (sampling, elicitation), can leave a
stream on purpose (to resume it later), and notes which replica answered (nginx's
``X-Upstream`` header).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2

from chaos.history import Record
from tests.support.mcp_http import sse_events

JSON_TYPE = "application/json"
EVENT_STREAM = "text/event-stream"
WHO = re.compile(r"who=([a-z]+)#")
"""How answers name who asked: clients put ``who=<identity>#<nonce>`` in what they send."""

Message = dict[str, Any]
ServerRequestHandler = Callable[[Message], Awaitable[None]]


@dataclass
class Exchange:
    """What one exchange brought back, beyond its Record."""

    record: Record
    reply: Message | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    last_event_id: str | None = None
    left: bool = False
    paused: bool = False


def _answer_identity(reply: Message | None) -> str | None:
    if reply is None or "result" not in reply:
        return None
    found = WHO.search(json.dumps(reply["result"]))
    return found.group(1) if found else None


def _error_code(reply: Message | None) -> int | None:
    if reply is None:
        return None
    error = reply.get("error")
    if isinstance(error, dict) and isinstance(error.get("code"), int):
        return int(error["code"])
    return None


def _is_reply(message: Message, request_id: object) -> bool:
    return message.get("id") == request_id and ("result" in message or "error" in message)


class Wire:
    """Sends requests to the balancer and appends what happened to ``records``."""

    def __init__(self, http: httpx2.AsyncClient, url: str, clock: Callable[[], float],
                 replica_of_port: Callable[[int], str | None]) -> None:
        self.http = http
        self.url = url
        self.clock = clock
        self.replica_of_port = replica_of_port
        self.records: list[Record] = []
        self._seq = itertools.count(1)

    def _replica(self, upstream: str | None) -> str | None:
        if not upstream:
            return None
        last = upstream.split(",")[-1].strip()
        try:
            return self.replica_of_port(int(last.rsplit(":", 1)[1]))
        except (IndexError, ValueError):
            return None

    async def exchange(self, *, client: str, identity: str, kind: str, method: str,
                       verb: str, headers: Mapping[str, str], bound: float,
                       body: Message | None = None, session: str | None = None,
                       session_owner: str | None = None,
                       on_request: ServerRequestHandler | None = None,
                       leave_after: int | None = None, listen_for: float | None = None,
                       reply_id: object = None) -> Exchange:
        """Send one request and read its answer, all within ``bound`` seconds.

        A request with an ``id`` is due a reply with that id (``final`` says whether it
        came). ``leave_after`` leaves an SSE answer after so many notifications (the
        exchange is then ``left``; its reply is not owed on this connection);
        ``listen_for`` holds a GET stream open for so long and then closes it; ``reply_id``
        names the reply a GET resuming a call's stream is due.
        """
        seq = next(self._seq)
        if body is not None:  # a request is due its reply; a notification or answer none
            reply_id = body.get("id") if "method" in body else None
        start = self.clock()
        status: int | None = None
        reply: Message | None = None
        answer_headers: Mapping[str, str] = {}
        transport_error: str | None = None
        last_event_id: str | None = None
        left = False
        events = 0
        with anyio.move_on_after(bound):
            try:
                async with self.http.stream(verb, self.url, json=body,
                                            headers=dict(headers)) as response:
                    status = response.status_code
                    answer_headers = dict(response.headers)
                    content_type = response.headers.get("content-type", "")
                    if content_type.startswith(EVENT_STREAM):
                        with anyio.move_on_after(listen_for if listen_for is not None
                                                 else float("inf")):
                            async for event_id, message in sse_events(response):
                                last_event_id = event_id or last_event_id
                                if message is None:
                                    continue
                                events += 1
                                if reply_id is not None and _is_reply(message, reply_id):
                                    reply = message
                                    break
                                if "method" in message and "id" in message:
                                    if on_request is not None:
                                        await on_request(message)
                                elif leave_after is not None and events >= leave_after:
                                    left = True
                                    break
                    else:
                        raw = await response.aread()
                        if raw and content_type.startswith(JSON_TYPE):
                            parsed = json.loads(raw)
                            reply = parsed if isinstance(parsed, dict) else None
            except httpx2.TransportError as exc:
                transport_error = type(exc).__name__
            except json.JSONDecodeError:
                transport_error = "bad JSON"
        end = self.clock()
        replied = reply is not None and ("result" in reply or "error" in reply)
        # An SSE answer that ends cleanly before its reply, after events with ids, is the
        # server's way of asking the client to resume (SSE polling; a drain; a backend that
        # closed its stream): the reply is owed by the resumed stream, not this one.
        paused = (not replied and not left and reply_id is not None and listen_for is None
                  and status == 200 and transport_error is None and last_event_id is not None
                  and end - start < bound)
        final = reply_id is None or left or paused or replied
        if status is not None and transport_error is not None and not final:
            transport_error = None  # a status came, then the stream broke: a cut, not silence
        record = Record(
            seq=seq, client=client, identity=identity, kind=kind, method=method,
            start=start, end=end, bound=bound, status=status, final=final, session=session,
            session_owner=session_owner, replica=self._replica(answer_headers.get("x-upstream")),
            error_code=_error_code(reply), answer_identity=_answer_identity(reply),
            transport_error=transport_error,
            summary=("left" if left else "paused" if paused
                     else f"{events} events" if events else ""))
        self.records.append(record)
        return Exchange(record, reply, answer_headers, last_event_id, left, paused)


__all__ = ["EVENT_STREAM", "JSON_TYPE", "WHO", "Exchange", "Message", "Wire"]
