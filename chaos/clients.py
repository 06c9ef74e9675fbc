"""Clients doing seeded-random MCP work through the balancer, as real clients would.

Each client has one identity (a static bearer token) and its own random generator drawn
from the run's seed. With a session it calls tools (fast, slow and streaming, ones that
ask it for sampling or elicitation), listens on GET streams, leaves a streaming call and
resumes it with ``Last-Event-ID``, presents another identity's session id, and DELETEs its
session, after which it tries the dead id again. Without one it initializes, or makes
2026-07-28 stateless calls, including ``input_required`` rounds. What it sends names its
identity (``who=<identity>#<nonce>``) wherever the answer echoes it back, so an answer
meant for someone else shows.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import anyio

from chaos.history import (
    ANSWER,
    CALL,
    CLEANUP,
    DELETE,
    INITIALIZE,
    RESUME,
    STATELESS,
    STRANGER,
    STREAM,
    Record,
)
from chaos.wire import EVENT_STREAM, Message, Wire

HANDSHAKE = "2025-11-25"
MODERN = "2026-07-28"
ACCEPT_BOTH = "application/json, text/event-stream"

BOUND_SECONDS = 20.0
"""Every request is answered within this (a replica's drain is 10 s, a store call 1 s)."""
LISTEN_SECONDS = (0.5, 3.0)
CLEANUP_ATTEMPTS = 20
MAX_RESUMES = 3
ANSWER_ATTEMPTS = 5
RETRYABLE = frozenset({"bad_gateway", "unavailable", "transport_error"})

CITIES = ("Amsterdam", "Berlin", "Cairo", "Lisbon", "Nairobi")
SESSION_ACTIONS = {
    "fast": 30, "slow": 10, "resume": 6, "sampling": 7, "elicitation": 5, "listen": 6,
    "listen_aside": 4, "stranger": 4, "delete": 6, "stateless": 8,
}


@dataclass
class Registry:
    """Sessions every client can see: live ones (for strangers) and all ever known."""

    live: dict[str, str] = field(default_factory=dict)
    known: set[str] = field(default_factory=set)


class Client:
    """One client: an identity, a generator, at most one session at a time."""

    def __init__(self, name: str, identity: str, token: str, rng: random.Random, wire: Wire,
                 registry: Registry, clock: Callable[[], float]) -> None:
        self.name = name
        self.identity = identity
        self.token = token
        self.rng = rng
        self.wire = wire
        self.registry = registry
        self.clock = clock
        self.session: str | None = None
        self._ids = itertools.count(2)
        self._nonces = itertools.count(1)

    # -- helpers ------------------------------------------------------------------------

    def who(self) -> str:
        return f"who={self.identity}#{self.name}-{next(self._nonces)}"

    def headers(self, session: str | None = None, *, accept: str = ACCEPT_BOTH,
                token: str | None = None) -> dict[str, str]:
        headers = {"Accept": accept, "Content-Type": "application/json",
                   "Authorization": f"Bearer {token or self.token}"}
        if session is not None:
            headers["Mcp-Session-Id"] = session
            headers["MCP-Protocol-Version"] = HANDSHAKE
        return headers

    def request(self, method: str, params: Message | None = None) -> Message:
        body: Message = {"jsonrpc": "2.0", "id": next(self._ids), "method": method}
        if params is not None:
            body["params"] = params
        return body

    async def send(self, kind: str, method: str, verb: str = "POST", *,
                   body: Message | None = None, session: str | None = None,
                   headers: dict[str, str] | None = None, **more: Any) -> Any:
        return await self.wire.exchange(
            client=self.name, identity=self.identity, kind=kind, method=method, verb=verb,
            headers=headers if headers is not None else self.headers(session),
            bound=more.pop("bound", BOUND_SECONDS), body=body, session=session, **more)

    def _lost(self, record: Record) -> None:
        """Forget the session if the gateway says it is gone (the client re-initializes)."""
        if record.outcome == "not_found" and self.session is not None \
                and self.session == record.session:
            self.registry.live.pop(self.session, None)
            self.session = None

    # -- the loop -----------------------------------------------------------------------

    async def run(self, loading: Callable[[], bool]) -> None:
        async with anyio.create_task_group() as aside:
            while loading():
                if self.session is None:
                    if self.rng.random() < 0.75:
                        await self.initialize()
                    else:
                        await self.stateless()
                else:
                    actions = list(SESSION_ACTIONS)
                    action = self.rng.choices(actions, [SESSION_ACTIONS[a] for a in actions])[0]
                    if action == "listen_aside":
                        aside.start_soon(self.listen, self.session)
                    else:
                        await getattr(self, action)()
                await anyio.sleep(self.rng.uniform(0.0, 0.2))

    # -- sessions -----------------------------------------------------------------------

    async def initialize(self) -> None:
        body: Message = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": HANDSHAKE,
            "capabilities": {"sampling": {}, "elicitation": {}},
            "clientInfo": {"name": f"chaos-{self.name}", "version": "0"}}}
        exchange = await self.send(INITIALIZE, "initialize", body=body)
        session = exchange.headers.get("mcp-session-id")
        if exchange.record.outcome != "ok" or not session:
            return
        # Written down under the id it got, so the checker knows when the session was born.
        records = self.wire.records
        records[records.index(exchange.record)] = replace(exchange.record, session=session)
        self.registry.known.add(session)
        self.registry.live[session] = self.identity
        self.session = session
        notified = await self.send(CALL, "notifications/initialized", session=session,
                                   body={"jsonrpc": "2.0",
                                         "method": "notifications/initialized"})
        self._lost(notified.record)

    async def call(self, name: str, arguments: Message, body: Message | None = None,
                   **more: Any) -> Any:
        session = self.session
        body = body or self.request("tools/call", {"name": name, "arguments": arguments})
        exchange = await self.send(CALL, f"tools/call {name}", body=body, session=session,
                                   on_request=self.answer_server, **more)
        self._lost(exchange.record)
        if exchange.paused:
            await self.resume_stream(session, exchange.last_event_id, body["id"])
        return exchange

    async def resume_stream(self, session: str | None, last_event_id: str,
                            reply_id: object) -> None:
        """GET with ``Last-Event-ID`` until the reply comes (or the server stops pausing)."""
        for _ in range(MAX_RESUMES):
            headers = {**self.headers(session, accept=EVENT_STREAM),
                       "Last-Event-ID": last_event_id}
            resumed = await self.send(RESUME, "GET resume", "GET", session=session,
                                      headers=headers, reply_id=reply_id,
                                      on_request=self.answer_server)
            self._lost(resumed.record)
            if not resumed.paused:
                return
            last_event_id = resumed.last_event_id

    async def fast(self) -> None:
        choice = self.rng.randrange(3)
        if choice == 0:
            await self.call("weather_forecast", {"city": self.rng.choice(CITIES), "days": 2})
        elif choice == 1:
            await self.call("notes_add_note", {"title": self.who(), "body": "chaos"})
        else:
            exchange = await self.send(CALL, "tools/list", body=self.request("tools/list"),
                                       session=self.session)
            self._lost(exchange.record)

    async def slow(self) -> None:
        await self.call("weather_slow_count", {"n": self.rng.randint(3, 30)})

    async def resume(self) -> None:
        """Leave a streaming call after a few events, then resume it with Last-Event-ID."""
        session = self.session
        body = self.request("tools/call", {"name": "weather_slow_count", "arguments": {"n": 30}})
        exchange = await self.call("weather_slow_count", {}, body,
                                   leave_after=self.rng.randint(1, 10))
        if exchange.left and exchange.last_event_id is not None:
            # The resumed stream owes the reply of the call it resumes.
            await self.resume_stream(session, exchange.last_event_id, body["id"])

    async def sampling(self) -> None:
        if self.rng.random() < 0.5:
            await self.call("weather_ask_llm", {"question": "rain?"})
        else:
            await self.call("fixture_test_sampling", {"prompt": "sun?"})

    async def elicitation(self) -> None:
        await self.call("fixture_test_elicitation", {"message": "who are you?"})

    async def answer_server(self, message: Message) -> None:
        """Answer the backend's question met on a stream, as a POST on the session."""
        who = self.who()
        if message.get("method") == "sampling/createMessage":
            result: Message = {"role": "assistant", "model": "chaos",
                               "content": {"type": "text", "text": who}}
        elif message.get("method") == "elicitation/create":
            result = {"action": "accept", "content": {"username": who,
                                                      "email": "chaos@example.com"}}
        else:
            result = {}
        body = {"jsonrpc": "2.0", "id": message["id"], "result": result}
        # The call waits for this answer: one the balancer or a store outage refused is
        # sent again, as a client that wants its call to finish does.
        for _ in range(ANSWER_ATTEMPTS):
            sent = await self.send(ANSWER, f"answer {message.get('method')}", body=body,
                                   session=self.session)
            if sent.record.outcome not in RETRYABLE:
                return
            await anyio.sleep(0.2)

    async def listen(self, session: str | None = None) -> None:
        session = session or self.session
        duration = self.rng.uniform(*LISTEN_SECONDS)
        exchange = await self.send(STREAM, "GET", "GET", session=session,
                                   headers=self.headers(session, accept=EVENT_STREAM),
                                   listen_for=duration, bound=duration + BOUND_SECONDS)
        self._lost(exchange.record)

    async def stranger(self) -> None:
        """Present another identity's live session id: it must be refused like a made-up one."""
        others = sorted(s for s, owner in self.registry.live.items() if owner != self.identity)
        if not others:
            return
        session = self.rng.choice(others)
        owner = self.registry.live.get(session)
        if self.rng.random() < 0.7:
            await self.send(STRANGER, "tools/list", body=self.request("tools/list"),
                            session=session, session_owner=owner)
        else:
            await self.send(STRANGER, "DELETE", "DELETE", session=session, session_owner=owner)

    async def delete(self) -> None:
        session = self.session
        exchange = await self.send(DELETE, "DELETE", "DELETE", session=session)
        if exchange.record.status not in (200, 404):
            return  # not acknowledged: the session may live on, try again later
        self.registry.live.pop(session or "", None)
        self.session = None
        # The dead id again: every replica must refuse it now.
        for _ in range(self.rng.randint(0, 2)):
            verb = self.rng.choice(("POST", "GET", "DELETE"))
            if verb == "POST":
                await self.send(CALL, "tools/list", body=self.request("tools/list"),
                                session=session)
            elif verb == "GET":
                await self.send(STREAM, "GET", "GET", session=session,
                                headers=self.headers(session, accept=EVENT_STREAM),
                                listen_for=0.5)
            else:
                await self.send(DELETE, "DELETE", "DELETE", session=session)

    async def cleanup(self) -> None:
        """End this client's session for good (retrying what the faults left unanswered)."""
        session = self.session
        if session is None:
            return
        for _ in range(CLEANUP_ATTEMPTS):
            exchange = await self.send(CLEANUP, "DELETE", "DELETE", session=session)
            if exchange.record.status in (200, 404):
                break
            await anyio.sleep(0.5)
        self.registry.live.pop(session, None)
        self.session = None

    # -- the stateless revision ---------------------------------------------------------

    def modern(self, name: str, arguments: Message, **extra: Any) -> tuple[Message, dict[str, str]]:
        meta = {"io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientInfo": {"name": f"chaos-{self.name}",
                                                       "version": "0"},
                "io.modelcontextprotocol/clientCapabilities": {"sampling": {},
                                                               "elicitation": {}}}
        body = self.request("tools/call", {"name": name, "arguments": arguments,
                                           "_meta": meta, **extra})
        headers = {**self.headers(), "MCP-Protocol-Version": MODERN,
                   "Mcp-Method": "tools/call", "Mcp-Name": name}
        return body, headers

    async def stateless(self) -> None:
        choice = self.rng.randrange(4)
        if choice == 0:
            body, headers = self.modern("notes_add_note", {"title": self.who(), "body": "x"})
            await self.send(STATELESS, "tools/call notes_add_note", body=body, headers=headers)
            return
        name, arguments = [("weather_ask_llm", {"question": "fog?"}),
                           ("fixture_test_input_required_result_elicitation", {}),
                           ("fixture_test_input_required_result_sampling", {})][choice - 1]
        body, headers = self.modern(name, arguments)
        first = await self.send(STATELESS, f"tools/call {name}", body=body, headers=headers)
        result = (first.reply or {}).get("result") or {}
        if result.get("resultType") != "input_required":
            return
        responses = {key: self.input_response(question)
                     for key, question in (result.get("inputRequests") or {}).items()}
        body, headers = self.modern(name, arguments, inputResponses=responses,
                                    requestState=result.get("requestState"))
        await self.send(STATELESS, f"tools/call {name} (retry)", body=body, headers=headers)

    def input_response(self, question: Message) -> Message:
        who = self.who()
        if question.get("method") == "elicitation/create":
            return {"action": "accept", "content": {"name": who}}
        return {"role": "assistant", "model": "chaos", "content": {"type": "text", "text": who}}


__all__ = ["BOUND_SECONDS", "Client", "Registry"]
