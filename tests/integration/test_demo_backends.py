"""The demo backends work end to end over Streamable HTTP with the SDK client.

Each backend runs as its own process, as it will behind the gateway, so these
tests also cover the command line, the startup and a clean stop.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp_types import (
    CreateMessageRequestParams,
    CreateMessageResult,
    TextContent,
    TextResourceContents,
)

from tests.conformance.harness import RunningBackend, running_backend

NOTES = "examples.backends.notes"
WEATHER = "examples.backends.weather"


@pytest.fixture(scope="module")
def notes_backend() -> Iterator[RunningBackend]:
    with running_backend(NOTES) as backend:
        yield backend


@pytest.fixture(scope="module")
def weather_backend() -> Iterator[RunningBackend]:
    with running_backend(WEATHER) as backend:
        yield backend


def _text_of(content: object) -> str:
    assert isinstance(content, TextContent), content
    return content.text


@pytest.mark.anyio
async def test_notes_tools_and_resources(notes_backend: RunningBackend) -> None:
    async with Client(notes_backend.url, mode="legacy") as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert {"add_note", "list_notes", "search"} <= tools

        added = await client.call_tool(
            "add_note", {"title": "Groceries", "body": "oat milk, lemons", "tags": ["home"]}
        )
        assert not added.is_error, added
        assert isinstance(added.structured_content, dict)
        note_id = added.structured_content["id"]

        found = await client.call_tool("search", {"query": "LEMONS"})
        assert not found.is_error, found
        assert isinstance(found.structured_content, dict)
        assert [n["id"] for n in found.structured_content["result"]] == [note_id]

        read = await client.read_resource(f"notes://{note_id}")
        contents = read.contents[0]
        assert isinstance(contents, TextResourceContents)
        assert json.loads(contents.text)["title"] == "Groceries"

        templates = await client.list_resource_templates()
        assert [t.uri_template for t in templates.resource_templates] == ["notes://{id}"]
        prompts = {prompt.name for prompt in (await client.list_prompts()).prompts}
        assert "summarize_notes" in prompts


@pytest.mark.anyio
async def test_weather_forecast_is_deterministic(weather_backend: RunningBackend) -> None:
    async with Client(weather_backend.url, mode="legacy") as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert {"forecast", "search", "slow_count", "ask_llm"} <= tools

        first = await client.call_tool("forecast", {"city": "oslo", "days": 2})
        again = await client.call_tool("forecast", {"city": "Oslo", "days": 2})
        assert not first.is_error, first
        assert isinstance(first.structured_content, dict)
        assert first.structured_content["city"] == "Oslo"
        assert len(first.structured_content["days"]) == 2
        assert first.structured_content == again.structured_content

        unknown = await client.call_tool("forecast", {"city": "Atlantis"})
        assert unknown.is_error


@pytest.mark.anyio
async def test_slow_count_reports_progress(weather_backend: RunningBackend) -> None:
    updates: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, total, message))

    async with Client(weather_backend.url, mode="legacy") as client:
        result = await client.call_tool("slow_count", {"n": 4}, progress_callback=on_progress)

    assert _text_of(result.content[0]) == "counted to 4"
    assert [(p, t) for p, t, _ in updates] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert updates[-1][2] == "counted 4 of 4"


@pytest.mark.anyio
async def test_ask_llm_round_trips_a_sampling_request(weather_backend: RunningBackend) -> None:
    seen: list[CreateMessageRequestParams] = []

    async def sample(
        context: ClientRequestContext, params: CreateMessageRequestParams
    ) -> CreateMessageResult:
        seen.append(params)
        return CreateMessageResult(
            role="assistant",
            content=TextContent(text="Bring an umbrella."),
            model="fake-model",
            stop_reason="endTurn",
        )

    async with Client(weather_backend.url, mode="legacy", sampling_callback=sample) as client:
        result = await client.call_tool("ask_llm", {"question": "Will it rain in Oslo?"})

    assert not result.is_error, result
    assert _text_of(result.content[0]) == "Bring an umbrella."
    assert len(seen) == 1
    assert _text_of(seen[0].messages[0].content) == "Will it rain in Oslo?"


@pytest.mark.parametrize("module", [NOTES, WEATHER])
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_backend_stops_cleanly_and_quietly(module: str, stop_signal: signal.Signals) -> None:
    with running_backend(module, stop_signal=stop_signal) as backend:
        pass
    assert backend.returncode == 0, backend.output()
    assert backend.output() == ""
