"""MCP over plain HTTP requests, for tests that assert on the wire: statuses, headers, bodies.

A :class:`RawSession` is one initialized session; it can talk to any replica's URL, so
tests can move a session between gateway processes by pointing it elsewhere.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx2

PROTOCOL_VERSION = "2025-11-25"
ACCEPT_BOTH = "application/json, text/event-stream"
JSON_TYPE = "application/json"
EVENT_STREAM = "text/event-stream"
BASE_HEADERS = {"Accept": ACCEPT_BOTH, "Content-Type": JSON_TYPE}

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
SESSION_NOT_FOUND = -32001


def initialize_body(
    request_id: int = 1, capabilities: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": dict(capabilities or {}),
            "clientInfo": {"name": "raw-http-test", "version": "0"},
        },
    }


def session_not_found(request_id: int | str) -> dict[str, Any]:
    """The exact 404 body MCP clients recognise as "re-initialize"."""
    return {"jsonrpc": "2.0", "id": request_id,
            "error": {"code": SESSION_NOT_FOUND, "message": "Session not found"}}


def error_of(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC error object of a JSON response, after checking the envelope."""
    content_type = response.headers.get("content-type", "")
    assert content_type.startswith(JSON_TYPE), (response.status_code, response.headers,
                                                response.text)
    body = response.json()
    assert body["jsonrpc"] == "2.0", body
    assert "result" not in body, body
    error = body["error"]
    assert isinstance(error["code"], int), body
    assert isinstance(error["message"], str), body
    assert error["message"], body
    return dict(error)


def _field_value(line: str, name: str) -> str | None:
    if not line.startswith(name + ":"):
        return None
    value = line[len(name) + 1 :]
    return value[1:] if value.startswith(" ") else value


def sse_messages(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The JSON-RPC messages in an SSE stream's lines, as they arrive.

    Events without data (a priming event, a comment) carry no message and are skipped.
    """
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if line:
            value = _field_value(line, "data")
            if value is not None:
                data.append(value)
            continue
        if data and "".join(data).strip():
            message = json.loads("\n".join(data))
            assert isinstance(message, dict), message
            yield message
        data = []
    if data and "".join(data).strip():
        message = json.loads("\n".join(data))
        assert isinstance(message, dict), message
        yield message


async def sse_events(response: httpx2.Response) -> AsyncIterator[
        tuple[str | None, dict[str, Any] | None]]:
    """(event id, JSON-RPC message or None) for each event of an SSE response, as it comes.

    Events without data (a priming event, a bare ``retry``) give None for the message; the
    id is what a client sends back as ``Last-Event-ID`` to resume.
    """
    data: list[str] = []
    event_id: str | None = None
    async for raw in response.aiter_lines():
        line = raw.rstrip("\r")
        if line:
            value = _field_value(line, "data")
            if value is not None:
                data.append(value)
            elif line.startswith("id:"):
                event_id = line[3:].strip()
            continue
        text = "\n".join(data).strip()
        message = json.loads(text) if text else None
        if event_id is not None or message is not None:
            yield event_id, message if isinstance(message, dict) else None
        data, event_id = [], None


def is_reply_to(message: Mapping[str, Any], request_id: int | str) -> bool:
    return message.get("id") == request_id and ("result" in message or "error" in message)


def reply_to(response: httpx2.Response, request_id: int | str) -> dict[str, Any]:
    """The JSON-RPC reply to ``request_id``, from a JSON body or an SSE stream."""
    content_type = response.headers.get("content-type", "")
    if content_type.startswith(JSON_TYPE):
        body = response.json()
        assert isinstance(body, dict), body
        return body
    assert content_type.startswith(EVENT_STREAM), (response.status_code, response.headers)
    for message in sse_messages(response.text.splitlines()):
        if is_reply_to(message, request_id):
            return message
    raise AssertionError(f"no reply to {request_id!r} in the stream:\n{response.text}")


@dataclass
class RawSession:
    """An initialized session, spoken to with plain HTTP requests."""

    http: httpx2.Client
    url: str
    session_id: str
    next_id: int = field(default=100)

    @classmethod
    def open(
        cls, http: httpx2.Client, url: str, capabilities: Mapping[str, Any] | None = None
    ) -> RawSession:
        """``initialize`` then ``notifications/initialized`` on ``url``."""
        response = http.post(url, json=initialize_body(1, capabilities), headers=BASE_HEADERS)
        assert response.status_code == 200, response.text
        session_id = response.headers.get("mcp-session-id")
        assert session_id, response.headers
        session = cls(http, url, session_id)
        notified = session.notify("notifications/initialized")
        assert notified.status_code == 202, notified.text
        return session

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The headers of a request on this session, ``extra`` added or replacing."""
        return {
            **BASE_HEADERS,
            "Mcp-Session-Id": self.session_id,
            "MCP-Protocol-Version": PROTOCOL_VERSION,
            **(extra or {}),
        }

    def request_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def notify(self, method: str, *, url: str | None = None) -> httpx2.Response:
        return self.http.post(
            url or self.url, json={"jsonrpc": "2.0", "method": method}, headers=self.headers()
        )

    def message(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A request with a fresh id."""
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self.request_id(), "method": method}
        if params is not None:
            message["params"] = params
        return message

    def rpc(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        url: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, httpx2.Response]:
        """Send one request (to ``url``, default this session's); (its id, the response)."""
        message = self.message(method, params)
        response = self.http.post(url or self.url, json=message, headers=self.headers(headers))
        return message["id"], response

    def result(self, method: str, params: dict[str, Any] | None = None, *,
               url: str | None = None) -> dict[str, Any]:
        """The ``result`` of a request that must succeed."""
        request_id, response = self.rpc(method, params, url=url)
        assert response.status_code == 200, (response.status_code, response.text)
        reply = reply_to(response, request_id)
        assert "result" in reply, reply
        result = reply["result"]
        assert isinstance(result, dict), reply
        return result

    def tool_names(self, *, url: str | None = None) -> set[str]:
        return {tool["name"] for tool in self.result("tools/list", url=url)["tools"]}

    def delete(self, *, url: str | None = None) -> httpx2.Response:
        return self.http.delete(url or self.url, headers=self.headers())


async def listen_until(client: httpx2.AsyncClient, url: str, session: RawSession, method: str,
                       opened: Any, received: list[dict[str, Any]]) -> None:
    """Hold ``session``'s GET stream on ``url`` until a ``method`` notification arrives.

    ``opened`` (an ``anyio.Event``) is set at the stream's first line, once it is
    subscribed; every message is appended to ``received``.
    """
    headers = session.headers({"Accept": "text/event-stream"})
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            opened.set()
            if line.startswith("data:") and line[5:].strip():
                received.append(json.loads(line[5:]))
                if received[-1].get("method") == method:
                    return


MODERN_VERSION = "2026-07-28"
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
    "io.modelcontextprotocol/clientInfo": {"name": "listen-test", "version": "0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


def modern_headers(method: str, name: str | None = None) -> dict[str, str]:
    """The routing headers of a stateless-revision request."""
    headers = {**BASE_HEADERS, "MCP-Protocol-Version": MODERN_VERSION, "Mcp-Method": method}
    if name is not None:
        headers["Mcp-Name"] = name
    return headers


def modern_call(http: httpx2.Client, url: str, method: str, params: dict[str, Any] | None = None,
                *, name: str | None = None, request_id: int | str = 1) -> dict[str, Any]:
    """One stateless-revision request; its JSON-RPC answer (JSON or the end of a stream)."""
    body = {"jsonrpc": "2.0", "id": request_id, "method": method,
            "params": {**(params or {}), "_meta": MODERN_META}}
    response = http.post(url, json=body, headers=modern_headers(method, name))
    if response.headers.get("content-type", "").startswith(EVENT_STREAM):
        return reply_to(response, request_id)
    answer = response.json()
    assert isinstance(answer, dict), answer
    return answer


class ListenStream:
    """A ``subscriptions/listen`` stream read on a thread of its own, as it arrives.

    ``messages`` holds every JSON-RPC message in order, ``comments`` counts keep-alive
    comments, ``ended`` is set when the server ends the stream. Leaving the block hangs
    up (the socket is shut down, which also unblocks the reading thread).
    """

    def __init__(self, url: str, notifications: Mapping[str, Any], *,
                 request_id: int | str = "listen-1", timeout: float = 30.0) -> None:
        parsed = httpx2.URL(url)
        self._connection = http.client.HTTPConnection(parsed.host, parsed.port, timeout=timeout)
        self._body = json.dumps({"jsonrpc": "2.0", "id": request_id,
                                 "method": "subscriptions/listen",
                                 "params": {"notifications": dict(notifications),
                                            "_meta": MODERN_META}})
        self._path = parsed.raw_path.decode()
        self.request_id = request_id
        self.status = 0
        self.messages: list[dict[str, Any]] = []
        self.comments = 0
        self.ended = threading.Event()
        self._arrived = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> ListenStream:
        self._connection.request("POST", self._path, body=self._body,
                                 headers=modern_headers("subscriptions/listen"))
        response = self._connection.getresponse()
        self.status = response.status
        if response.status != 200:
            self.messages.append(json.loads(response.read()))
            self.ended.set()
            return self
        self._response = response
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        sock = self._connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._connection.close()

    def _read(self) -> None:
        data: list[str] = []
        try:
            while True:
                raw = self._response.readline()
                if not raw:
                    break
                line = raw.decode().rstrip("\r\n")
                if line.startswith(":"):
                    with self._arrived:
                        self.comments += 1
                        self._arrived.notify_all()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and data:
                    message = json.loads("\n".join(data))
                    data = []
                    with self._arrived:
                        self.messages.append(message)
                        self._arrived.notify_all()
        except (OSError, http.client.HTTPException, ValueError):
            pass
        finally:
            with self._arrived:
                self.ended.set()
                self._arrived.notify_all()

    def wait_for(self, predicate: Any, what: str, timeout: float = 10.0) -> None:
        """Until ``predicate(self)`` holds; fails naming ``what`` after ``timeout``."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: predicate(self), timeout=timeout):
                raise AssertionError(f"not within {timeout}s: {what}; got {self.messages}")

    def methods(self) -> list[str]:
        return [str(m.get("method")) for m in self.messages if "method" in m]


def sse_event_lines(lines: Iterable[str]) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """(event id, message) of each SSE event that carries a message, as they arrive."""
    event_id: str | None = None
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line:
            if "".join(data):
                yield event_id, json.loads("".join(data))
            event_id, data = None, []


@contextlib.contextmanager
def waiting_at_question(http: httpx2.Client, url: str, tool: str = "ask_then_save"
                        ) -> Iterator[tuple[RawSession, dict[str, Any],
                                            Iterator[tuple[str | None, dict[str, Any]]],
                                            str, dict[str, Any]]]:
    """A session client's call of ``tool``, its stream open at the tool's first question
    (``elicitation/create``): (session, call, the stream's further events, the question's
    event id, the question)."""
    session = RawSession.open(http, url, capabilities={"elicitation": {}})
    call = session.message("tools/call", {"name": tool, "arguments": {}})
    with http.stream("POST", url, json=call, headers=session.headers()) as stream:
        events = sse_event_lines(stream.iter_lines())
        asked_at, question = next((i, m) for i, m in events
                                  if m.get("method") == "elicitation/create")
        assert asked_at is not None
        yield session, call, events, asked_at, question
def raw_post(url: str, headers: Mapping[str, str], message: Mapping[str, Any], *,
             receive_buffer: int = 4096) -> socket.socket:
    """POST ``message`` on a plain socket whose receive buffer is small, and return the
    socket unread: the caller reads the answer as slowly as it likes (or never), which an
    HTTP client library would not let it do. HTTP/1.0, so the body comes unchunked and
    ends when the server closes the connection."""
    parts = urlsplit(url)
    body = json.dumps(message).encode()
    lines = [f"POST {parts.path} HTTP/1.0", f"Host: {parts.netloc}",
             "Content-Type: application/json", f"Content-Length: {len(body)}",
             *(f"{name}: {value}" for name, value in headers.items()
               if name.lower() not in ("content-type", "content-length", "host"))]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect((parts.hostname or "127.0.0.1", parts.port or 80))
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return sock
