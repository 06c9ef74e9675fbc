"""A terminate storm: sessions ended on one replica while calls run on all of them.

Three replicas on one Redis, no stickiness. For each of many sessions, two clients call
tools on random replicas while a third ends the session on a random replica. Whichever
replica holds a call when its session closes (local DELETE, the ended-session broadcast),
every request must still get an HTTP answer, within a bound, and only 200 or 404.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field

import anyio
import httpx2
import pytest

from tests.scaleout.conftest import Cluster
from tests.support.mcp_http import BASE_HEADERS, PROTOCOL_VERSION, initialize_body

pytestmark = [pytest.mark.anyio, pytest.mark.timing]

SESSIONS = 24
CALLERS_PER_SESSION = 2
STORM_SECONDS = 4.0
# No answer within this bound counts as no answer at all.
ANSWER_BOUND_SECONDS = 8.0
FAST_CALL = {"name": "notes_search", "arguments": {"query": "storm"}}
# Streams progress (SSE) for about half a second: the session often closes mid-call.
SLOW_CALL = {"name": "weather_slow_count", "arguments": {"n": 10}}


@dataclass
class Tally:
    """What the storm's requests got back."""

    statuses: Counter[int] = field(default_factory=Counter)
    unanswered: list[str] = field(default_factory=list)

    async def send(self, what: str, request: httpx2.Request, http: httpx2.AsyncClient) -> int:
        """Send ``request`` and read its whole body; the status, or 0 if no answer."""
        try:
            with anyio.fail_after(ANSWER_BOUND_SECONDS):
                response = await http.send(request)
        except TimeoutError:
            self.unanswered.append(what)
            return 0
        self.statuses[response.status_code] += 1
        return response.status_code


def _headers(session_id: str, accept: str | None = None) -> dict[str, str]:
    return {**BASE_HEADERS, "Mcp-Session-Id": session_id,
            "MCP-Protocol-Version": PROTOCOL_VERSION,
            **({"Accept": accept} if accept else {})}


async def _open(http: httpx2.AsyncClient, url: str) -> str:
    response = await http.post(url, json=initialize_body(1), headers=BASE_HEADERS)
    assert response.status_code == 200, response.text
    session_id = response.headers["mcp-session-id"]
    notified = await http.post(url, json={"jsonrpc": "2.0",
                                          "method": "notifications/initialized"},
                               headers=_headers(session_id))
    assert notified.status_code == 202, notified.text
    return session_id


async def _storm(cluster: Cluster, *, call: dict[str, object], with_stream: bool,
                 seed: int) -> Tally:
    rng = random.Random(seed)
    urls = [replica.url for replica in cluster.replicas]
    tally = Tally()
    limits = httpx2.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx2.AsyncClient(timeout=ANSWER_BOUND_SECONDS + 5, limits=limits) as http:
        sessions = [await _open(http, rng.choice(urls)) for _ in range(SESSIONS)]
        stop_at = time.monotonic() + STORM_SECONDS

        async def caller(session_id: str, n: int) -> None:
            request_id = 0
            while time.monotonic() < stop_at:
                request_id += 1
                body = {"jsonrpc": "2.0", "id": f"{n}-{request_id}", "method": "tools/call",
                        "params": call}
                request = http.build_request("POST", rng.choice(urls), json=body,
                                             headers=_headers(session_id))
                if await tally.send(f"call {session_id[:8]}", request, http) == 404:
                    return

        async def deleter(session_id: str) -> None:
            await anyio.sleep(rng.uniform(0.2, 2.5))
            request = http.build_request("DELETE", rng.choice(urls),
                                         headers=_headers(session_id))
            await tally.send(f"delete {session_id[:8]}", request, http)

        async def stream(session_id: str) -> None:
            request = http.build_request("GET", rng.choice(urls),
                                         headers=_headers(session_id, "text/event-stream"))
            # Open until its session closes: the bound covers the whole storm.
            try:
                with anyio.fail_after(STORM_SECONDS + ANSWER_BOUND_SECONDS):
                    response = await http.send(request)
            except TimeoutError:
                tally.unanswered.append(f"stream {session_id[:8]}")
                return
            tally.statuses[response.status_code] += 1

        async with anyio.create_task_group() as tg:
            for session_id in sessions:
                for n in range(CALLERS_PER_SESSION):
                    tg.start_soon(caller, session_id, n)
                tg.start_soon(deleter, session_id)
                if with_stream:
                    tg.start_soon(stream, session_id)
    return tally


@pytest.mark.parametrize(("call", "with_stream"), [
    pytest.param(FAST_CALL, False, id="calls"),
    pytest.param(FAST_CALL, True, id="calls-and-get-streams"),
    pytest.param(SLOW_CALL, False, id="slow-streaming-calls"),
])
async def test_every_request_is_answered_while_sessions_are_ended_under_it(
        cluster: Cluster, call: dict[str, object], with_stream: bool) -> None:
    tally = await _storm(cluster, call=call, with_stream=with_stream, seed=12)
    assert tally.unanswered == [], (f"{len(tally.unanswered)} of "
                                    f"{sum(tally.statuses.values()) + len(tally.unanswered)} "
                                    f"requests got no answer: {tally.unanswered[:10]}")
    assert set(tally.statuses) <= {200, 404}, tally.statuses
    assert tally.statuses[200] > SESSIONS, tally.statuses
