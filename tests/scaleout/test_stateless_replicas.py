"""Stateless-revision clients (2026-07-28) on replicas behind round-robin nginx.

The clients hold no session, so any replica serves any of their requests, including the
retry of an ``input_required`` round started on another replica: the replica that holds
the parked backend call takes it over the relay.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp_types import CreateMessageRequestParams, CreateMessageResult, ErrorData, TextContent

from tests.scaleout.conftest import Cluster, running_cluster
from tests.support.processes import (
    NOTES_MODULE,
    WEATHER_MODULE,
    ManagedProcess,
    running_backends,
)
from tests.support.redis_ha import STORE_FIXTURES, STORE_KINDS, StoreServer

pytestmark = pytest.mark.anyio

MODERN = "2026-07-28"


@pytest.fixture(scope="module")
def mixed_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[Cluster]:
    """Three replicas in front of notes (stateless revision too) and weather (session-based
    revisions only), on the kind of store the test names (indirect parameter)."""
    store: StoreServer = request.getfixturevalue(STORE_FIXTURES[request.param])
    workdir: Path = tmp_path_factory.mktemp(f"stateless-cluster-{request.param}")
    modules = {"notes": f"{NOTES_MODULE} --stateless",
               "weather": f"{WEATHER_MODULE} --handshake-only"}
    backends: dict[str, ManagedProcess]
    with running_backends(modules, workdir / "backends") as backends, \
            running_cluster(backends, store, workdir) as cluster:
        yield cluster


async def _answer(context: ClientRequestContext,
                  params: CreateMessageRequestParams) -> CreateMessageResult | ErrorData:
    question = params.messages[-1].content
    text = question.text if isinstance(question, TextContent) else "?"
    return CreateMessageResult(role="assistant", model="m",
                               content=TextContent(type="text", text=f"re: {text}"))


@pytest.mark.parametrize("mixed_cluster", ["standalone"], indirect=True)
async def test_stateless_clients_are_served_by_every_replica(mixed_cluster: Cluster) -> None:
    async with Client(mixed_cluster.url, mode=MODERN, read_timeout_seconds=30,
                      sampling_callback=_answer) as client:
        assert client.protocol_version == MODERN
        for round_number in range(6):
            note = await client.call_tool("notes_add_note",
                                          {"title": f"n{round_number}", "body": "b"})
            assert not note.is_error, note
            # Each of these is two requests (the call, then its retry with the answer),
            # which round robin sends to different replicas.
            answer = await client.call_tool("weather_ask_llm",
                                            {"question": f"q{round_number}"})
            assert not answer.is_error, answer
            (content,) = answer.content
            assert isinstance(content, TextContent)
            assert content.text == f"re: q{round_number}"
    served = [_calls_served(replica) for replica in mixed_cluster.replicas]
    assert all(count > 0 for count in served), served


def _calls_served(replica: ManagedProcess) -> float:
    metrics = httpx2.get(f"{replica.base_url}/metrics", timeout=5).text
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("vmcp_requests_total{") and 'method="tools/call"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("mixed_cluster", STORE_KINDS, indirect=True)
def test_a_round_started_on_one_replica_is_finished_on_another(mixed_cluster: Cluster) -> None:
    first, second, third = mixed_cluster.replicas
    meta = {"io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {"sampling": {}}}
    params: dict[str, object] = {"name": "weather_ask_llm",
                                 "arguments": {"question": "fog?"}, "_meta": meta}
    headers = {"Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call",
               "Mcp-Name": "weather_ask_llm"}
    answer = {"role": "assistant", "model": "m", "content": {"type": "text", "text": "thick"}}
    with httpx2.Client(timeout=15) as http:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
        started = http.post(first.url, json=body, headers=headers).json()["result"]
        assert started["resultType"] == "input_required", started
        key = next(iter(started["inputRequests"]))
        retry = {**params, "inputResponses": {key: answer},
                 "requestState": started["requestState"]}
        finished = http.post(second.url, headers=headers, json={
            "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": retry}).json()
        assert finished["result"]["content"] == [{"type": "text", "text": "thick"}], finished
        # Answered once: the round is gone everywhere.
        again = http.post(third.url, headers=headers, json={
            "jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": retry})
        assert again.status_code == 400
        assert again.json()["error"]["code"] == -32602
