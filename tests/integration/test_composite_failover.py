"""A composite tool waiting for the user survives the replica that asked.

Two ``vmcp serve`` replicas share one real Redis. The workflow's state is kept in the
store while it waits, so the answer can reach the other replica even after the first one
is gone: a session client's answer (then its stream, resumed with ``Last-Event-ID``), a
2026-07-28 client's retry with the ``requestState``. The handle is one use, bound to
the identity, and expires with the tool's ``answer_ttl_seconds``.
"""

from __future__ import annotations

import hashlib
import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.integration.test_composite_tools import TEST_TOOLS, StatelessClient
from tests.support.mcp_http import RawSession, reply_to, sse_event_lines, waiting_at_question
from tests.support.processes import ManagedProcess, gateway_config, running_gateways
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.redis]

ASK = next(tool for tool in TEST_TOOLS if tool["name"] == "ask_then_save")
BRIEF_TTL = 0.5
ASK_BRIEFLY = {**ASK, "name": "ask_briefly", "answer_ttl_seconds": BRIEF_TTL}
TOKENS = {"alice-token": "alice", "bob-token": "bob"}
ELICITS = {"io.modelcontextprotocol/clientCapabilities": {"elicitation": {}}}


def _configs(backends: dict[str, ManagedProcess], redis: RedisServer,
             workdir: Path) -> dict[str, Any]:
    session = {"store": redis.url, "key_prefix": f"cf:{uuid.uuid4().hex[:12]}:"}
    auth = {"incoming": {"type": "static", "tokens": [
        {"token_sha256": hashlib.sha256(token.encode()).hexdigest(), "issuer": "static",
         "subject": subject} for token, subject in TOKENS.items()]}}
    return {name: gateway_config(backends, session=session, auth=auth,
                                 server={"replica_id": name},
                                 audit={"enabled": True,
                                        "sink": f"file:{workdir / f'{name}-audit.jsonl'}"},
                                 composite_tools=[ASK, ASK_BRIEFLY])
            for name in ("doomed", "replica-1", "replica-2")}


@pytest.fixture(scope="module")
def gateways(demo_backends: dict[str, ManagedProcess], redis_server: RedisServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ManagedProcess]]:
    """Three replicas; ``doomed`` is killed by the failover test, and used by no other."""
    workdir = tmp_path_factory.mktemp("composite-failover")
    with running_gateways(_configs(demo_backends, redis_server, workdir),
                          workdir) as started:
        yield started


@pytest.fixture
def replicas(gateways: dict[str, ManagedProcess]) -> tuple[ManagedProcess, ManagedProcess]:
    return gateways["replica-1"], gateways["replica-2"]


@pytest.fixture
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=15.0, headers={"Authorization": "Bearer alice-token"}
                       ) as client:
        yield client


def _kill(replica: ManagedProcess) -> None:
    replica.process.send_signal(signal.SIGKILL)
    replica.process.wait(timeout=10)
    replica.stop()


def test_waiting_workflows_complete_on_another_replica_after_theirs_is_killed(
        http: httpx2.Client, gateways: dict[str, ManagedProcess]) -> None:
    doomed, other = gateways["doomed"], gateways["replica-2"]
    # A 2026-07-28 client's run, and a session client's, both waiting on the same replica.
    started = _ask(http, doomed.url)
    assert started["requestState"].startswith("vmcp-wf.")
    with waiting_at_question(http, doomed.url) as (session, call, _, asked_at, question):
        _kill(doomed)  # while both workflows wait for the user

    retry = _retry(started, "stored, not held")
    done = StatelessClient(http, other.url).result("tools/call", retry)
    assert done["structuredContent"] == {"title": "stored, not held"}, done
    _, reused = StatelessClient(http, other.url).rpc("tools/call", retry)
    assert reused["error"]["message"].startswith("Invalid or expired requestState"), reused

    answer = {"jsonrpc": "2.0", "id": question["id"],
              "result": {"action": "accept", "content": {"title": "after a failover"}}}
    posted = http.post(other.url, json=answer, headers=session.headers())
    assert posted.status_code == 202, posted.text
    # The client's stream broke with the replica: it resumes it (MCP resumability).
    resumed_headers = session.headers({"Accept": "text/event-stream",
                                       "Last-Event-ID": asked_at})
    with http.stream("GET", other.url, headers=resumed_headers) as resumed:
        assert resumed.status_code == 200
        final = next(m for _, m in sse_event_lines(resumed.iter_lines())
                     if m.get("id") == call["id"])
    assert final["result"]["structuredContent"] == {"title": "after a failover"}, final
    again = http.post(other.url, json=answer, headers=session.headers())
    assert again.status_code == 400, again.text  # an answer is taken once
    assert "No workflow waits for this answer" in again.text


def _ask(http: httpx2.Client, url: str, tool: str = "ask_then_save") -> dict[str, Any]:
    started = StatelessClient(http, url).result(
        "tools/call", {"name": tool, "arguments": {}, "_meta": ELICITS})
    assert started["resultType"] == "input_required", started
    return started


def _retry(started: dict[str, Any], title: str, tool: str = "ask_then_save"
           ) -> dict[str, Any]:
    [key] = started["inputRequests"]
    return {"name": tool, "arguments": {}, "_meta": ELICITS,
            "requestState": started["requestState"],
            "inputResponses": {key: {"action": "accept", "content": {"title": title}}}}


def test_a_handle_is_refused_to_another_identity_and_stays_the_owners(
        http: httpx2.Client, replicas: tuple[ManagedProcess, ManagedProcess]) -> None:
    first, second = replicas
    started = _ask(http, first.url)
    retry = _retry(started, "mine")
    with httpx2.Client(timeout=15.0, headers={"Authorization": "Bearer bob-token"}) as bob:
        _, refused = StatelessClient(bob, second.url).rpc("tools/call", retry)
    assert refused["error"]["message"].startswith("Invalid or expired requestState"), refused
    done = StatelessClient(http, second.url).result("tools/call", retry)
    assert done["structuredContent"] == {"title": "mine"}, done


def test_an_answer_after_the_ttl_is_refused(
        http: httpx2.Client, replicas: tuple[ManagedProcess, ManagedProcess]) -> None:
    first, second = replicas
    started = _ask(http, first.url, "ask_briefly")
    time.sleep(BRIEF_TTL + 0.3)  # the time-to-live itself is what this test is about
    response, late = StatelessClient(http, second.url).rpc(
        "tools/call", _retry(started, "too late", "ask_briefly"))
    assert response.status_code == 400, response.text
    assert late["error"]["message"].startswith("Invalid or expired requestState"), late


def test_a_session_client_without_elicitation_gets_a_named_error(
        http: httpx2.Client, replicas: tuple[ManagedProcess, ManagedProcess]) -> None:
    first, second = replicas
    session = RawSession.open(http, first.url)  # declares no capabilities
    # Served by the other replica: the capability comes from the session's record.
    request_id, response = session.rpc("tools/call", {"name": "ask_then_save",
                                                      "arguments": {}}, url=second.url)
    result = reply_to(response, request_id)["result"]
    assert result["isError"] is True
    assert "did not declare the elicitation capability" in result["content"][0]["text"]


def _audit_events(gateway: ManagedProcess, run_ended: int) -> list[dict[str, Any]]:
    """The gateway's audit events once ``run_ended`` runs ended, the last one's call too
    (the writer is a thread: wait for it, bounded)."""
    path = gateway.log_path.with_name(f"{gateway.name}-audit.jsonl")
    deadline = time.monotonic() + 10
    while True:
        events = [json.loads(line) for line in path.read_text().splitlines() if line]
        ends = [i for i, e in enumerate(events) if e["type"] == "mcp_composite_end"]
        if len(ends) >= run_ended and any(e["type"] == "mcp_tool_call"
                                          for e in events[ends[-1]:]):
            return events
        assert time.monotonic() < deadline, events
        time.sleep(0.05)


def test_a_runs_steps_and_questions_are_audited_with_the_caller(
        http: httpx2.Client, gateways: dict[str, ManagedProcess]) -> None:
    gateway = gateways["replica-1"]
    path = gateway.log_path.with_name(f"{gateway.name}-audit.jsonl")
    ended_before = sum(json.loads(line)["type"] == "mcp_composite_end"
                       for line in path.read_text().splitlines() if line)
    with waiting_at_question(http, gateway.url) as (session, call, events, _, question):
        answer = {"jsonrpc": "2.0", "id": question["id"], "result": {
            "action": "accept", "content": {"title": "audited", "password": "hunter2"}}}
        assert http.post(gateway.url, json=answer, headers=session.headers()
                         ).status_code == 202
        final = next(m for _, m in list(events) if m.get("id") == call["id"])
    assert final["result"]["isError"] is False, final
    audited = _audit_events(gateway, ended_before + 1)
    run = [e for e in audited if e["type"].startswith("mcp_composite")][-6:]
    assert [(e["type"], e["target"].get("step"), e["outcome"]) for e in run] == [
        ("mcp_composite_start", None, "success"),
        ("mcp_composite_elicitation", "ask", "asked"),
        ("mcp_composite_elicitation", "ask", "answered"),
        ("mcp_composite_step", "ask", "success"),
        ("mcp_composite_step", "save", "success"),
        ("mcp_composite_end", None, "success")], run
    assert {e["metadata"]["extra"]["run_id"] for e in run} == {
        run[0]["metadata"]["extra"]["run_id"]}
    assert all(e["subjects"]["user_id"] == "alice" for e in run)
    assert run[4]["target"]["backend_tool"] == "notes_add_note"
    assert run[4]["metadata"]["extra"]["attempts"] == 1
    assert "hunter2" not in json.dumps(audited)  # no answers, no arguments by default
    call_event = next(e for e in reversed(audited) if e["type"] == "mcp_tool_call")
    assert call_event["target"]["name"] == "ask_then_save", call_event  # not its last step
