"""Composite tools on a real gateway over the demo backends, for both kinds of client.

A session client (2025-11-25) and a stateless one (2026-07-28) list and call the same
workflows: the demo's ``city_brief`` (parallel branches, a note saved from the forecast,
progress per step), a step that fails and continues with its default, a ``for_each``
with one bad element, a step timeout over the slow counting tool, a tool hidden from
listings that only steps may call, and an elicitation step answered by the client.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from tests.integration.test_operations import metric
from tests.support.mcp_http import BASE_HEADERS, RawSession, reply_to, sse_messages
from tests.support.processes import (
    VMCP_EXECUTABLE,
    ManagedProcess,
    gateway_config,
    running_gateway,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "vmcp.yaml"
MODERN = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientInfo": {"name": "composite-test", "version": "0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}

TEST_TOOLS: list[dict[str, Any]] = [
    {"name": "forecast_or_default",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
     "steps": [
         {"id": "f", "tool": "weather_forecast", "arguments": {"city": "{{ params.city }}"},
          "on_error": {"action": "continue"}, "default": {"city": "nowhere", "days": []}},
         {"id": "echo", "tool": "weather_search", "depends_on": ["f"],
          "arguments": {"query": "{{ steps.f.status }}"}}],
     "output": {"city": {"type": "string", "value": "{{ steps.f.output.city }}"},
                "status": {"type": "string", "value": "{{ steps.f.status }}"},
                "error": {"type": "string", "value": "{{ steps.f.error or '' }}"}}},
    {"name": "many_forecasts",
     "parameters": {"type": "object", "properties": {"cities": {"type": "array"}}},
     "steps": [{"id": "each", "type": "for_each", "items": "{{ params.cities }}",
                "max_parallel": 2, "on_error": {"action": "continue"},
                "step": {"tool": "weather_forecast",
                         "arguments": {"city": "{{ item }}", "days": 1}}}],
     "output": {"found": {"type": "array",
                          "value": "{{ steps.each.output | map(attribute='city', "
                                   "default='?') | list }}"},
                "error": {"type": "string", "value": "{{ steps.each.error }}"}}},
    {"name": "slow_then_search",
     "steps": [{"id": "count", "tool": "weather_slow_count", "arguments": {"n": 100},
                "timeout_seconds": 0.3, "on_error": {"action": "continue"},
                "default": "gave up"},
               {"id": "after", "tool": "weather_search", "depends_on": ["count"],
                "arguments": {"query": "Ber"}}]},
    {"name": "uses_hidden", "hide_tools": ["weather_search"],
     "steps": [{"id": "s", "tool": "weather_search", "arguments": {"query": "o"}}]},
    {"name": "ask_then_save",
     "steps": [{"id": "ask", "type": "elicitation", "message": "Title for the note?",
                "schema": {"type": "object", "properties": {"title": {"type": "string"}},
                           "required": ["title"]}},
               {"id": "save", "tool": "notes_add_note", "depends_on": ["ask"],
                "arguments": {"title": "{{ steps.ask.output.content.title }}",
                              "body": "asked"}}],
     "output": {"title": {"type": "string", "value": "{{ steps.save.output.title }}"}}},
]


@pytest.fixture(scope="module")
def composite_gateway(demo_backends: dict[str, ManagedProcess],
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    demo = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))["composite_tools"]
    config = gateway_config(demo_backends, session={"store": "memory"},
                            composite_tools=[*demo, *TEST_TOOLS])
    with running_gateway(config, tmp_path_factory.mktemp("composite")) as process:
        yield process


@pytest.fixture
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=30.0) as client:
        yield client


class StatelessClient:
    """A 2026-07-28 client: every request carries its envelope."""

    def __init__(self, http: httpx2.Client, url: str) -> None:
        self.http, self.url = http, url

    def rpc(self, method: str, params: dict[str, Any]) -> tuple[httpx2.Response,
                                                                dict[str, Any]]:
        body_params = {**params, "_meta": {**META, **params.get("_meta", {})}}
        headers = {**BASE_HEADERS, "MCP-Protocol-Version": MODERN, "Mcp-Method": method}
        if "name" in params:
            headers["Mcp-Name"] = params["name"]
        response = self.http.post(self.url, headers=headers, json={
            "jsonrpc": "2.0", "id": 9, "method": method, "params": body_params})
        return response, reply_to(response, 9)

    def result(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        response, reply = self.rpc(method, params)
        assert response.status_code == 200, response.text
        assert "result" in reply, reply
        return dict(reply["result"])


class SessionClient:
    def __init__(self, http: httpx2.Client, url: str) -> None:
        self.session = RawSession.open(http, url)

    def rpc(self, method: str, params: dict[str, Any]) -> tuple[httpx2.Response,
                                                                dict[str, Any]]:
        request_id, response = self.session.rpc(method, params)
        return response, reply_to(response, request_id)

    def result(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        return self.session.result(method, params)


Client = StatelessClient | SessionClient


@pytest.fixture(params=["session", "stateless"])
def client(request: pytest.FixtureRequest, http: httpx2.Client,
           composite_gateway: ManagedProcess) -> Client:
    if request.param == "session":
        return SessionClient(http, composite_gateway.url)
    return StatelessClient(http, composite_gateway.url)


def call(client: Client, name: str, arguments: dict[str, Any],
         **params: Any) -> dict[str, Any]:
    return client.result("tools/call", {"name": name, "arguments": arguments, **params})


def test_composite_tools_are_listed_with_the_backends_tools(client: Client) -> None:
    tools = {t["name"]: t for t in client.result("tools/list", {})["tools"]}
    assert "weather_forecast" in tools
    brief = tools["city_brief"]
    assert brief["inputSchema"]["required"] == ["city"]
    assert set(brief["outputSchema"]["properties"]) == {"summary", "notes_found",
                                                         "saved_note_id"}
    assert "weather_search" not in tools  # hidden by uses_hidden


def test_the_demo_workflow_runs_its_branches_and_reports_progress(
        client: Client) -> None:
    response, reply = client.rpc("tools/call", {
        "name": "city_brief", "arguments": {"city": "berlin", "days": "2"},
        "_meta": {"progressToken": "brief-1"}})
    result = reply["result"]
    assert result["isError"] is False, result
    out = result["structuredContent"]
    assert out["summary"].startswith("Berlin: ")
    assert len(out["summary"].split(", ")) == 2  # days "2" coerced to the integer 2
    assert out["saved_note_id"] > 0
    progress = [m["params"] for m in sse_messages(response.text.splitlines())
                if m.get("method") == "notifications/progress"]
    assert [p["progressToken"] for p in progress] == ["brief-1"] * 3
    assert [p["progress"] for p in progress] == [1, 2, 3]
    assert {p["message"] for p in progress} == {
        "step forecast completed", "step notes completed", "step save completed"}
    saved = call(client, "notes_search", {"query": "Weather in Berlin"})
    assert saved["structuredContent"]["result"], saved


def test_a_failed_step_continues_with_its_default(client: Client) -> None:
    out = call(client, "forecast_or_default", {"city": "Atlantis"})["structuredContent"]
    assert out["city"] == "nowhere"
    assert out["status"] == "failed"
    assert "unknown city 'Atlantis'" in out["error"]


def test_for_each_keeps_the_good_elements_of_a_partial_failure(client: Client) -> None:
    out = call(client, "many_forecasts",
               {"cities": ["Paris", "Atlantis", "Tokyo"]})["structuredContent"]
    assert out["found"] == ["Paris", "?", "Tokyo"]
    assert out["error"].startswith("1 of 3 items failed: [1]")


def test_a_step_timeout_gives_up_on_the_slow_tool(client: Client) -> None:
    result = call(client, "slow_then_search", {})
    assert result["structuredContent"]["count"] == "gave up"
    assert result["structuredContent"]["after"] == {"result": ["Berlin"]}


def test_a_hidden_tool_is_refused_to_clients_but_runs_as_a_step(client: Client) -> None:
    _, reply = client.rpc("tools/call", {"name": "weather_search",
                                         "arguments": {"query": "o"}})
    assert reply["error"]["message"] == "Unknown tool: weather_search"
    result = call(client, "uses_hidden", {})
    assert "Tokyo" in result["structuredContent"]["s"]["result"]


def test_an_elicitation_step_asks_the_session_client(
        http: httpx2.Client, composite_gateway: ManagedProcess) -> None:
    session = RawSession.open(http, composite_gateway.url,
                              capabilities={"elicitation": {}})
    message = session.message("tools/call", {"name": "ask_then_save", "arguments": {}})
    with http.stream("POST", session.url, json=message, headers=session.headers()) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        messages = sse_messages(lines)
        question = next(messages)
        assert question["method"] == "elicitation/create"
        assert question["params"]["message"] == "Title for the note?"
        answer = {"jsonrpc": "2.0", "id": question["id"],
                  "result": {"action": "accept", "content": {"title": "from the user"}}}
        posted = http.post(session.url, json=answer, headers=session.headers())
        assert posted.status_code == 202, posted.text
        reply = next(m for m in messages if m.get("id") == message["id"])
    assert reply["result"]["structuredContent"] == {"title": "from the user"}, reply


def test_an_elicitation_step_is_an_input_required_round_for_a_stateless_client(
        http: httpx2.Client, composite_gateway: ManagedProcess) -> None:
    client = StatelessClient(http, composite_gateway.url)
    meta = {"io.modelcontextprotocol/clientCapabilities": {"elicitation": {}}}
    first = client.result("tools/call", {"name": "ask_then_save", "arguments": {},
                                         "_meta": meta})
    assert first["resultType"] == "input_required", first
    [(key, question)] = first["inputRequests"].items()
    assert question["method"] == "elicitation/create"
    assert question["params"]["message"] == "Title for the note?"
    state = first["requestState"]
    answer = {"action": "accept", "content": {"title": "asked statelessly"}}
    retry = {"name": "ask_then_save", "arguments": {}, "_meta": meta,
             "requestState": state, "inputResponses": {key: answer}}
    done = client.result("tools/call", retry)
    assert done["structuredContent"] == {"title": "asked statelessly"}, done
    _, replayed = client.rpc("tools/call", retry)  # a round is answered once
    assert replayed["error"]["message"].startswith("Invalid or expired requestState")


def test_an_elicitation_step_fails_for_a_client_that_cannot_be_asked(
        http: httpx2.Client, composite_gateway: ManagedProcess) -> None:
    client = StatelessClient(http, composite_gateway.url)
    first = client.result("tools/call", {"name": "ask_then_save", "arguments": {}})
    assert first["isError"] is True
    assert "did not declare the elicitation capability" in json.dumps(first)


def test_check_config_probe_checks_steps_against_the_backends_tools(
        demo_backends: dict[str, ManagedProcess], tmp_path: Path) -> None:
    demo = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))["composite_tools"]
    wrong = {"name": "wrong", "steps": [
        {"id": "a", "tool": "weather_forcast", "arguments": {"city": "Oslo"}},
        {"id": "b", "tool": "weather_forecast", "arguments": {"town": "Oslo"}}]}
    config = gateway_config(demo_backends, composite_tools=[*demo, wrong])
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([str(VMCP_EXECUTABLE), "check-config", str(path), "--probe"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    problems = [line.strip() for line in result.stderr.splitlines()
                if line.strip().startswith("composite_tools")]
    assert problems == [
        "composite_tools[1].steps[0].tool: no backend offers a tool 'weather_forcast'",
        "composite_tools[1].steps[1].arguments.town: not a parameter of 'weather_forecast' "
        "(it takes: city, days)",
        "composite_tools[1].steps[1].arguments: 'weather_forecast' requires 'city'",
    ], result.stderr


def test_composite_calls_and_steps_are_counted_in_the_metrics(
        http: httpx2.Client, composite_gateway: ManagedProcess) -> None:
    metrics_url = composite_gateway.base_url + "/metrics"
    before = http.get(metrics_url).text
    client = StatelessClient(http, composite_gateway.url)
    call(client, "forecast_or_default", {"city": "Atlantis"})
    after = http.get(metrics_url).text
    for name, labels, grew_by in (
            ("vmcp_composite_calls_total", {"tool": "forecast_or_default", "outcome": "ok"}, 1),
            ("vmcp_composite_steps_total", {"tool": "forecast_or_default",
                                            "outcome": "failed"}, 1),
            ("vmcp_composite_steps_total", {"tool": "forecast_or_default",
                                            "outcome": "completed"}, 1)):
        assert metric(after, name, **labels) == metric(before, name, **labels) + grew_by, name
