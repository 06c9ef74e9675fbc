"""Virtual upstream sessions on one shared stdio process, without a gateway around them.

The Python SDK stdio server (tests/integration/stdio_server.py) runs under this
process's own :class:`~vmcp.backend.StdioProcesses`: a session opened with ``connect``
and one re-attached from its stored state with ``attach`` share the one process, which
is initialized once, outlives the sessions that end, and tells each of them its list
changes.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from typing import Any

import anyio
import pytest

from tests.support.processes import PROJECT_ROOT, processes_with
from vmcp.backend import BackendState, StdioProcesses, attach, connect, target_of
from vmcp.backend.http_client import backend_http_client
from vmcp.config import BackendConfig
from vmcp.errors import BackendUnavailable

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SERVER = str(PROJECT_ROOT / "tests" / "integration" / "stdio_server.py")
HELLO: dict[str, Any] = {"client_info": {"name": "test", "version": "1"},
                         "capabilities": {}}


async def test_sessions_share_one_process_initialized_once_that_outlives_them() -> None:
    marker = f"stdio-sessions-{uuid.uuid4().hex}"
    target = target_of(BackendConfig(name="py", transport="stdio", command=sys.executable,
                                     args=(SERVER, marker), connect_timeout_seconds=20))
    with anyio.fail_after(40):
        async with backend_http_client() as http, StdioProcesses(**HELLO) as pool:
            first = await connect(target, http, timeout=20, stdio=pool, **HELLO)
            stored = first.state.to_json()
            second = await attach(target, http, BackendState.from_json(stored), timeout=20,
                                  stdio=pool, **HELLO)
            assert first.state.initialize_result["serverInfo"]["name"] == "stdio-test"
            changes = anyio.Event()

            async def follow() -> None:
                async with contextlib.aclosing(second.listen()) as messages:
                    async for message in messages:
                        if message["method"] == "notifications/tools/list_changed":
                            changes.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                added = await first.request("tools/call", {"name": "add_tool",
                                                           "arguments": {"name": "extra"}})
                assert added["content"][0]["text"] == "extra"
                await changes.wait()
                await first.aclose()  # ends this session, not the process
                echoed = await second.request("tools/call", {"name": "echo",
                                                             "arguments": {"tag": "on"}})
                tg.cancel_scope.cancel()
            assert echoed["content"][0]["text"] == "on"
            process = pool.get("py")
            assert process is not None
            assert process.supervisor.starts == 1  # one process, one initialize
            assert len(processes_with(marker)) == 1
            await second.aclose()
        # Leaving the pool stops the process.
        assert not processes_with(marker)
        with pytest.raises(BackendUnavailable, match="not running"):
            await process.link(0)
