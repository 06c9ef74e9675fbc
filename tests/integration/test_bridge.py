"""``vmcp bridge``: stdio MCP servers served over Streamable HTTP, and what goes wrong.

Real commands throughout: the notes demo backend run as a Python SDK stdio server, the
npm ``@modelcontextprotocol/server-everything`` in stdio mode under the tests' Node.js,
and small Python programs that crash at start, print garbage, flood stderr or never
answer. After each, no process started for it is left (nor a zombie meanwhile).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support.mcp_http import ListenStream, RawSession, modern_call
from tests.support.node_tools import ensure_npm_package, node_executable
from tests.support.processes import (
    PROJECT_ROOT,
    ManagedProcess,
    gateway_config,
    processes_with,
    running_bridge,
    running_gateway,
    wait_for,
)

pytestmark = pytest.mark.slow

WAIT_SECONDS = 30.0
NOTES_STDIO = ("from examples.backends.notes import create_server; "
               "create_server().run('stdio')")
EVERYTHING_PACKAGE = "@modelcontextprotocol/server-everything"
EVERYTHING_VERSION = "2026.8.31"
EVERYTHING_CACHE = PROJECT_ROOT / ".cache" / "everything"


@pytest.fixture
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=15.0) as client:
        yield client


@pytest.fixture
def marker() -> str:
    """An argument only this test's stdio server carries, to find its processes by."""
    return f"bridge-test-{uuid.uuid4().hex}"


def ready(http: httpx2.Client, bridge: ManagedProcess) -> bool:
    return http.get(f"{bridge.base_url}/readyz").status_code == 200


def health(http: httpx2.Client, bridge: ManagedProcess) -> dict[str, Any]:
    stdio: dict[str, Any] = http.get(f"{bridge.base_url}/healthz").json()["stdio"]
    return stdio


def assert_no_leak(marker: str) -> None:
    wait_for(lambda: not processes_with(marker), f"the processes of {marker} to end")


def python(code: str, marker: str) -> list[str]:
    return [sys.executable, "-c", code, marker]


def test_a_python_stdio_server_is_served_to_both_revisions_and_behind_the_gateway(
        http: httpx2.Client, marker: str, tmp_path: Path) -> None:
    with running_bridge(python(NOTES_STDIO, marker), tmp_path) as bridge:
        wait_for(lambda: ready(http, bridge), "the stdio server to start")
        session = RawSession.open(http, bridge.url)
        assert {"add_note", "list_notes"} <= session.tool_names()
        added = modern_call(http, bridge.url, "tools/call",
                            {"name": "add_note", "arguments": {"title": "t", "body": "b"}},
                            name="add_note")
        assert added["result"]["structuredContent"]["title"] == "t", added
        config = gateway_config({"stdio": bridge}, session={"store": "memory"})
        with running_gateway(config, tmp_path / "gateway") as gateway:
            through = RawSession.open(http, gateway.url)
            assert "stdio_list_notes" in through.tool_names()
        assert len(processes_with(marker, bridge)) == 1
    assert_no_leak(marker)


def test_a_stdio_servers_list_change_reaches_a_listener_through_the_gateway(
        http: httpx2.Client, marker: str, tmp_path: Path) -> None:
    with running_bridge(python(NOTES_STDIO, marker), tmp_path) as bridge:
        wait_for(lambda: ready(http, bridge), "the stdio server to start")
        config = gateway_config({"stdio": bridge}, session={"store": "memory"})
        with running_gateway(config, tmp_path / "gateway") as gateway, \
                ListenStream(gateway.url, {"toolsListChanged": True}) as stream:
            stream.wait_for(lambda s: s.messages, "the acknowledgement")
            assert "stdio_delete_note" not in tool_names(http, gateway.url)
            enabled = modern_call(http, gateway.url, "tools/call",
                                  {"name": "stdio_enable_deletion", "arguments": {}},
                                  name="stdio_enable_deletion")
            assert "result" in enabled, enabled
            stream.wait_for(lambda s: "notifications/tools/list_changed" in s.methods(),
                            "the stdio server's tools list_changed")
            assert "stdio_delete_note" in tool_names(http, gateway.url)
    assert_no_leak(marker)


def tool_names(http: httpx2.Client, url: str) -> set[str]:
    answer = modern_call(http, url, "tools/list")
    return {tool["name"] for tool in answer["result"]["tools"]}


def test_the_npm_everything_server_in_stdio_mode(http: httpx2.Client, marker: str,
                                                 tmp_path: Path) -> None:
    ensure_npm_package(EVERYTHING_PACKAGE, EVERYTHING_VERSION, EVERYTHING_CACHE,
                       "mcp-server-everything")
    script = (EVERYTHING_CACHE / "node_modules" / EVERYTHING_PACKAGE / "dist" / "index.js")
    with running_bridge([node_executable(), str(script), "stdio", marker], tmp_path) as bridge:
        wait_for(lambda: ready(http, bridge), "server-everything to start")
        session = RawSession.open(http, bridge.url)
        assert "echo" in session.tool_names()
        echoed = session.result("tools/call", {"name": "echo", "arguments": {"message": "hi"}})
        assert "hi" in echoed["content"][0]["text"], echoed
        listed = modern_call(http, bridge.url, "prompts/list")
        assert listed["result"]["prompts"], listed
    assert_no_leak(marker)


def test_a_server_that_crashes_at_start_is_reported_and_restarted_without_zombies(
        http: httpx2.Client, marker: str, tmp_path: Path) -> None:
    crash = "import sys; print('cannot open the database', file=sys.stderr); sys.exit(3)"
    with running_bridge(python(crash, marker), tmp_path) as bridge:
        wait_for(lambda: health(http, bridge)["starts"] >= 3, "three starts (backoff)")
        report = health(http, bridge)
        assert not report["running"]
        assert "initialize failed" in report["last_error"], report
        refused = http.get(f"{bridge.base_url}/readyz")
        assert refused.status_code == 503
        answer = modern_call(http, bridge.url, "tools/list")
        assert answer["error"]["code"] == -32603, answer
        assert "is not running" in answer["error"]["message"], answer
        assert all(state != "Z" for _, state in processes_with(marker, bridge))
        wait_for(lambda: "cannot open the database" in bridge.log_tail(400),
                 "the server's stderr in the bridge's log")
    assert_no_leak(marker)


def test_garbage_on_stdout_is_a_clear_error(http: httpx2.Client, marker: str,
                                            tmp_path: Path) -> None:
    garbage = "import time; print('Welcome to my server!', flush=True); time.sleep(600)"
    with running_bridge(python(garbage, marker), tmp_path,
                        "--initialize-timeout", "1") as bridge:
        report = wait_for(lambda: (h := health(http, bridge))["last_error"] and h,
                          "the first failure")
        assert "not JSON-RPC" in report["last_error"], report
        assert "Welcome" in report["last_error"], report
    assert_no_leak(marker)


def test_a_server_that_never_answers_initialize_is_stopped(
        http: httpx2.Client, marker: str, tmp_path: Path) -> None:
    hang = "import sys; sys.stdin.read()"
    with running_bridge(python(hang, marker), tmp_path, "--initialize-timeout", "1") as bridge:
        report = wait_for(lambda: (h := health(http, bridge))["last_error"] and h,
                          "the first failure")
        assert report["last_error"] == "no answer to initialize within 1s: it did not answer"
        # Each attempt's process is gone before the next one starts.
        wait_for(lambda: health(http, bridge)["starts"] >= 2, "a second start")
        assert len(processes_with(marker, bridge)) <= 1
    assert_no_leak(marker)


def test_a_server_flooding_stderr_still_serves_and_its_log_stays_bounded(
        http: httpx2.Client, marker: str, tmp_path: Path) -> None:
    flood = ("import sys, threading\n"
             "def flood():\n"
             "    for i in range(200_000): print('noise', i, file=sys.stderr)\n"
             "threading.Thread(target=flood, daemon=True).start()\n" + NOTES_STDIO)
    with running_bridge(python(flood, marker), tmp_path) as bridge:
        wait_for(lambda: ready(http, bridge), "the stdio server to start")
        session = RawSession.open(http, bridge.url)
        assert "add_note" in session.tool_names()
        wait_for(lambda: "stderr lines not logged" in bridge.log_path.read_text(),
                 "the flood to be cut")
        logged = bridge.log_path.read_text().count("noise")
        assert logged < 20_000, logged
    assert_no_leak(marker)


def test_env_and_cwd_options_reach_the_stdio_server(
        http: httpx2.Client, marker: str, tmp_path: Path) -> None:
    server = str(PROJECT_ROOT / "tests" / "integration" / "stdio_server.py")
    workdir = tmp_path / "work"
    workdir.mkdir()
    with running_bridge([sys.executable, server, marker], tmp_path,
                        "--env", "GREETING=hello=world", "--env", "OTHER=1",
                        "--cwd", str(workdir)) as bridge:
        wait_for(lambda: ready(http, bridge), "the stdio server to start")
        session = RawSession.open(http, bridge.url)
        answer = session.result("tools/call", {"name": "environment",
                                               "arguments": {"name": "GREETING"}})
    assert answer["structuredContent"] == {"value": "hello=world", "cwd": str(workdir)}, answer
    assert_no_leak(marker)
