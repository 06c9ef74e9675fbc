"""The official SDK client, talking to real backends through a ``vmcp serve`` process.

The gateway is one process in front of the notes and weather demo backends; every name
it exposes carries its backend's prefix, including the ``search`` tool both backends
have. Traffic the backends start themselves (progress, sampling, elicitation) has to find
its way back to this client through the gateway.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequestFormParams,
    ElicitRequestParams,
    ElicitResult,
    ErrorData,
    TextContent,
    TextResourceContents,
)

from tests.support.processes import ManagedProcess

pytestmark = pytest.mark.anyio

INVALID_PARAMS = -32602

NOTES_TOOLS = {"notes_add_note", "notes_list_notes", "notes_search"}
WEATHER_TOOLS = {"weather_forecast", "weather_search", "weather_slow_count", "weather_ask_llm"}


def _text_of(content: object) -> str:
    assert isinstance(content, TextContent), content
    return content.text


def _structured(result: Any) -> dict[str, Any]:
    assert not result.is_error, result
    assert isinstance(result.structured_content, dict), result
    return result.structured_content


async def _refuse_sampling(context: ClientRequestContext,
                           params: CreateMessageRequestParams) -> CreateMessageResult | ErrorData:
    return ErrorData(code=-1, message="this test expects no sampling request")


async def _refuse_elicitation(context: ClientRequestContext,
                              params: ElicitRequestParams) -> ElicitResult | ErrorData:
    return ErrorData(code=-1, message="this test expects no elicitation request")


def _client(url: str, **callbacks: Any) -> Client:
    callbacks.setdefault("sampling_callback", _refuse_sampling)
    callbacks.setdefault("elicitation_callback", _refuse_elicitation)
    return Client(url, mode="legacy", read_timeout_seconds=30, **callbacks)


async def _add_note(client: Client, title: str, body: str) -> dict[str, Any]:
    return _structured(await client.call_tool("notes_add_note", {"title": title, "body": body}))


async def test_tools_of_both_backends_are_listed_under_their_prefixes(
        gateway: ManagedProcess) -> None:
    async with _client(gateway.url) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}

    assert names >= NOTES_TOOLS | WEATHER_TOOLS, names
    assert all(name.startswith(("notes_", "weather_")) for name in names), names
    assert "search" not in names


async def test_colliding_search_tool_routes_each_prefix_to_its_own_backend(
        gateway: ManagedProcess) -> None:
    token = uuid.uuid4().hex
    async with _client(gateway.url) as client:
        note = await _add_note(client, f"Oslo trip {token}", "pack an umbrella")

        notes_found = _structured(await client.call_tool("notes_search", {"query": token}))
        notes_oslo = _structured(await client.call_tool("notes_search", {"query": "Oslo"}))
        weather_found = _structured(await client.call_tool("weather_search", {"query": token}))
        weather_oslo = _structured(await client.call_tool("weather_search", {"query": "Oslo"}))

    # The same arguments give each backend's own answer: notes search returns notes,
    # weather search returns city names.
    assert [n["id"] for n in notes_found["result"]] == [note["id"]]
    assert note["id"] in [n["id"] for n in notes_oslo["result"]]
    assert all(isinstance(n, dict) and "title" in n for n in notes_oslo["result"])
    assert weather_found["result"] == []
    assert weather_oslo["result"] == ["Oslo"]


async def test_tools_of_both_backends_can_be_called(gateway: ManagedProcess) -> None:
    token = uuid.uuid4().hex
    async with _client(gateway.url) as client:
        note = await _add_note(client, f"Groceries {token}", "oat milk, lemons")
        listed = _structured(await client.call_tool("notes_list_notes", {}))
        forecast = _structured(
            await client.call_tool("weather_forecast", {"city": "oslo", "days": 2}))
        unknown_city = await client.call_tool("weather_forecast", {"city": "Atlantis"})

    assert note["title"] == f"Groceries {token}"
    assert note["body"] == "oat milk, lemons"
    assert note["id"] in [n["id"] for n in listed["result"]]
    assert forecast["city"] == "Oslo"
    assert [day["day"] for day in forecast["days"]] == [0, 1]
    # A tool's own failure is a tool result, relayed as the backend sent it.
    assert unknown_city.is_error
    assert "Atlantis" in _text_of(unknown_city.content[0])


async def test_resources_static_and_templated_are_read_through_the_gateway(
        gateway: ManagedProcess) -> None:
    token = uuid.uuid4().hex
    async with _client(gateway.url) as client:
        note = await _add_note(client, f"Resource {token}", "read me back")
        resources = {str(r.uri) for r in (await client.list_resources()).resources}
        templates = [t.uri_template
                     for t in (await client.list_resource_templates()).resource_templates]
        index = await client.read_resource("notes://index")
        one = await client.read_resource(f"notes://{note['id']}")
        cities = await client.read_resource("weather://cities")

    assert {"notes://index", "weather://cities"} <= resources, resources
    assert "notes://{id}" in templates, templates
    index_contents = index.contents[0]
    assert isinstance(index_contents, TextResourceContents)
    assert {"id": note["id"], "title": f"Resource {token}"} in json.loads(index_contents.text)
    one_contents = one.contents[0]
    assert isinstance(one_contents, TextResourceContents)
    assert str(one_contents.uri) == f"notes://{note['id']}"
    assert json.loads(one_contents.text)["body"] == "read me back"
    cities_contents = cities.contents[0]
    assert isinstance(cities_contents, TextResourceContents)
    assert "Oslo" in cities_contents.text.splitlines()


async def test_prompts_of_both_backends_are_listed_and_fetched(gateway: ManagedProcess) -> None:
    token = uuid.uuid4().hex
    async with _client(gateway.url) as client:
        await _add_note(client, f"Prompted {token}", "summarise me")
        prompts = {p.name for p in (await client.list_prompts()).prompts}
        report = await client.get_prompt("weather_weather_report", {"city": "Tokyo"})
        summary = await client.get_prompt("notes_summarize_notes")

    assert {"notes_summarize_notes", "weather_weather_report"} <= prompts, prompts
    assert "Tokyo" in _text_of(report.messages[0].content)
    assert f"Prompted {token}: summarise me" in _text_of(summary.messages[0].content)


async def test_progress_notifications_arrive_during_slow_count(gateway: ManagedProcess) -> None:
    updates: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, total, message))

    async with _client(gateway.url) as client:
        result = await client.call_tool("weather_slow_count", {"n": 4},
                                        progress_callback=on_progress)

    assert not result.is_error, result
    assert _text_of(result.content[0]) == "counted to 4"
    assert [(p, t) for p, t, _ in updates] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert updates[-1][2] == "counted 4 of 4"


async def test_sampling_request_reaches_the_client_and_its_answer_returns(
        gateway: ManagedProcess) -> None:
    seen: list[CreateMessageRequestParams] = []

    async def sample(context: ClientRequestContext,
                     params: CreateMessageRequestParams) -> CreateMessageResult:
        seen.append(params)
        return CreateMessageResult(role="assistant", content=TextContent(text="Bring an umbrella."),
                                   model="fake-model", stop_reason="endTurn")

    async with _client(gateway.url, sampling_callback=sample) as client:
        result = await client.call_tool("weather_ask_llm", {"question": "Will it rain in Oslo?"})

    assert not result.is_error, result
    assert _text_of(result.content[0]) == "Bring an umbrella."
    assert len(seen) == 1
    assert _text_of(seen[0].messages[0].content) == "Will it rain in Oslo?"


async def test_elicitation_request_reaches_the_client_and_its_answer_returns(
        conformance_gateway: ManagedProcess) -> None:
    seen: list[ElicitRequestParams] = []

    async def elicit(context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        seen.append(params)
        return ElicitResult(action="accept",
                            content={"username": "ada", "email": "ada@example.com"})

    async with _client(conformance_gateway.url, elicitation_callback=elicit) as client:
        result = await client.call_tool("test_elicitation", {"message": "Who are you?"})

    assert not result.is_error, result
    text = _text_of(result.content[0])
    assert text.startswith("User response: action=accept"), text
    assert json.loads(text.split("content=", 1)[1]) == {
        "username": "ada", "email": "ada@example.com"}
    assert len(seen) == 1
    assert isinstance(seen[0], ElicitRequestFormParams)
    assert seen[0].message == "Who are you?"


async def test_unknown_tool_is_a_json_rpc_error_and_the_session_goes_on(
        gateway: ManagedProcess) -> None:
    async with _client(gateway.url) as client:
        with pytest.raises(MCPError) as caught:
            await client.call_tool("no_such_tool", {})
        tools = await client.list_tools()

    assert caught.value.code == INVALID_PARAMS
    assert "no_such_tool" in caught.value.message
    assert {tool.name for tool in tools.tools} >= NOTES_TOOLS


async def test_a_sampling_request_to_a_client_without_sampling_is_refused_by_the_gateway(
        gateway: ManagedProcess) -> None:
    """The backend sees the gateway's capabilities, not the client's: the gateway answers
    its sampling request for a client that did not declare ``sampling``."""
    async with _client(gateway.url, sampling_callback=None) as client:
        with anyio.fail_after(15):
            try:
                result = await client.call_tool("weather_ask_llm", {"question": "Rain?"})
            except MCPError as exc:
                text = exc.error.message
            else:
                assert result.is_error, result
                text = _text_of(result.content[0])
    assert "did not declare the sampling capability" in text, text
