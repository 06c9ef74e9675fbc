"""Two ``vmcp serve`` replicas sharing one real Redis: any replica serves any session.

Both replicas sit in front of the same two demo backends, as replicas behind a load
balancer would. Each test starts its own pair with a key prefix of its own, so that no
test sees another's sessions.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support.mcp_http import RawSession, reply_to, session_not_found
from tests.support.processes import ManagedProcess, gateway_config, running_gateways
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis

StartPair = Callable[[dict[str, Any]], tuple[ManagedProcess, ManagedProcess]]

TTL_SECONDS = 1.0
TOUCH_EVERY_SECONDS = 0.3
KEEP_ALIVE_FOR_SECONDS = 3.0
SILENCE_SECONDS = 1.5


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


def _redis_session(redis_server: RedisServer, **extra: Any) -> dict[str, Any]:
    return {"store": redis_server.url, "key_prefix": f"it:{uuid.uuid4().hex[:12]}:", **extra}


def test_b24_session_started_on_one_replica_is_served_by_the_other(
        http: httpx2.Client, start_pair: StartPair, redis_server: RedisServer) -> None:
    first, second = start_pair(_redis_session(redis_server))
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
