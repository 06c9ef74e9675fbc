"""``transport: stdio`` backends: one process per backend, shared by every client session.

One ``vmcp serve`` runs real stdio servers: a Python SDK server (tests/integration/
stdio_server.py, which a late test kills mid-call), the npm
``@modelcontextprotocol/server-everything`` under the tests' Node.js, and four broken
commands: one that crashes at start, one that prints garbage on stdout, one that floods
stderr and one that never answers ``initialize``. Clients
are the official SDK client, so two sessions number their requests (and so their
progress tokens) the same way, 1, 2, … The fixture's teardown stops the gateway and
checks every process it started is gone; the test that kills ``py`` comes last.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx2
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequestParams,
    ElicitResult,
    ErrorData,
    TextContent,
    ToolListChangedNotification,
)

from tests.support.mcp_http import modern_call
from tests.support.node_tools import ensure_npm_package, node_executable
from tests.support.processes import (
    PROJECT_ROOT,
    ManagedProcess,
    processes_with,
    running_gateway,
    wait_for,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SERVER = str(PROJECT_ROOT / "tests" / "integration" / "stdio_server.py")
EVERYTHING_PACKAGE = "@modelcontextprotocol/server-everything"
EVERYTHING_VERSION = "2026.8.31"
EVERYTHING_CACHE = PROJECT_ROOT / ".cache" / "everything"
WAIT_SECONDS = 30.0
MARKER = f"stdio-backend-test-{uuid.uuid4().hex}"
FLOOD = ("import sys\n"
         "for i in range(200_000): print('noise', i, file=sys.stderr)\n"
         "sys.stdin.read()\n")


def python(*args: str, **options: Any) -> dict[str, Any]:
    return {"transport": "stdio", "command": sys.executable, "args": [*args, MARKER],
            **options}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    ensure_npm_package(EVERYTHING_PACKAGE, EVERYTHING_VERSION, EVERYTHING_CACHE,
                       "mcp-server-everything")
    everything = EVERYTHING_CACHE / "node_modules" / EVERYTHING_PACKAGE / "dist" / "index.js"
    backends = {
        "py": python(SERVER),
        "everything": {"transport": "stdio", "command": node_executable(),
                       "args": [str(everything), "stdio", MARKER]},
        "crash": python("-c", "import sys; print('no database', file=sys.stderr); "
                              "sys.exit(3)"),
        "garbage": python("-c", "import time; print('Welcome!', flush=True); "
                                "time.sleep(600)", connect_timeout_seconds=1),
        "flood": python("-c", FLOOD, connect_timeout_seconds=1),
        "hang": python("-c", "import sys; sys.stdin.read()", connect_timeout_seconds=1),
    }
    # One health round only (at start-up): a stdio backend's health must come from its
    # process's state as it changes, not from periodic probes.
    config = {"backends": [{"name": name, **spec} for name, spec in backends.items()],
              "session": {"store": "memory"}, "health": {"interval_seconds": 3600}}
    with running_gateway(config, tmp_path_factory.mktemp("stdio-gateway")) as process:
        wait_for(lambda: {"py", "everything"} <= healthy(process),
                 "the working stdio servers to run")
        running = processes_with(MARKER)
        yield process
        # Stopping the gateway stops every process it started (no zombie, no orphan).
        assert len([p for p in running if p[1] != "Z"]) >= 3, running
        process.stop()
        wait_for(lambda: not processes_with(MARKER), f"the processes {running} to end")


def status(gateway: ManagedProcess) -> dict[str, dict[str, Any]]:
    with httpx2.Client(timeout=10) as http:
        backends = http.get(f"{gateway.base_url}/status").json()["backends"]
    return {b["name"]: b for b in backends}


def healthy(gateway: ManagedProcess) -> set[str]:
    return {name for name, b in status(gateway).items() if b["health"] == "healthy"}


async def _no_sampling(context: ClientRequestContext, params: CreateMessageRequestParams
                       ) -> CreateMessageResult | ErrorData:
    return ErrorData(code=-1, message="unexpected")


def answering(text: str) -> Any:
    async def sample(context: ClientRequestContext, params: CreateMessageRequestParams
                     ) -> CreateMessageResult:
        return CreateMessageResult(role="assistant", model="test",
                                   content=TextContent(type="text", text=text))
    return sample


def client(gateway: ManagedProcess, **options: Any) -> Client:
    return Client(gateway.url, mode="legacy", read_timeout_seconds=20, **options)


def text(result: Any) -> str:
    assert not result.is_error, result
    content = result.content[0]
    assert isinstance(content, TextContent), content
    return content.text


async def test_two_sessions_with_colliding_request_ids_each_get_their_own_answers(
        gateway: ManagedProcess) -> None:
    answers: dict[str, list[str]] = {"a": [], "b": []}

    async def calls(tag: str) -> None:
        async with client(gateway) as session, anyio.create_task_group() as tg:
            for i in range(8):
                async def one(i: int = i) -> None:
                    result = await session.call_tool("py_echo", {"tag": f"{tag}{i}"})
                    answers[tag].append(text(result))
                tg.start_soon(one)

    with anyio.fail_after(WAIT_SECONDS):
        async with anyio.create_task_group() as tg:
            tg.start_soon(calls, "a")
            tg.start_soon(calls, "b")
    assert sorted(answers["a"]) == [f"a{i}" for i in range(8)], answers
    assert sorted(answers["b"]) == [f"b{i}" for i in range(8)], answers


async def test_progress_reaches_only_the_session_that_asked(gateway: ManagedProcess) -> None:
    seen: dict[str, list[str | None]] = {"a": [], "b": []}

    async def run(tag: str) -> None:
        async def progress(value: float, total: float | None, message: str | None) -> None:
            seen[tag].append(message)

        async with client(gateway) as session:
            # The first request of each session: both carry the same progress token.
            result = await session.call_tool("py_progress", {"tag": tag, "steps": 4},
                                             progress_callback=progress)
            assert text(result) == f"{tag} done"

    with anyio.fail_after(WAIT_SECONDS):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "a")
            tg.start_soon(run, "b")
    assert seen == {tag: [f"{tag} {step}" for step in range(1, 5)] for tag in "ab"}, seen


async def test_a_list_change_reaches_every_session_and_its_listing(
        gateway: ManagedProcess) -> None:
    changed = {"a": anyio.Event(), "b": anyio.Event()}

    def watcher(tag: str) -> Any:
        async def handle(message: Any) -> None:
            if isinstance(getattr(message, "root", message), ToolListChangedNotification):
                changed[tag].set()
        return handle

    with anyio.fail_after(WAIT_SECONDS):
        async with client(gateway, message_handler=watcher("a")) as a, \
                client(gateway, message_handler=watcher("b")) as b:
            await b.list_tools()
            assert text(await a.call_tool("py_add_tool", {"name": "fresh"})) == "fresh"
            await changed["a"].wait()
            await changed["b"].wait()
            names = {tool.name for tool in (await b.list_tools()).tools}
    assert "py_fresh" in names, names


async def test_sampling_and_elicitation_reach_the_session_whose_call_asked(
        gateway: ManagedProcess) -> None:
    async def elicit(context: ClientRequestContext, params: ElicitRequestParams
                     ) -> ElicitResult:
        return ElicitResult(action="accept", content={"ok": True})

    with anyio.fail_after(WAIT_SECONDS):
        async with client(gateway, sampling_callback=answering("from a"),
                          elicitation_callback=elicit) as a, \
                client(gateway, sampling_callback=answering("from b")) as b:
            assert text(await a.call_tool("py_ask", {"question": "who?"})) == "from a"
            assert text(await b.call_tool("py_ask", {"question": "who?"})) == "from b"
            assert text(await a.call_tool("py_confirm", {})) == "accept ok=True"


async def test_a_server_request_the_client_cannot_take_is_refused_clearly(
        gateway: ManagedProcess) -> None:
    with anyio.fail_after(WAIT_SECONDS):
        async with client(gateway) as session:  # no sampling callback
            with pytest.raises(MCPError, match="did not declare the sampling capability"):
                await session.call_tool("py_ask", {"question": "who?"})
            assert text(await session.call_tool("py_echo", {"tag": "after"})) == "after"


async def test_a_server_request_during_several_calls_is_refused_not_misrouted(
        gateway: ManagedProcess) -> None:
    started = anyio.Event()

    async def progress(value: float, total: float | None, message: str | None) -> None:
        started.set()

    with anyio.fail_after(WAIT_SECONDS):
        async with client(gateway, sampling_callback=_no_sampling) as busy, \
                client(gateway, sampling_callback=answering("b")) as asking, \
                anyio.create_task_group() as tg:
            async def long_call() -> None:
                await busy.call_tool("py_progress", {"tag": "busy", "steps": 100},
                                     progress_callback=progress)
            tg.start_soon(long_call)
            await started.wait()
            with pytest.raises(MCPError, match="cannot tell which client"):
                await asking.call_tool("py_ask", {"question": "who?"})
            tg.cancel_scope.cancel()


async def test_cancelling_a_call_cancels_it_in_the_stdio_server(
        gateway: ManagedProcess, tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    waiting = anyio.Event()

    async def progress(value: float, total: float | None, message: str | None) -> None:
        waiting.set()

    with anyio.fail_after(WAIT_SECONDS):
        async with client(gateway) as session, anyio.create_task_group() as tg:
            async def call() -> None:
                await session.call_tool("py_wait_for_cancel", {"path": str(flag)},
                                        progress_callback=progress)
            tg.start_soon(call)
            await waiting.wait()
            tg.cancel_scope.cancel()
    # The server's side is seen in the file it writes when its handler is cancelled.
    await anyio.to_thread.run_sync(
        wait_for, lambda: flag.exists() and flag.read_text() == "cancelled",
        "the stdio server to see the cancellation")


async def test_the_npm_everything_server_answers_two_sessions(gateway: ManagedProcess) -> None:
    with anyio.fail_after(WAIT_SECONDS):
        async with client(gateway) as a, client(gateway) as b:
            names = {tool.name for tool in (await a.list_tools()).tools}
            assert "everything_echo" in names, names
            one = await a.call_tool("everything_echo", {"message": "one"})
            two = await b.call_tool("everything_echo", {"message": "two"})
    assert "one" in text(one), one
    assert "two" in text(two), two


def test_the_stateless_revision_reaches_a_stdio_backend(gateway: ManagedProcess) -> None:
    with httpx2.Client(timeout=20) as http:
        listed = modern_call(http, gateway.url, "tools/list")
        called = modern_call(http, gateway.url, "tools/call",
                             {"name": "py_echo", "arguments": {"tag": "modern"}},
                             name="py_echo")
    assert "py_echo" in {t["name"] for t in listed["result"]["tools"]}, listed
    assert called["result"]["content"][0]["text"] == "modern", called


async def test_a_stateless_client_answers_the_stdio_servers_sampling_request(
        gateway: ManagedProcess) -> None:
    with anyio.fail_after(WAIT_SECONDS):
        async with Client(gateway.url, mode="2026-07-28", read_timeout_seconds=20,
                          sampling_callback=answering("modern")) as session:
            result = await session.call_tool("py_ask", {"question": "who?"})
    assert text(result) == "modern"


def test_broken_servers_are_unhealthy_with_the_reason_and_the_rest_is_served(
        gateway: ManagedProcess) -> None:
    reasons = {
        "crash": "initialize failed",
        "garbage": "not JSON-RPC on stdout ('Welcome!')",
        "hang": "no answer to initialize within 1s: it did not answer",
        "flood": "no answer to initialize within 1s",
    }

    def reported() -> bool:
        backends = status(gateway)
        return all(backends[name]["health"] == "unhealthy"
                   and why in (backends[name]["last_error"] or "")
                   for name, why in reasons.items())

    wait_for(reported, f"the reasons {reasons} on /status")
    def logged() -> str:
        log = gateway.log_path.read_text()
        wanted = ("no database", "stderr lines not logged", "is not JSON-RPC")
        return log if all(line in log for line in wanted) else ""

    log = wait_for(logged, "stderr, the flood cut and garbage in the log")
    assert log.count("noise") < 20_000
    with httpx2.Client(timeout=20) as http:
        called = modern_call(http, gateway.url, "tools/call",
                             {"name": "py_echo", "arguments": {"tag": "x"}}, name="py_echo")
    assert called["result"]["content"][0]["text"] == "x", called


async def test_a_server_dying_mid_call_fails_the_call_naming_the_backend(
        gateway: ManagedProcess) -> None:
    with anyio.fail_after(WAIT_SECONDS):
        async with client(gateway) as session:
            with pytest.raises(MCPError) as failed:
                await session.call_tool("py_die", {})
            still = await session.call_tool("everything_echo", {"message": "still"})
            assert "still" in text(still)
    assert "'py'" in str(failed.value), failed.value
    assert "stopped" in str(failed.value), failed.value
    wait_for(lambda: "'py': the stdio server stopped" in gateway.log_tail(400),
             "the failure in the log")


async def test_a_session_opened_while_the_process_was_down_takes_it_in_when_it_is_back(
        gateway: ManagedProcess) -> None:
    """Runs right after py died: it is restarting (0.5 s, then its start)."""
    changed = anyio.Event()

    async def handle(message: Any) -> None:
        if isinstance(getattr(message, "root", message), ToolListChangedNotification):
            changed.set()

    with anyio.fail_after(WAIT_SECONDS):
        async with client(gateway, message_handler=handle) as session:
            before = {tool.name for tool in (await session.list_tools()).tools}
            await changed.wait()
            after = {tool.name for tool in (await session.list_tools()).tools}
    assert "py_echo" not in before, before
    assert "py_echo" in after, after

