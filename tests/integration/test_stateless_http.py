"""The stateless revision (2026-07-28) on the gateway's endpoint, as raw HTTP.

Statuses, error codes and result shapes as the revision states them, on the gateway in
front of one backend of each kind (see ``mixed_gateway``).
"""

from __future__ import annotations

import http.client as http_client
import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests.support.mcp_http import (
    BASE_HEADERS,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    error_of,
)
from tests.support.processes import HOST, ManagedProcess

MODERN = "2026-07-28"
HEADER_MISMATCH = -32020
UNSUPPORTED_PROTOCOL_VERSION = -32022
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientInfo": {"name": "raw-http-test", "version": "0"},
    "io.modelcontextprotocol/clientCapabilities": {"sampling": {}},
}
NAMED = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


@pytest.fixture
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=15.0) as client:
        yield client


def headers_for(method: str, params: dict[str, Any]) -> dict[str, str]:
    headers = {**BASE_HEADERS, "MCP-Protocol-Version": MODERN, "Mcp-Method": method}
    if method in NAMED:
        headers["Mcp-Name"] = str(params[NAMED[method]])
    return headers


def post(http: httpx2.Client, url: str, method: str, params: dict[str, Any] | None = None, *,
         request_id: int | str = 7, headers: dict[str, str] | None = None,
         meta: dict[str, Any] | None = META) -> httpx2.Response:
    body_params = dict(params or {})
    if meta is not None:
        body_params["_meta"] = meta
    sent = headers if headers is not None else headers_for(method, body_params)
    return http.post(url, json={"jsonrpc": "2.0", "id": request_id, "method": method,
                                "params": body_params}, headers=sent)


def result_of(response: httpx2.Response) -> dict[str, Any]:
    assert response.status_code == 200, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    assert "mcp-session-id" not in response.headers
    body = response.json()
    assert "error" not in body, body
    result: dict[str, Any] = body["result"]
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "vmcp", result
    return result


def test_listings_carry_caching_hints_and_name_the_gateway(
        http: httpx2.Client, mixed_gateway: ManagedProcess) -> None:
    for method, key in [("tools/list", "tools"), ("resources/list", "resources"),
                        ("resources/templates/list", "resourceTemplates"),
                        ("prompts/list", "prompts")]:
        result = result_of(post(http, mixed_gateway.url, method))
        assert isinstance(result[key], list), result
        assert isinstance(result["ttlMs"], int), result
        assert result["ttlMs"] >= 0, result
        assert result["cacheScope"] in ("public", "private"), result
        assert result["resultType"] == "complete", result
    tools = {t["name"] for t in result_of(post(http, mixed_gateway.url, "tools/list"))["tools"]}
    assert {"notes_add_note", "weather_forecast"} <= tools


def test_discover_announces_list_changes_and_the_resource_subscriptions_a_backend_offers(
        http: httpx2.Client, mixed_gateway: ManagedProcess) -> None:
    result = result_of(post(http, mixed_gateway.url, "server/discover"))
    assert result["supportedVersions"] == [MODERN]
    capabilities = result["capabilities"]
    for kind in ("tools", "prompts"):
        assert capabilities[kind] == {"listChanged": True}, capabilities
    # A backend behind it offers resources/subscribe, which listen streams deliver.
    assert capabilities["resources"] == {"listChanged": True, "subscribe": True}, capabilities
    assert "Deterministic fake forecasts" in result["instructions"]


def test_a_header_that_disagrees_with_the_body_is_refused(
        http: httpx2.Client, mixed_gateway: ManagedProcess) -> None:
    params = {"name": "weather_forecast", "arguments": {"city": "Oslo"}, "_meta": META}
    headers = {**headers_for("tools/call", params), "Mcp-Name": "weather_search"}
    response = post(http, mixed_gateway.url, "tools/call", params, headers=headers)
    assert response.status_code == 400
    assert error_of(response)["code"] == HEADER_MISMATCH
    assert response.json()["id"] == 7

    headers = {**headers_for("tools/list", {}), "Mcp-Method": "prompts/list"}
    response = post(http, mixed_gateway.url, "tools/list", headers=headers)
    assert (response.status_code, error_of(response)["code"]) == (400, HEADER_MISMATCH)


def test_optional_whitespace_around_a_header_value_is_ignored(
        mixed_gateway: ManagedProcess) -> None:
    params = {"name": "weather_search", "arguments": {"query": "osl"}, "_meta": META}
    headers = {**headers_for("tools/call", params), "Mcp-Name": "  weather_search  "}
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params})
    # httpx2 refuses to send such a header value; RFC 9110 lets a server receive one.
    connection = http_client.HTTPConnection(HOST, mixed_gateway.port, timeout=15)
    try:
        connection.request("POST", "/mcp", body=body, headers=headers)
        response = connection.getresponse()
        status, answer = response.status, json.loads(response.read())
    finally:
        connection.close()
    assert status == 200, answer
    assert answer["result"]["structuredContent"] == {"result": ["Oslo"]}


def test_an_unsupported_version_is_answered_with_the_supported_ones(
        http: httpx2.Client, mixed_gateway: ManagedProcess) -> None:
    meta = {**META, "io.modelcontextprotocol/protocolVersion": "2099-01-01"}
    headers = {**headers_for("server/discover", {}), "MCP-Protocol-Version": "2099-01-01"}
    response = post(http, mixed_gateway.url, "server/discover", headers=headers, meta=meta)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == UNSUPPORTED_PROTOCOL_VERSION
    assert error["data"] == {"supported": [MODERN], "requested": "2099-01-01"}


@pytest.mark.parametrize("meta", [None, {"io.modelcontextprotocol/protocolVersion": MODERN}])
def test_a_request_without_its_envelope_is_refused(
        http: httpx2.Client, mixed_gateway: ManagedProcess, meta: dict[str, Any] | None) -> None:
    response = post(http, mixed_gateway.url, "tools/list", meta=meta)
    assert response.status_code == 400
    assert error_of(response)["code"] == INVALID_PARAMS


@pytest.mark.parametrize("method", ["initialize", "ping", "logging/setLevel",
                                    "resources/subscribe", "no/such"])
def test_methods_this_revision_lacks_are_not_found(
        http: httpx2.Client, mixed_gateway: ManagedProcess, method: str) -> None:
    response = post(http, mixed_gateway.url, method)
    assert response.status_code == 404
    assert error_of(response)["code"] == METHOD_NOT_FOUND
    assert response.json()["id"] == 7


def test_unknown_names_are_invalid_params(
        http: httpx2.Client, mixed_gateway: ManagedProcess) -> None:
    response = post(http, mixed_gateway.url, "tools/call", {"name": "nope", "arguments": {}})
    assert (response.status_code, error_of(response)["code"]) == (400, INVALID_PARAMS)
    response = post(http, mixed_gateway.url, "resources/read", {"uri": "nowhere://x"})
    assert response.status_code == 400
    error = error_of(response)
    assert (error["code"], error["data"]) == (INVALID_PARAMS, {"uri": "nowhere://x"})


def test_get_and_delete_have_no_meaning_at_this_revision(
        http: httpx2.Client, mixed_gateway: ManagedProcess) -> None:
    headers = {"Accept": "text/event-stream", "MCP-Protocol-Version": MODERN}
    for verb in ("GET", "DELETE"):
        response = http.request(verb, mixed_gateway.url, headers=headers)
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"


def test_notifications_are_accepted_and_garbage_is_a_parse_error(
        http: httpx2.Client, mixed_gateway: ManagedProcess) -> None:
    headers = {**BASE_HEADERS, "MCP-Protocol-Version": MODERN}
    response = http.post(mixed_gateway.url, headers=headers, json={
        "jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}})
    assert response.status_code == 202
    response = http.post(mixed_gateway.url, headers=headers, content=b"{not json")
    assert response.status_code == 400
    assert response.json() == {"jsonrpc": "2.0", "id": None,
                               "error": {"code": PARSE_ERROR, "message": "Parse error"}}


def test_a_session_based_backends_question_is_an_input_required_round(
        http: httpx2.Client, mixed_gateway: ManagedProcess) -> None:
    params = {"name": "weather_ask_llm", "arguments": {"question": "snow?"}}
    first = result_of(post(http, mixed_gateway.url, "tools/call", params))
    assert first["resultType"] == "input_required", first
    (key, question), = first["inputRequests"].items()
    assert question["method"] == "sampling/createMessage"
    assert question["params"]["messages"][0]["content"]["text"] == "snow?"
    state = first["requestState"]

    answer = {"role": "assistant", "model": "m", "content": {"type": "text", "text": "no"}}
    retry = {**params, "inputResponses": {key: answer}, "requestState": state}
    done = result_of(post(http, mixed_gateway.url, "tools/call", retry))
    assert done["resultType"] == "complete"
    assert done["content"] == [{"type": "text", "text": "no"}]

    # A round is answered once; its state is then no longer valid.
    replay = post(http, mixed_gateway.url, "tools/call", retry)
    assert (replay.status_code, error_of(replay)["code"]) == (400, INVALID_PARAMS)
    forged = {**retry, "requestState": "made-up"}
    response = post(http, mixed_gateway.url, "tools/call", forged)
    assert (response.status_code, error_of(response)["code"]) == (400, INVALID_PARAMS)


def test_a_round_cannot_be_continued_for_another_request(
        http: httpx2.Client, mixed_gateway: ManagedProcess) -> None:
    params = {"name": "weather_ask_llm", "arguments": {"question": "wind?"}}
    first = result_of(post(http, mixed_gateway.url, "tools/call", params))
    state = first["requestState"]
    elsewhere = {"name": "weather_search", "arguments": {"query": "o"}, "requestState": state}
    response = post(http, mixed_gateway.url, "tools/call", elsewhere)
    assert (response.status_code, error_of(response)["code"]) == (400, INVALID_PARAMS)
    # The original request can still finish its round.
    key = next(iter(first["inputRequests"]))
    answer = {"role": "assistant", "model": "m", "content": {"type": "text", "text": "calm"}}
    done = result_of(post(http, mixed_gateway.url, "tools/call",
                          {**params, "inputResponses": {key: answer}, "requestState": state}))
    assert done["content"] == [{"type": "text", "text": "calm"}]
