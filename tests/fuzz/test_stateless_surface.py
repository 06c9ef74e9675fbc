"""Hostile stateless-revision (2026-07-28) requests against a running gateway.

Hypothesis builds requests that mostly pass the envelope checks and then go wrong in the
details: a method of the revision or one it lacks, routing headers that disagree with the
body (or are missing, duplicated, padded), ``Mcp-Param-*`` headers, envelopes with missing
or odd keys, garbage params, ``inputResponses`` and ``requestState`` (made up, or the
gateway's own token from an earlier case). The gateway fronts a backend of each kind.
For every case:

* an answer arrives in time, with 200, 202, 400 or 404 - never a 5xx;
* a JSON body is one JSON-RPC response or error for the request's id (``null`` only when
  the request's id could not be read), and an event stream carries JSON-RPC messages
  ending with the response.

Afterwards the gateway serves stateless and session clients as before.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import mixed_backends, mixed_gateway
from tests.support.mcp_http import ACCEPT_BOTH, JSON_TYPE, RawSession
from tests.support.processes import ManagedProcess

__all__ = ["mixed_backends", "mixed_gateway"]

MODERN = "2026-07-28"
TIMEOUT = httpx2.Timeout(15.0, connect=5.0)
# slow_count would only make runs slow.
TOOLS = ("notes_add_note", "notes_search", "weather_forecast", "weather_search",
         "weather_ask_llm", "no_such_tool")
METHODS = ("server/discover", "tools/list", "tools/call", "resources/list",
           "resources/templates/list", "resources/read", "prompts/list", "prompts/get",
           "completion/complete", "subscriptions/listen", "initialize", "ping", "nope")
TOKENS: list[str] = []
"""``requestState`` tokens the gateway handed out during the run, to be replayed."""

scalars = (st.none() | st.booleans() | st.integers() | st.text(max_size=12)
           | st.floats(allow_nan=False, allow_infinity=False))
json_values = st.recursive(
    scalars, lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3), max_leaves=10)


FAULTS = ("none",) * 6 + ("version header", "method header", "name header",
                          "duplicate header", "envelope", "envelope key", "version",
                          "capabilities", "params")


@st.composite
def requests(draw: st.DrawFn) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """A request with at most one deliberate fault; half of them have none."""
    fault = draw(st.sampled_from(FAULTS))
    method = draw(st.sampled_from(METHODS))
    meta: dict[str, Any] = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {"sampling": {}, "elicitation": {},
                                                       "roots": {}},
        "io.modelcontextprotocol/clientInfo": {"name": "fuzz", "version": "0"},
    }
    if fault == "envelope key":
        meta.pop(draw(st.sampled_from(list(meta))))
    elif fault == "version":
        meta["io.modelcontextprotocol/protocolVersion"] = draw(scalars)
    elif fault == "capabilities":
        meta["io.modelcontextprotocol/clientCapabilities"] = draw(json_values)
    if draw(st.booleans()):
        meta["io.modelcontextprotocol/logLevel"] = draw(st.sampled_from(["debug", "error"])
                                                        | scalars)
    if draw(st.booleans()):
        meta["progressToken"] = draw(st.integers(0, 100) | st.text(max_size=8))
    params: dict[str, Any] = {"_meta": draw(json_values) if fault == "envelope" else meta}
    if method == "tools/call":
        params["name"] = draw(st.sampled_from(TOOLS))
        params["arguments"] = draw(st.sampled_from([{"query": "o"}, {"city": "Oslo"},
                                                    {"title": "t", "body": "b"},
                                                    {"question": "q"}, {}]) | json_values)
    elif method == "prompts/get":
        params["name"] = draw(st.sampled_from(["weather_weather_report",
                                               "notes_summarize_notes", "nope"]))
        params["arguments"] = draw(st.sampled_from([{"city": "Paris"}, {}]) | json_values)
    elif method == "resources/read":
        params["uri"] = draw(st.sampled_from(["weather://cities", "notes://index",
                                              "notes://1", "nowhere://x"]))
    elif method == "completion/complete":
        params["ref"] = draw(st.sampled_from([
            {"type": "ref/prompt", "name": "weather_weather_report"},
            {"type": "ref/resource", "uri": "notes://{id}"}]) | json_values)
        params["argument"] = draw(st.just({"name": "city", "value": "Pa"}) | json_values)
    if draw(st.integers(0, 4)) == 0:
        params["inputResponses"] = draw(json_values)
    if draw(st.integers(0, 4)) == 0:
        replay = st.sampled_from(TOKENS) if TOKENS else st.just("vmcp-round.x")
        params["requestState"] = draw(replay | st.text(max_size=20))
    if fault == "params":
        params[draw(st.text(max_size=8))] = draw(json_values)
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": draw(st.integers(0, 2**31)),
                            "method": method, "params": params}
    visible = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=12)
    headers = [("accept", ACCEPT_BOTH), ("content-type", JSON_TYPE),
               ("mcp-protocol-version",
                draw(visible) if fault == "version header" else MODERN),
               ("mcp-method",
                draw(st.sampled_from(METHODS)) if fault == "method header" else method)]
    name = params.get("name", params.get("uri"))
    if isinstance(name, str):
        headers.append(("mcp-name",
                        draw(st.sampled_from(TOOLS)) if fault == "name header" else name))
    if fault == "duplicate header":
        headers.append(draw(st.sampled_from(headers[2:])))
    if draw(st.integers(0, 4)) == 0:
        headers.append(("mcp-param-" + draw(st.sampled_from(["region", "city", "x"])),
                        draw(st.sampled_from(["Oslo", "=?base64?T3Nsbw==?=", "=?base64?!?="]))))
    return body, headers


@pytest.fixture(scope="module")
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=TIMEOUT) as client:
        yield client


@settings(max_examples=250, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=requests())
def test_stateless_requests_never_break_the_gateway(
        http: httpx2.Client, mixed_gateway: ManagedProcess,
        case: tuple[dict[str, Any], list[tuple[str, str]]]) -> None:
    body, headers = case
    response = http.post(mixed_gateway.url, content=json.dumps(body).encode(),
                         headers=headers)
    assert response.status_code in (200, 202, 400, 404), (response.status_code, response.text)
    content_type = response.headers.get("content-type", "")
    if content_type.startswith("text/event-stream"):
        messages = [json.loads(line[5:]) for line in response.text.splitlines()
                    if line.startswith("data:") and line[5:].strip()]
        assert messages, response.text
        final = messages[-1]
    else:
        assert content_type.startswith(JSON_TYPE), response.headers
        final = response.json()
    assert final["jsonrpc"] == "2.0", final
    assert final["id"] == body["id"], final
    assert ("result" in final) != ("error" in final), final
    if "error" in final:
        assert isinstance(final["error"]["code"], int), final
    else:
        state = final["result"].get("requestState")
        if isinstance(state, str) and state.startswith("vmcp-round."):
            TOKENS.append(state)


def test_the_gateway_serves_both_kinds_of_client_after_the_fuzzing(
        http: httpx2.Client, mixed_gateway: ManagedProcess) -> None:
    session = RawSession.open(http, mixed_gateway.url)
    assert {"notes_search", "weather_search"} <= session.tool_names()
    meta = {"io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {}}
    response = http.post(mixed_gateway.url, headers={
        "accept": ACCEPT_BOTH, "content-type": JSON_TYPE, "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call", "mcp-name": "weather_search"}, json={
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "weather_search", "arguments": {"query": "osl"}, "_meta": meta}})
    assert response.status_code == 200, response.text
    assert response.json()["result"]["structuredContent"] == {"result": ["Oslo"]}
