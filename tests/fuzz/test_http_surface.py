"""Hostile input on the gateway's HTTP surface, against running ``vmcp serve`` processes.

Hypothesis builds each request from hostile parts: any verb; missing or odd ``Accept``,
``Content-Type``, ``Mcp-Session-Id`` (a live id, an unknown one, malformed, huge,
non-ASCII bytes), ``MCP-Protocol-Version``, ``Origin``, ``Host`` and ``Last-Event-ID``;
bodies that are not JSON, not objects, nested 10 000 levels deep, huge, batched, invalid
UTF-8, or well-formed envelopes with made-up methods and garbage params. For every one:

* an answer arrives within the client's timeouts (nothing hangs), with a 2xx or 4xx
  status or 503 - never a 500;
* a JSON body is one well-formed JSON-RPC response or error, and the events of an SSE
  body carry well-formed JSON-RPC messages.

Sessions opened before the run (the witnesses, whose ids the fuzzer never sees) must work
afterwards, and on the Redis-backed gateway their stored records must be exactly what
they were. The fuzzer aims at a live session of its own, reopened whenever a case ends
it. The number of cases by status is printed at the end of the module.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.mcp_http import ACCEPT_BOTH, JSON_TYPE, PROTOCOL_VERSION, RawSession
from tests.support.processes import GATEWAY_MAX_BODY_BYTES, ManagedProcess
from tests.support.redis_server import RedisServer

LIVE = "<the fuzzer's live session>"
UNKNOWN = "<an unknown session>"
TIMEOUT = httpx2.Timeout(10.0, connect=5.0)
MAX_READ = 1024 * 1024
WITNESSES = 2
# Tools a fuzzed call may reach; slow_count and ask_llm would only make runs slow (a
# sampling request waits minutes for an answer nobody sends).
TOOLS = ("notes_add_note", "notes_list_notes", "notes_search", "weather_forecast",
         "weather_search", "no_such_tool")
METHODS = ("initialize", "ping", "tools/list", "tools/call", "prompts/list", "prompts/get",
           "resources/list", "resources/read", "resources/templates/list",
           "resources/subscribe", "completion/complete", "logging/setLevel",
           "notifications/initialized", "notifications/cancelled",
           "notifications/roots/list_changed", "sampling/createMessage")

OUTCOMES: Counter[tuple[str, int | str]] = Counter()
"""(gateway, status or "timeout") -> cases; printed by the conftest at the end of the run."""


def outcome_lines() -> list[str]:
    """The number of cases by status, per gateway."""
    if not OUTCOMES:
        return []
    lines = [f"HTTP fuzzing: {sum(OUTCOMES.values())} requests"]
    for name in sorted({name for name, _ in OUTCOMES}):
        counts = {status: n for (gateway, status), n in OUTCOMES.items() if gateway == name}
        by_status = ", ".join(f"{status}: {n}" for status, n in sorted(
            counts.items(), key=lambda item: str(item[0])))
        lines.append(f"  {name} gateway, {sum(counts.values())} requests: {by_status}")
    return lines


@dataclass(frozen=True)
class Case:
    """One request: ``headers`` values of None are left out, ``LIVE``/``UNKNOWN`` are
    filled in when it is sent."""

    verb: str
    headers: tuple[tuple[str, bytes | str | None], ...]
    body: bytes | None = None
    note: str = field(default="", compare=False)


# --------------------------------------------------------------------------- strategies

def usually(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any],
            tenths: int) -> st.SearchStrategy[Any]:
    """From ``common`` ``tenths`` times in ten, else from ``rare``."""
    return st.integers(0, 9).flatmap(lambda i: common if i < tenths else rare)


def mostly(good: Any, bad: st.SearchStrategy[Any], tenths: int) -> st.SearchStrategy[Any]:
    """``good`` ``tenths`` times in ten, else something from ``bad``: most cases must get
    past the header checks, or the deeper paths would hardly ever be reached."""
    return usually(st.just(good), bad, tenths)


_VALUE_BYTES = st.integers(0x21, 0x7E) | st.integers(0x80, 0xFF)
garbage = st.lists(_VALUE_BYTES, max_size=40).map(bytes)
huge = st.sampled_from([129, 4096, 16384]).map(lambda n: b"a" * n)

session_ids = st.one_of(
    st.none(), st.just(LIVE), st.just(LIVE), st.just(UNKNOWN),
    st.sampled_from([b"", b"not a session", b"../../etc/passwd", b"identities:0", b"ended",
                     b"events:x", b"\xc3\xa9t\xc3\xa9", b"\xff\xfe\xfd"]),
    garbage, huge)
accepts = st.one_of(st.none(), st.just(ACCEPT_BOTH), st.just(ACCEPT_BOTH),
                    st.sampled_from(["application/json", "text/event-stream", "*/*", "text/*",
                                     "text/html", "application/json;q=0, text/event-stream"]),
                    garbage)
content_types = st.one_of(st.none(), st.just(JSON_TYPE), st.just(JSON_TYPE),
                          st.sampled_from(["application/json; charset=utf-8",
                                           "APPLICATION/JSON", "text/plain",
                                           "application/jsonx", "multipart/form-data"]),
                          garbage)
versions = st.one_of(st.none(), st.just(PROTOCOL_VERSION),
                     st.sampled_from(["2025-06-18", "2025-03-26", "2024-11-05", "1999-01-01",
                                      "2026-07-28", ""]), garbage)
origins = st.one_of(st.none(), st.none(),
                    st.sampled_from(["http://localhost:6274", "http://127.0.0.1",
                                     "https://evil.example", "null", "http://[::1",
                                     "http://[", "ftp://localhost", "http://localhost:99999"]),
                    garbage)
hosts = st.one_of(st.none(), st.none(), st.none(),
                  st.sampled_from(["localhost", "evil.example", "127.0.0.1:1", "[::1]", "[",
                                   "localhost:", ":80", "a" * 300]), garbage)
event_ids = st.one_of(st.none(), st.none(),
                      st.sampled_from([b"x.1", b"a.\xb2", b"s." + b"9" * 5000, b".", b"1"]),
                      garbage)

scalars = (st.none() | st.booleans() | st.integers() | st.text(max_size=20)
           | st.floats(allow_nan=False, allow_infinity=False))
json_values = st.recursive(
    scalars, lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4), max_leaves=12)
request_ids = st.one_of(st.integers(-(2**70), 2**70), st.text(max_size=12),
                        st.none(), st.booleans(), st.just(1.5), st.just([1]))


PARAM_KEYS = ("name", "arguments", "uri", "cursor", "level", "ref", "argument",
              "protocolVersion", "capabilities", "clientInfo", "requestId", "_meta")
params_objects = st.dictionaries(st.sampled_from(PARAM_KEYS) | st.text(max_size=8),
                                 json_values, max_size=4)


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """A JSON-RPC-looking object: mostly right in shape, wrong in the details."""
    message: dict[str, Any] = {}
    if draw(mostly(True, st.booleans(), 9)):
        message["jsonrpc"] = draw(mostly("2.0", json_values, 9))
    if draw(mostly(True, st.booleans(), 7)):
        message["id"] = draw(mostly(draw(st.integers(0, 2**31)), request_ids, 7))
    shape = draw(st.integers(0, 9))
    if shape == 0:  # a response or error, as a client answering the server would send
        message["result" if draw(st.booleans()) else "error"] = draw(json_values)
        return message
    message["method"] = draw(mostly(draw(st.sampled_from(METHODS)), st.text(max_size=30), 7))
    if message["method"] == "tools/call" and draw(st.booleans()):
        message["params"] = {"name": draw(st.sampled_from(TOOLS)),
                             "arguments": draw(mostly({}, params_objects, 3))}
    elif draw(st.integers(0, 3)):
        message["params"] = draw(mostly(draw(params_objects), json_values, 8))
    return message


def nested(depth: int, opening: str = "[", closing: str = "]", inner: str = "") -> bytes:
    return (opening * depth + inner + closing * depth).encode()


def deep_call(depth: int) -> bytes:
    arguments = '{"query": ' + "[" * depth + "]" * depth + "}"
    return ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":'
            '{"name":"weather_search","arguments":' + arguments + "}}").encode()


def big_string(size: int) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "notes_search", "arguments": {"query": "x" * size}}}).encode()


bodies = usually(envelopes().map(lambda m: json.dumps(m).encode()), st.one_of(
    st.none(),
    st.lists(envelopes(), max_size=4).map(lambda ms: json.dumps(ms).encode()),  # batches
    json_values.map(lambda v: json.dumps(v).encode()),  # wrong types
    st.binary(max_size=200),  # not JSON at all
    st.sampled_from([b"", b"{", b"[", b"nul", b'{"jsonrpc": "2.0",}', b"\xef\xbb\xbf{}",
                     b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"\xff\xfe"}}',
                     b'{"jsonrpc":"2.0","id":1,"method":"\xc3\x28"}']),  # invalid UTF-8
    st.sampled_from([10, 999, 1000, 10_000]).map(nested),
    st.sampled_from([1000, 10_000]).map(lambda d: nested(d, '{"a":', "}", "1")),
    st.sampled_from([10, 500, 990, 10_000]).map(deep_call),
    st.sampled_from([GATEWAY_MAX_BODY_BYTES // 2, GATEWAY_MAX_BODY_BYTES + 1]).map(big_string),
), 6)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    verb = draw(mostly("POST", st.sampled_from(["GET", "GET", "DELETE", "PUT", "PATCH",
                                                "OPTIONS"]), 7))
    good_accept = "text/event-stream" if verb == "GET" else ACCEPT_BOTH
    headers = (("accept", draw(mostly(good_accept, accepts, 8))),
               ("content-type", draw(mostly(JSON_TYPE, content_types, 8))),
               ("mcp-session-id", draw(mostly(LIVE, session_ids, 5))),
               ("mcp-protocol-version", draw(mostly(PROTOCOL_VERSION, versions, 7))),
               ("origin", draw(mostly(None, origins, 9))),
               ("host", draw(mostly(None, hosts, 9))),
               ("last-event-id", draw(event_ids) if verb == "GET" else None))
    body = draw(bodies) if verb == "POST" or draw(st.integers(0, 4)) == 0 else None
    return Case(verb, headers, body)


def post(body: bytes, *, session: str | bytes | None = LIVE, **extra: bytes | str | None
         ) -> Case:
    """A POST that passes the header checks, so that ``body`` is what gets tested."""
    headers = {"accept": ACCEPT_BOTH, "content-type": JSON_TYPE, "mcp-session-id": session,
               "mcp-protocol-version": PROTOCOL_VERSION, **extra}
    return Case("POST", tuple(headers.items()), body)


def get(**headers: bytes | str | None) -> Case:
    base = {"accept": "text/event-stream", "mcp-session-id": LIVE,
            "mcp-protocol-version": PROTOCOL_VERSION, **headers}
    return Case("GET", tuple(base.items()))


# Cases that must run on every run, whatever hypothesis draws.
EXAMPLES = [
    post(nested(10_000)),
    post(nested(10_000, '{"a":', "}", "1")),
    post(deep_call(10_000)),
    post(deep_call(990)),
    post(b'{"jsonrpc":"2.0","id":1,"method":"ping"}', origin="http://[::1"),
    post(b'{"jsonrpc":"2.0","id":1,"method":"ping"}', session=b"\xff\xfe"),
    get(**{"last-event-id": b"a.\xb2"}),
    get(**{"last-event-id": b"s." + b"9" * 5000}),
    post(b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}', session=b"a" * 16384),
]


def with_examples(test: Any) -> Any:
    for case in EXAMPLES:
        test = example(case=case)(test)
    return test


# --------------------------------------------------------------------------- sending


class Fuzzer:
    """Sends cases to one gateway and checks each answer; keeps a live session to aim at."""

    def __init__(self, name: str, gateway: ManagedProcess) -> None:
        self.name = name
        self.gateway = gateway
        self.http = httpx2.Client(timeout=TIMEOUT)
        self.live = RawSession.open(self.http, gateway.url).session_id

    def close(self) -> None:
        self.http.close()

    def send(self, case: Case) -> None:
        headers: list[tuple[bytes, bytes]] = []
        for name, value in case.headers:
            if value is None:
                continue
            if value == LIVE:
                value = self.live
            elif value == UNKNOWN:
                value = uuid.uuid4().hex
            headers.append((name.encode(), value.encode() if isinstance(value, str) else value))
        request = self.http.build_request(case.verb, self.gateway.url, headers=headers,
                                          content=case.body)
        try:
            response = self.http.send(request, stream=True)
        except httpx2.TimeoutException as exc:
            OUTCOMES[(self.name, "timeout")] += 1
            raise AssertionError(f"no answer in time: {exc!r}") from exc
        try:
            status = response.status_code
            OUTCOMES[(self.name, status)] += 1
            content_type = response.headers.get("content-type", "")
            body = self._read(response, streaming=content_type.startswith("text/event-stream"))
        finally:
            response.close()
        assert 200 <= status < 300 or 400 <= status < 500 or status == 503, (
            status, body[:500])
        if content_type.startswith(JSON_TYPE) and body:
            check_jsonrpc(json.loads(body))
        elif content_type.startswith("text/event-stream"):
            for event in body.split(b"\n\n")[:-1]:  # the last one may be cut off
                data = [line[5:].strip() for line in event.split(b"\n")
                        if line.startswith(b"data:")]
                if any(data):
                    check_jsonrpc(json.loads(b"\n".join(data)), server_message=True)
        else:
            # Only the HTTP server itself answers other than in JSON-RPC, for requests it
            # cannot parse as HTTP at all.
            assert status == 400 or not body, (status, content_type, body[:200])
        if (status == 200 and case.verb == "DELETE"
                and dict(case.headers).get("mcp-session-id") == LIVE):
            self.live = RawSession.open(self.http, self.gateway.url).session_id

    @staticmethod
    def _read(response: httpx2.Response, *, streaming: bool) -> bytes:
        """The body; for an event stream only what is there at once (it may never end)."""
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if streaming or len(body) > MAX_READ:
                break
        return bytes(body)


def check_jsonrpc(message: Any, *, server_message: bool = False) -> None:
    """A JSON-RPC 2.0 response or error (or, on a stream, any server message)."""
    assert isinstance(message, dict), message
    assert message.get("jsonrpc") == "2.0", message
    if server_message and "method" in message:
        assert isinstance(message["method"], str), message
        return
    assert ("result" in message) != ("error" in message), message
    if "id" in message:
        assert message["id"] is None or isinstance(message["id"], str | int), message
    if "error" in message:
        error = message["error"]
        assert isinstance(error, dict), message
        assert isinstance(error.get("code"), int), message
        assert isinstance(error.get("message"), str), message
    else:
        assert isinstance(message["result"], dict), message


# --------------------------------------------------------------------------- witnesses


@dataclass
class Witnesses:
    """Sessions opened before the fuzz run; the fuzzer never learns their ids."""

    gateway: ManagedProcess
    http: httpx2.Client
    sessions: list[RawSession]

    @classmethod
    def open(cls, gateway: ManagedProcess, http: httpx2.Client) -> Witnesses:
        sessions = [RawSession.open(http, gateway.url) for _ in range(WITNESSES)]
        for session in sessions:
            assert "weather_forecast" in session.tool_names()
        return cls(gateway, http, sessions)

    def still_work(self) -> None:
        for session in self.sessions:
            assert "notes_add_note" in session.tool_names()
            result = session.result("tools/call", {"name": "weather_forecast",
                                                   "arguments": {"city": "Oslo", "days": 1}})
            assert not result.get("isError"), result
        assert self.gateway.returncode is None, self.gateway.log_tail()
        assert self.http.get(self.gateway.base_url + "/healthz").status_code == 200


def stored(server: RedisServer, prefix: str, sessions: list[RawSession]) -> dict[str, bytes]:
    """The witnesses' records as Redis holds them, read without touching their TTL."""
    client = redis.Redis.from_url(server.url)
    try:
        records = {s.session_id: client.get(prefix + s.session_id) for s in sessions}
    finally:
        client.close()
    assert all(records.values()), records
    return {key: value for key, value in records.items() if value is not None}


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def memory_fuzz(gateway: ManagedProcess) -> Iterator[tuple[Fuzzer, Witnesses]]:
    with httpx2.Client(timeout=TIMEOUT) as http:
        witnesses = Witnesses.open(gateway, http)
        fuzzer = Fuzzer("memory", gateway)
        yield fuzzer, witnesses
        fuzzer.close()


@pytest.fixture(scope="module")
def redis_fuzz(redis_gateway: tuple[ManagedProcess, str], redis_server: RedisServer
               ) -> Iterator[tuple[Fuzzer, Witnesses, dict[str, bytes]]]:
    process, prefix = redis_gateway
    with httpx2.Client(timeout=TIMEOUT) as http:
        witnesses = Witnesses.open(process, http)
        before = stored(redis_server, prefix, witnesses.sessions)
        fuzzer = Fuzzer("redis", process)
        yield fuzzer, witnesses, before
        fuzzer.close()


FUZZ_SETTINGS = settings(
    deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.large_base_example])


@settings(FUZZ_SETTINGS, max_examples=1500)
@given(case=cases())
@with_examples
def test_memory_gateway_answers_hostile_requests_in_json_rpc(
        memory_fuzz: tuple[Fuzzer, Witnesses], case: Case) -> None:
    memory_fuzz[0].send(case)


def test_memory_gateway_sessions_from_before_still_work(
        memory_fuzz: tuple[Fuzzer, Witnesses]) -> None:
    memory_fuzz[1].still_work()


@pytest.mark.redis
@settings(FUZZ_SETTINGS, max_examples=1000)
@given(case=cases())
@with_examples
def test_redis_gateway_answers_hostile_requests_in_json_rpc(
        redis_fuzz: tuple[Fuzzer, Witnesses, dict[str, bytes]], case: Case) -> None:
    redis_fuzz[0].send(case)


@pytest.mark.redis
def test_redis_gateway_records_from_before_are_unchanged_and_work(
        redis_fuzz: tuple[Fuzzer, Witnesses, dict[str, bytes]], redis_server: RedisServer,
        redis_gateway: tuple[ManagedProcess, str]) -> None:
    _, witnesses, before = redis_fuzz
    after = stored(redis_server, redis_gateway[1], witnesses.sessions)
    assert after == before
    witnesses.still_work()
