"""What a starting gateway says: "ready" only once its port is bound and its backends have
been probed, and loudly when none of them can be reached."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.support.processes import ManagedProcess, running_gateway
from tests.support.redis_server import free_port

READY_WITHIN_SECONDS = 20.0


def _ready_line(gateway: ManagedProcess) -> tuple[list[dict[str, str]], int]:
    """The log so far, parsed, and the index of the "ready" line in it (bounded wait)."""
    deadline = time.monotonic() + READY_WITHIN_SECONDS
    while True:
        lines = [json.loads(line) for line in gateway.log_tail(500).splitlines()
                 if line.startswith("{")]
        found = [i for i, entry in enumerate(lines) if " ready at " in entry["message"]]
        if found:
            return lines, found[0]
        assert time.monotonic() < deadline, gateway.log_tail()
        time.sleep(0.05)


def test_ready_is_logged_after_the_port_is_bound_and_warns_without_backends(
        tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/mcp"
    config = {"backends": [{"name": "offline", "url": dead}],
              "health": {"interval_seconds": 60, "unhealthy_threshold": 1}}
    with running_gateway(config, tmp_path) as gateway:
        lines, ready = _ready_line(gateway)
    bound = next(i for i, entry in enumerate(lines) if "Uvicorn running on" in entry["message"])
    assert bound < ready
    assert lines[ready]["level"] == "warning"
    assert "0 of 1 backends reachable (down: offline)" in lines[ready]["message"]
