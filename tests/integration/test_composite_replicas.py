"""A composite tool's elicitation answered through another replica than the one running it.

Two ``vmcp serve`` replicas share one real Redis and the demo backends. The workflow
waits on the replica that runs it; the user's answer arrives at the other one, as a load
balancer that does not pin clients may route it: for a session client as the answer to
the relayed ``elicitation/create``, for a 2026-07-28 client as the retry that carries the
``requestState``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests.integration.test_composite_tools import TEST_TOOLS, StatelessClient
from tests.support.mcp_http import RawSession, is_reply_to, sse_messages
from tests.support.processes import ManagedProcess, gateway_config, running_gateways
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ASK = next(tool for tool in TEST_TOOLS if tool["name"] == "ask_then_save")


@pytest.fixture(scope="module")
def replicas(demo_backends: dict[str, ManagedProcess], redis_server: RedisServer,
             tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[ManagedProcess, ManagedProcess]]:
    session = {"store": redis_server.url, "key_prefix": f"cx:{uuid.uuid4().hex[:12]}:"}
    configs = {name: gateway_config(demo_backends, session=session,
                                    server={"replica_id": name}, composite_tools=[ASK])
               for name in ("replica-1", "replica-2")}
    with running_gateways(configs, tmp_path_factory.mktemp("composite-replicas")) as started:
        yield started["replica-1"], started["replica-2"]


@pytest.fixture
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=15.0) as client:
        yield client


def test_a_session_clients_answer_reaches_the_workflow_through_the_other_replica(
        http: httpx2.Client, replicas: tuple[ManagedProcess, ManagedProcess]) -> None:
    first, second = replicas
    session = RawSession.open(http, first.url, capabilities={"elicitation": {}})
    call = session.message("tools/call", {"name": "ask_then_save", "arguments": {}})
    with (httpx2.Client(timeout=15.0) as other,
          http.stream("POST", second.url, json=call, headers=session.headers()) as stream):
        messages = sse_messages(stream.iter_lines())
        question = next(m for m in messages if m.get("method") == "elicitation/create")
        answer = {"jsonrpc": "2.0", "id": question["id"],
                  "result": {"action": "accept", "content": {"title": "via replica 1"}}}
        posted = other.post(first.url, json=answer, headers=session.headers())
        assert posted.status_code == 202, posted.text
        final = next(m for m in messages if is_reply_to(m, call["id"]))
    assert final["result"]["structuredContent"] == {"title": "via replica 1"}, final


def test_a_stateless_retry_resumes_the_workflow_from_the_other_replica(
        http: httpx2.Client, replicas: tuple[ManagedProcess, ManagedProcess]) -> None:
    first, second = replicas
    meta = {"io.modelcontextprotocol/clientCapabilities": {"elicitation": {}}}
    started = StatelessClient(http, first.url).result(
        "tools/call", {"name": "ask_then_save", "arguments": {}, "_meta": meta})
    assert started["resultType"] == "input_required", started
    [key] = started["inputRequests"]
    retry: dict[str, Any] = {
        "name": "ask_then_save", "arguments": {}, "_meta": meta,
        "requestState": started["requestState"],
        "inputResponses": {key: {"action": "accept", "content": {"title": "via replica 2"}}}}
    done = StatelessClient(http, second.url).result("tools/call", retry)
    assert done["structuredContent"] == {"title": "via replica 2"}, done
