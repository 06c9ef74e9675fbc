"""B3 through a replica on Redis: a malformed or empty session id costs no store command.

Counted on the Redis server itself (``INFO commandstats``): the replica refuses the id
(400) before it asks the store anything, on POST, GET and DELETE alike.
"""

from __future__ import annotations

import re

import httpx2
import pytest

from tests.scaleout.conftest import Cluster
from tests.support.mcp_http import RawSession, error_of
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.timing

BAD_IDS = [b"", b"a b", b"a" * 129, "s\u00e9ance".encode(), b"tab\there"]


def commands_run(redis: RedisServer) -> int:
    """Commands the server has run, INFO itself excluded."""
    info = redis.command("INFO", "commandstats").decode()
    return sum(int(calls) for name, calls in re.findall(r"cmdstat_(\w+):calls=(\d+)", info)
               if name != "info")


def test_b3_a_malformed_or_empty_session_id_is_refused_without_a_store_command(
    cluster: Cluster,
) -> None:
    replica = cluster.replicas[0]
    with httpx2.Client(timeout=10) as http:
        session = RawSession.open(http, replica.url)
        good = session.headers()
        before = commands_run(cluster.redis)
        for bad in BAD_IDS:
            headers = [(k.encode(), v.encode()) for k, v in good.items()
                       if k != "Mcp-Session-Id"] + [(b"Mcp-Session-Id", bad)]
            for method in ("POST", "GET", "DELETE"):
                body = b'{"jsonrpc":"2.0","id":7,"method":"tools/list"}' if method == "POST" \
                    else None
                response = http.request(method, replica.url, headers=headers, content=body)
                assert response.status_code == 400, (bad, method, response.text)
                assert error_of(response)["code"] == -32600
        assert commands_run(cluster.redis) == before
        assert "notes_search" in session.tool_names()          # a real request does ask
        assert commands_run(cluster.redis) > before
