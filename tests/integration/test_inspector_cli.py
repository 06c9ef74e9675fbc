"""The MCP Inspector's command-line mode, a third-party client, against the gateway.

The Inspector is another team's Streamable-HTTP client implementation: what it accepts
from the gateway is what real tools built on the TypeScript SDK will accept.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.node_tools import ensure_inspector, node_env, node_executable
from tests.support.processes import ManagedProcess

INSPECTOR_TIMEOUT_SECONDS = 60.0


@pytest.fixture(scope="module")
def inspector() -> Path:
    return ensure_inspector()


def _run_inspector(inspector: Path, url: str, tmp_path: Path, *args: str) -> Any:
    """Run ``mcp-inspector --cli URL ARGS``; its JSON output, after checking exit 0."""
    cache_dir = inspector.parents[2]
    command = [node_executable(), str(inspector.relative_to(cache_dir)), "--cli", url, *args]
    # The Inspector keeps a catalog of servers and a store under the home directory; give
    # it this test's directory instead.
    env = node_env(HOME=str(tmp_path), MCP_CATALOG_PATH=str(tmp_path / "mcp-catalog.json"))
    completed = subprocess.run(
        command,
        cwd=cache_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=INSPECTOR_TIMEOUT_SECONDS,
        check=False,
    )
    report = (
        f"`{' '.join(command)}` exited {completed.returncode}\n"
        f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    )
    assert completed.returncode == 0, report
    try:
        return json.loads(completed.stdout)
    except ValueError as exc:
        raise AssertionError(f"stdout is not JSON: {exc}\n{report}") from exc


def test_inspector_lists_the_tools_of_both_backends(
    inspector: Path, gateway: ManagedProcess, tmp_path: Path
) -> None:
    listed = _run_inspector(inspector, gateway.url, tmp_path, "--method", "tools/list")

    names = {tool["name"] for tool in listed["tools"]}
    assert {
        "notes_add_note",
        "notes_search",
        "weather_forecast",
        "weather_search",
        "weather_slow_count",
        "weather_ask_llm",
    } <= names, names
    add_note = next(tool for tool in listed["tools"] if tool["name"] == "notes_add_note")
    assert set(add_note["inputSchema"]["required"]) == {"title", "body"}


def test_inspector_calls_a_tool_through_the_gateway(
    inspector: Path, gateway: ManagedProcess, tmp_path: Path
) -> None:
    title = f"x-{uuid.uuid4().hex}"
    called = _run_inspector(
        inspector,
        gateway.url,
        tmp_path,
        "--method",
        "tools/call",
        "--tool-name",
        "notes_add_note",
        "--tool-arg",
        f"title={title}",
        "--tool-arg",
        "body=y",
    )

    assert called.get("isError") is False, called
    assert called["structuredContent"]["title"] == title
    assert called["structuredContent"]["body"] == "y"
    assert json.loads(called["content"][0]["text"])["title"] == title


def test_inspector_reads_a_resource_through_the_gateway(
    inspector: Path, gateway: ManagedProcess, tmp_path: Path
) -> None:
    read = _run_inspector(
        inspector, gateway.url, tmp_path, "--method", "resources/read", "--uri", "weather://cities"
    )

    (contents,) = read["contents"]
    assert contents["uri"] == "weather://cities"
    assert "Oslo" in contents["text"].splitlines()
