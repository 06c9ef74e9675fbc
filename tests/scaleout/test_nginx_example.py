"""The shipped docs/nginx.conf in front of two replicas on Redis: sessions work across
both with the public Host name listed in server.allowed_hosts, SSE streams flow, and a
Host that is not listed is refused 421 with a log line that names it and the key."""

from __future__ import annotations

import re
from pathlib import Path

import httpx2
from starlette.applications import Starlette

from tests.scaleout.conftest import running_cluster
from tests.support.mcp_http import BASE_HEADERS, RawSession, initialize_body
from tests.support.nginx import EXAMPLE
from tests.support.processes import ManagedProcess
from tests.support.redis_server import RedisServer
from vmcp.config import VmcpConfig
from vmcp.server.serving import server_config

NGINX_UPSTREAM_KEEPALIVE_DEFAULT_SECONDS = 60

PUBLIC_NAME = "mcp.example.test"


def test_the_nginx_example_serves_sessions_and_names_a_refused_host(
        scaleout_backends: dict[str, ManagedProcess], redis_server: RedisServer,
        tmp_path: Path) -> None:
    with running_cluster(scaleout_backends, redis_server, tmp_path, replicas=2,
                         server={"allowed_hosts": [PUBLIC_NAME]}) as cluster:
        with httpx2.Client(timeout=20, headers={"host": PUBLIC_NAME}) as http:
            session = RawSession.open(http, cluster.url)
            for _ in range(4):                          # round robin: both replicas serve it
                assert "notes_add_note" in session.tool_names()
            with http.stream("GET", cluster.url, headers=session.headers(
                    {"accept": "text/event-stream"})) as stream:
                assert stream.status_code == 200
                assert next(stream.iter_lines()) == ": stream open"   # not held back by nginx
            assert session.delete().status_code == 200
        # A fresh connection per refusal: it comes before the body is read, after which
        # nginx may close the client's connection (a second POST on it once met that).
        with httpx2.Client(timeout=20, headers={"host": "lb.internal"},
                           limits=httpx2.Limits(max_keepalive_connections=0)) as http:
            refused = [http.post(cluster.url, json=initialize_body(1), headers=BASE_HEADERS)
                       for _ in range(2)]
        assert {r.status_code for r in refused} == {421}
        logs = "".join(replica.log_tail(500) for replica in cluster.replicas)
        assert "refused a request with Host 'lb.internal'" in logs
        assert "server.allowed_hosts" in logs


def test_replicas_keep_idle_connections_longer_than_the_example_balancer_pools_them() -> None:
    """nginx reuses a pooled connection to a replica for a new request; a replica that had
    closed that connection a moment before makes nginx answer 502 (a POST is not retried).
    Seen in a chaos run as 502s with no replica down: uvicorn closed idle connections after
    5 s while nginx kept them 60 s. The replica must outlast the pool's idle timeout."""
    upstream = re.search(r"(?s)upstream vmcp \{(.*?)\}", EXAMPLE.read_text(encoding="utf-8"))
    assert upstream is not None
    idle = re.search(r"keepalive_timeout\s+(\d+)s;", upstream.group(1))
    pooled_for = int(idle.group(1)) if idle else NGINX_UPSTREAM_KEEPALIVE_DEFAULT_SECONDS
    assert server_config(Starlette(), VmcpConfig()).timeout_keep_alive > pooled_for
