"""What ``vmcp demo`` runs beside the gateway: the demo backends, and how to try them."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from vmcp.config import (
    VmcpConfig,
)

DEMO_BACKENDS = ("notes", "weather")
DEMO_READY_TIMEOUT_SECONDS = 30.0
_DEMO_POLL_SECONDS = 0.1
_DEMO_STOP_TIMEOUT_SECONDS = 5.0
# The MCP Inspector's default origins, so the demo can be explored from it as is.
_DEMO_ORIGINS = ("http://localhost:6274", "http://127.0.0.1:6274")


class DemoError(Exception):
    """The demo could not be set up; the message says why, for the person running it."""


@dataclass
class DemoBackend:
    name: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def start_backend(root: Path, name: str, port: int) -> DemoBackend:
    command = [sys.executable, "-m", f"examples.backends.{name}", "--port", str(port)]
    # A session of its own, so Ctrl-C reaches only vmcp, which then stops the backends in
    # order instead of every process racing to print its own interruption.
    process = subprocess.Popen(command, cwd=root, start_new_session=True)
    return DemoBackend(name, port, process)


def wait_until_answering(backend: DemoBackend, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = backend.process.poll()
        if status is not None:
            raise DemoError(f"backend {backend.name!r} exited with status {status} at start-up")
        if answers_http(backend.port):
            return
        if time.monotonic() >= deadline:
            raise DemoError(
                f"backend {backend.name!r} did not answer on port {backend.port} "
                f"within {timeout:g}s"
            )
        time.sleep(_DEMO_POLL_SECONDS)


def answers_http(port: int) -> bool:
    """Whether anything answers HTTP on the port; any status counts as ready."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        connection.request("GET", "/mcp")
        connection.getresponse().close()
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()
    return True


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=_DEMO_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


def print_demo_banner(config: VmcpConfig, backends: Sequence[DemoBackend]) -> None:
    server = config.server
    url = f"http://{server.host}:{server.port}{server.path}"
    typer.echo(f"vmcp demo: gateway at {url}")
    for backend in backends:
        typer.echo(f"  backend {backend.name}: {backend.url}")
    typer.echo("Try it (a session: initialize, then a tool call with the session's id):")
    for line in demo_session_commands(url):
        typer.echo(f"  {line}")
    typer.echo("Press Ctrl-C to stop.")


def demo_session_commands(url: str) -> list[str]:
    """Shell lines that open a session on the demo with curl and call a tool in it: the
    headers a client needs after ``initialize`` (its session id, the protocol version)."""
    from mcp_types.version import LATEST_HANDSHAKE_VERSION

    version = LATEST_HANDSHAKE_VERSION
    headers = "-H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream'"
    session = f"{headers} -H \"Mcp-Session-Id: $SID\" -H 'MCP-Protocol-Version: {version}'"
    initialize = ('{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"'
                  + version + '","capabilities":{},"clientInfo":{"name":"curl","version":"0"}}}')
    call = ('{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"notes_add_note",'
            '"arguments":{"title":"hello","body":"from curl"}}}')
    return [
        f"SID=$(curl -s -o /dev/null -D - {url} {headers} -d '{initialize}' "
        "| tr -d '\\r' | sed -n 's/^mcp-session-id: //Ip')",
        f"curl -s {url} {session} -d '{{\"jsonrpc\":\"2.0\",\"method\":"
        f"\"notifications/initialized\"}}'",
        f"curl -s {url} {session} -d '{call}'",
        f"curl -s -X DELETE {url} {session}",
    ]
