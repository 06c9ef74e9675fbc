"""Two ``vmcp serve`` replicas sharing one real Redis: any replica serves any session.

Both replicas sit in front of the same two demo backends, as replicas behind a load
balancer would. Each test starts its own pair with a key prefix of its own, so that no
test sees another's sessions.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support.mcp_http import (
    EVENT_STREAM,
    RawSession,
    is_reply_to,
    reply_to,
    session_not_found,
    sse_messages,
)
from tests.support.processes import ManagedProcess, gateway_config, running_gateways
from tests.support.redis_ha import StoreServer
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis

StartPair = Callable[[dict[str, Any]], tuple[ManagedProcess, ManagedProcess]]

TTL_SECONDS = 1.0
TOUCH_EVERY_SECONDS = 0.3
KEEP_ALIVE_FOR_SECONDS = 3.0
SILENCE_SECONDS = 1.5
STREAM_READ_TIMEOUT_SECONDS = 10.0


def _next_matching(
    messages: Iterator[dict[str, Any]],
    wanted: Callable[[Mapping[str, Any]], bool],
    what: str,
    seen: list[dict[str, Any]],
) -> dict[str, Any]:
    """The next message on the stream that is ``wanted``; fails if the stream ends first."""
    for message in messages:
        seen.append(message)
        if wanted(message):
            return message
    raise AssertionError(f"the stream ended without {what}; it carried: {seen}")


@pytest.fixture
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=15.0) as client:
        yield client


@pytest.fixture
def start_pair(demo_backends: dict[str, ManagedProcess], tmp_path: Path) -> Iterator[StartPair]:
    """Start two replicas with the given ``session`` section (both at once)."""
    with ExitStack() as stack:

        def start(session: dict[str, Any]) -> tuple[ManagedProcess, ManagedProcess]:
            configs = {
                name: gateway_config(demo_backends, session=session,
                                     server={"replica_id": name})
                for name in ("replica-1", "replica-2")
            }
            replicas = stack.enter_context(running_gateways(configs, tmp_path))
            return replicas["replica-1"], replicas["replica-2"]

        yield start


def _redis_session(redis_server: StoreServer, **extra: Any) -> dict[str, Any]:
    return {"store": redis_server.url, "key_prefix": f"it:{uuid.uuid4().hex[:12]}:", **extra}


def test_b24_session_started_on_one_replica_is_served_by_the_other(
        http: httpx2.Client, start_pair: StartPair, any_store: StoreServer) -> None:
    first, second = start_pair(_redis_session(any_store))
    session = RawSession.open(http, first.url)
    token = uuid.uuid4().hex

    names = session.tool_names(url=second.url)
    added = session.result("tools/call", {"name": "notes_add_note",
                                          "arguments": {"title": token, "body": "from 2"}},
                           url=second.url)
    found = session.result("tools/call", {"name": "notes_search", "arguments": {"query": token}},
                           url=first.url)
    forecast = session.result("tools/call", {"name": "weather_forecast",
                                             "arguments": {"city": "Paris", "days": 1}},
                              url=second.url)

    assert {"notes_add_note", "notes_search", "weather_forecast", "weather_search"} <= names
    assert not added.get("isError"), added
    assert added["structuredContent"]["title"] == token
    assert [n["id"] for n in found["structuredContent"]["result"]] == [
        added["structuredContent"]["id"]]
    assert forecast["structuredContent"]["city"] == "Paris"


def test_b24_progress_of_a_call_streams_from_the_replica_that_serves_it(
    http: httpx2.Client, start_pair: StartPair, redis_server: RedisServer
) -> None:
    first, second = start_pair(_redis_session(redis_server))
    session = RawSession.open(http, first.url)
    call = session.message(
        "tools/call",
        {"name": "weather_slow_count", "arguments": {"n": 3}, "_meta": {"progressToken": "count"}},
    )

    response = http.post(second.url, json=call, headers=session.headers())

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(EVENT_STREAM)
    messages = list(sse_messages(response.text.splitlines()))
    progress = [m["params"] for m in messages if m.get("method") == "notifications/progress"]
    assert [(p["progressToken"], p["progress"], p["total"]) for p in progress] == [
        ("count", 1, 3),
        ("count", 2, 3),
        ("count", 3, 3),
    ]
    final = reply_to(response, call["id"])
    assert final["result"]["content"][0]["text"] == "counted to 3"


def test_sampling_answer_posted_to_the_other_replica_reaches_the_waiting_call(
    http: httpx2.Client, start_pair: StartPair, redis_server: RedisServer
) -> None:
    first, second = start_pair(_redis_session(redis_server))
    session = RawSession.open(http, first.url, capabilities={"sampling": {}})
    call = session.message(
        "tools/call", {"name": "weather_ask_llm", "arguments": {"question": "Rain in Oslo?"}}
    )
    seen: list[dict[str, Any]] = []

    # The call runs on replica 2; its sampling request is answered through replica 1, as
    # a load balancer that does not pin sessions may well route the answer.
    with (
        httpx2.Client(timeout=STREAM_READ_TIMEOUT_SECONDS) as other,
        http.stream("POST", second.url, json=call, headers=session.headers()) as stream,
    ):
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith(EVENT_STREAM)
        messages = sse_messages(stream.iter_lines())
        sampling = _next_matching(
            messages,
            lambda m: m.get("method") == "sampling/createMessage",
            "a sampling request",
            seen,
        )
        question = sampling["params"]["messages"][0]["content"]["text"]
        answer = {
            "jsonrpc": "2.0",
            "id": sampling["id"],
            "result": {
                "role": "assistant",
                "model": "fake-model",
                "stopReason": "endTurn",
                "content": {"type": "text", "text": "Bring an umbrella."},
            },
        }
        posted = other.post(first.url, json=answer, headers=session.headers())
        assert posted.status_code == 202, posted.text
        final = _next_matching(
            messages, lambda m: is_reply_to(m, call["id"]), "the call's result", seen
        )

    assert question == "Rain in Oslo?"
    assert "error" not in final, final
    assert final["result"]["content"][0]["text"] == "Bring an umbrella."


def test_b22_b32_delete_on_one_replica_ends_the_session_on_the_other(
        http: httpx2.Client, start_pair: StartPair, redis_server: RedisServer) -> None:
    first, second = start_pair(_redis_session(redis_server))
    session = RawSession.open(http, first.url)
    assert "notes_add_note" in session.tool_names(url=second.url)

    deleted = session.delete(url=second.url)
    assert deleted.status_code == 200, deleted.text

    # Replica 1 created the session and still holds its connections: it must ask the
    # store, not trust its own copy.
    request_id, response = session.rpc("tools/list", url=first.url)
    assert response.status_code == 404, response.text
    assert response.json() == session_not_found(request_id)
    request_id, response = session.rpc("tools/list", url=second.url)
    assert response.status_code == 404, response.text
    assert response.json() == session_not_found(request_id)


def test_b22_delete_on_one_replica_ends_the_get_stream_open_on_the_other(
    http: httpx2.Client, start_pair: StartPair, redis_server: RedisServer
) -> None:
    first, second = start_pair(_redis_session(redis_server))
    session = RawSession.open(http, first.url)
    headers = session.headers({"Accept": EVENT_STREAM})

    with (
        httpx2.Client(timeout=STREAM_READ_TIMEOUT_SECONDS) as other,
        http.stream("GET", first.url, headers=headers) as stream,
    ):
        assert stream.status_code == 200
        chunks = stream.iter_bytes()
        assert next(chunks).startswith(b":")
        deleted = other.delete(second.url, headers=session.headers())
        assert deleted.status_code == 200, deleted.text
        # Ends well within the read timeout, or httpx2 raises ReadTimeout here.
        rest = b"".join(chunks)

    assert b"data:" not in rest, rest


def test_b33_sliding_ttl_keeps_a_used_session_alive_on_both_replicas_then_expires(
        http: httpx2.Client, start_pair: StartPair, redis_server: RedisServer) -> None:
    first, second = start_pair(_redis_session(redis_server, ttl_seconds=TTL_SECONDS))
    session = RawSession.open(http, first.url)
    replicas = (second.url, first.url)

    # Time passing is what this test is about: requests spaced well inside the TTL, for
    # three TTLs in all, must each find the session alive.
    started = time.monotonic()
    touches = 0
    while time.monotonic() - started < KEEP_ALIVE_FOR_SECONDS:
        url = replicas[touches % 2]
        request_id, response = session.rpc("ping", url=url)
        elapsed = time.monotonic() - started
        assert response.status_code == 200, (
            f"touch {touches} on {url} after {elapsed:.2f}s: {response.status_code} "
            f"{response.text}")
        assert reply_to(response, request_id).get("result") == {}
        touches += 1
        time.sleep(max(0.0, started + touches * TOUCH_EVERY_SECONDS - time.monotonic()))
    assert touches >= int(KEEP_ALIVE_FOR_SECONDS / TOUCH_EVERY_SECONDS)

    time.sleep(SILENCE_SECONDS)

    for url in (first.url, second.url):
        request_id, response = session.rpc("ping", url=url)
        assert response.status_code == 404, (url, response.text)
        assert response.json() == session_not_found(request_id)


def test_b31_memory_store_sessions_are_not_shared_between_replicas(
        http: httpx2.Client, start_pair: StartPair) -> None:
    first, second = start_pair({"store": "memory"})
    session = RawSession.open(http, first.url)

    request_id, response = session.rpc("tools/list", url=second.url)

    assert response.status_code == 404, response.text
    assert response.json() == session_not_found(request_id)
    assert "notes_add_note" in session.tool_names(url=first.url)
