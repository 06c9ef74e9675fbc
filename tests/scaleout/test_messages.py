"""Server-to-client messages when the client's streams and calls are on different replicas."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import httpx2
import pytest

from tests.scaleout.conftest import Cluster
from tests.support.mcp_http import EVENT_STREAM, RawSession, reply_to, sse_messages

pytestmark = [pytest.mark.anyio, pytest.mark.timing]


async def test_list_changed_heard_before_the_client_opens_its_stream_is_delivered_on_it(
    cluster: Cluster,
) -> None:
    """A tool that changes the list, called right after connecting: the notification is
    held until the client's GET stream attaches, not dropped because none was open yet."""
    first = cluster.replicas[0]
    with httpx2.Client(timeout=10) as http:
        session = RawSession.open(http, first.url)
        # Runs first in this module, so the backend's list has not changed yet.
        assert "notes_delete_note" not in session.tool_names(url=first.url)
        session.result("tools/call", {"name": "notes_enable_deletion", "arguments": {}},
                       url=first.url)
    got: list[str] = []
    async with httpx2.AsyncClient(timeout=20) as client:
        headers = session.headers({"Accept": "text/event-stream"})
        with anyio.fail_after(10):
            async with client.stream("GET", first.url, headers=headers) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("data:") and line[5:].strip():
                        got.append(json.loads(line[5:]).get("method"))
                        if got[-1] == "notifications/tools/list_changed":
                            break
    assert got[-1] == "notifications/tools/list_changed"
    with httpx2.Client(timeout=10) as http:
        session.http = http
        session.delete()


async def test_list_changed_seen_on_one_replica_reaches_the_get_stream_on_another(
    any_cluster: Cluster,
) -> None:
    first, second, third = any_cluster.replicas
    with httpx2.Client(timeout=10) as http:
        session = RawSession.open(http, first.url)
    received: list[dict[str, Any]] = []
    got_list_changed = anyio.Event()
    stream_open = anyio.Event()

    async def listen(client: httpx2.AsyncClient) -> None:
        headers = session.headers({"Accept": "text/event-stream"})
        async with client.stream("GET", first.url, headers=headers) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                stream_open.set()
                if line.startswith("data:") and line[5:].strip():
                    message = json.loads(line[5:])
                    received.append(message)
                    if message.get("method") == "notifications/tools/list_changed":
                        got_list_changed.set()
                        return

    async with httpx2.AsyncClient(timeout=20) as client, anyio.create_task_group() as tg:
        tg.start_soon(listen, client)
        with anyio.fail_after(10):
            await stream_open.wait()
            call = session.message("tools/call", {"name": "notes_enable_deletion",
                                                  "arguments": {}})
            response = await client.post(second.url, json=call, headers=session.headers())
            assert response.status_code == 200, response.text
            await got_list_changed.wait()

    with httpx2.Client(timeout=10) as http:
        session.http = http
        assert "notes_delete_note" in session.tool_names(url=first.url)
        # A replica that saw no list_changed at all finds the new tool on first use.
        result = session.result("tools/call", {"name": "notes_delete_note",
                                               "arguments": {"note_id": 12345}},
                                url=third.url)
        assert result.get("isError") is not True, result
        session.delete()


def test_a_stream_dropped_on_one_replica_is_resumed_on_another(any_cluster: Cluster) -> None:
    """The client loses a call's response stream mid-way and reconnects, through the
    balancer, to another replica with ``Last-Event-ID``: the rest of the stream comes
    from the event log in the store, nothing missing, nothing twice."""
    first, second, _ = any_cluster.replicas
    with httpx2.Client(timeout=10) as http:
        session = RawSession.open(http, first.url)
        call = session.message("tools/call", {
            "name": "weather_slow_count", "arguments": {"n": 20},
            "_meta": {"progressToken": "resume"}})
        seen: list[int] = []
        last_id = ""
        with http.stream("POST", first.url, json=call, headers=session.headers()) as response:
            assert response.headers["content-type"].startswith(EVENT_STREAM)
            for line in response.iter_lines():
                if line.startswith("id:"):
                    last_id = line[3:].strip()
                elif line.startswith("data:") and line[5:].strip():
                    seen.append(json.loads(line[5:])["params"]["progress"])
                    if len(seen) == 3:
                        break      # the connection drops here; the call runs on
        stream_id = last_id.rpartition(".")[0]
        logged = f"{any_cluster.key_prefix}events:{session.session_id}:{stream_id}"
        deadline = time.monotonic() + 5
        while any_cluster.redis.command_value("EXISTS", logged) != "1":
            assert time.monotonic() < deadline, "the dropped stream never reached the log"
            time.sleep(0.02)

        resumed = http.get(second.url, headers=session.headers(
            {"Accept": EVENT_STREAM, "Last-Event-ID": last_id}))
        messages = list(sse_messages(resumed.text.splitlines()))

    assert resumed.status_code == 200, resumed.text
    progress = [m["params"]["progress"] for m in messages
                if m.get("method") == "notifications/progress"]
    assert seen + progress == list(range(1, 21)), (seen, progress)
    assert reply_to(resumed, call["id"])["result"]["content"][0]["text"] == "counted to 20"
