"""Clients of the stateless revision (2026-07-28) and of the session-based ones, side by side.

One gateway fronts one backend of each kind: notes also speaks the stateless revision
(the gateway calls it with one self-contained POST per call), weather speaks only the
session-based revisions (the gateway holds an upstream session with it on the stateless
client's behalf). The official SDK client talks to the gateway in each of its modes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CreateMessageRequestParams,
    CreateMessageResult,
    ErrorData,
    TextContent,
    TextResourceContents,
)

from tests.support.processes import (
    HOST,
    PROJECT_ROOT,
    WEATHER_MODULE,
    ManagedProcess,
    gateway_config,
    running_backends,
    running_gateway,
    wait_until_ready,
)

pytestmark = pytest.mark.anyio

MODERN = "2026-07-28"
NOTES_TOOLS = {"notes_add_note", "notes_list_notes", "notes_search"}
WEATHER_TOOLS = {"weather_forecast", "weather_search", "weather_slow_count", "weather_ask_llm"}


async def _answer_sampling(context: ClientRequestContext,
                           params: CreateMessageRequestParams) -> CreateMessageResult | ErrorData:
    question = params.messages[-1].content
    text = question.text if isinstance(question, TextContent) else "?"
    return CreateMessageResult(role="assistant", model="test-model",
                               content=TextContent(type="text", text=f"answer to: {text}"))


def _client(url: str, mode: str, **callbacks: Any) -> Client:
    return Client(url, mode=mode, read_timeout_seconds=30, **callbacks)  # type: ignore[arg-type]


def _text(result: Any) -> str:
    assert not result.is_error, result
    (content,) = result.content
    assert isinstance(content, TextContent), content
    return content.text


@pytest.mark.parametrize("mode", [MODERN, "auto"])
async def test_a_stateless_client_uses_both_kinds_of_backend(
        mixed_gateway: ManagedProcess, mode: str) -> None:
    async with _client(mixed_gateway.url, mode) as client:
        assert client.protocol_version == MODERN
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert names >= NOTES_TOOLS | WEATHER_TOOLS, names

        added = await client.call_tool("notes_add_note", {"title": mode, "body": "stateless"})
        assert added.structured_content is not None
        note_id = added.structured_content["id"]
        forecast = await client.call_tool("weather_forecast", {"city": "Oslo", "days": 2})
        assert forecast.structured_content is not None
        assert forecast.structured_content["city"] == "Oslo"
        assert len(forecast.structured_content["days"]) == 2

        note = await client.read_resource(f"notes://{note_id}")
        (contents,) = note.contents
        assert isinstance(contents, TextResourceContents)
        assert json.loads(contents.text)["body"] == "stateless"
        cities = await client.read_resource("weather://cities")
        assert isinstance(cities.contents[0], TextResourceContents)
        assert "Oslo" in cities.contents[0].text

        prompt = await client.get_prompt("weather_weather_report", {"city": "Paris"})
        assert "Paris" in str(prompt.messages[0].content)


async def test_a_session_based_backends_sampling_request_reaches_a_stateless_client(
        mixed_gateway: ManagedProcess) -> None:
    async with _client(mixed_gateway.url, MODERN, sampling_callback=_answer_sampling) as client:
        result = await client.call_tool("weather_ask_llm", {"question": "rain in Oslo?"})
    assert _text(result) == "answer to: rain in Oslo?"


async def test_progress_of_a_session_based_backend_reaches_a_stateless_client(
        mixed_gateway: ManagedProcess) -> None:
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with _client(mixed_gateway.url, MODERN) as client:
        result = await client.call_tool("weather_slow_count", {"n": 3},
                                        progress_callback=on_progress)
    assert _text(result) == "counted to 3"
    assert seen == [1, 2, 3]


async def test_a_backend_asking_for_what_the_client_did_not_declare_gets_a_refusal(
        mixed_gateway: ManagedProcess) -> None:
    async with _client(mixed_gateway.url, MODERN) as client:  # no sampling callback
        with anyio.fail_after(20):
            try:
                result = await client.call_tool("weather_ask_llm", {"question": "sun?"})
            except MCPError:
                return
    assert result.is_error, result


async def test_old_and_new_clients_share_one_gateway(mixed_gateway: ManagedProcess) -> None:
    outcomes: dict[str, tuple[str, str]] = {}

    async def use(mode: str) -> None:
        async with _client(mixed_gateway.url, mode,
                           sampling_callback=_answer_sampling) as client:
            for _ in range(3):
                llm = await client.call_tool("weather_ask_llm", {"question": mode})
                found = await client.call_tool("weather_search", {"query": "to"})
            assert found.structured_content is not None
            outcomes[mode] = (client.protocol_version, _text(llm))

    async with anyio.create_task_group() as tg:
        for mode in ("legacy", MODERN, "auto"):
            tg.start_soon(use, mode)
    assert outcomes["legacy"] == ("2025-11-25", "answer to: legacy")
    assert outcomes[MODERN] == (MODERN, f"answer to: {MODERN}")
    assert outcomes["auto"] == (MODERN, "answer to: auto")


async def test_upstream_sessions_for_stateless_clients_end_when_idle(
        mixed_gateway: ManagedProcess) -> None:
    async with _client(mixed_gateway.url, MODERN) as client:
        await client.call_tool("weather_search", {"query": "o"})
        await client.call_tool("notes_search", {"query": "o"})
    async with httpx2.AsyncClient(timeout=10) as http:
        # The gateway's idle limit is one second; the sweep runs four times as often.
        deadline = time.monotonic() + 15
        while True:
            status = (await http.get(f"{mixed_gateway.base_url}/status")).json()
            upstream = status["upstream_sessions"]
            if upstream.get("weather", {}).get("open", 0) == 0:
                break
            assert time.monotonic() < deadline, upstream
            await anyio.sleep(0.1)
    assert upstream["weather"]["opened"] >= 1, upstream


async def test_a_backend_that_stops_speaking_the_stateless_revision_is_reclassified(
        tmp_path: Path) -> None:
    with running_backends({"weather": WEATHER_MODULE}, tmp_path / "backends") as backends, \
            running_gateway(gateway_config(backends, session={"store": "memory"}),
                            tmp_path / "gateway") as gateway:
        async with _client(gateway.url, MODERN) as client:
            before = await client.call_tool("weather_search", {"query": "par"})
        assert before.structured_content == {"result": ["Paris"]}

        await anyio.to_thread.run_sync(_restart_handshake_only, backends["weather"])

        async with _client(gateway.url, MODERN) as client:
            after = await client.call_tool("weather_search", {"query": "par"})
        assert after.structured_content == {"result": ["Paris"]}
        assert "weather is session-based after all" in gateway.log_tail(200)


def _restart_handshake_only(backend: ManagedProcess) -> None:
    """Restart ``backend`` on its port as a server of the handshake era only."""
    backend.stop()
    command = [sys.executable, "-m", WEATHER_MODULE, "--host", HOST,
               "--port", str(backend.port), "--handshake-only"]
    with backend.log_path.open("ab") as log:
        backend.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                           cwd=PROJECT_ROOT)
    backend.stopped = False
    wait_until_ready([backend])
