"""ContextForge (``mcp-contextforge-gateway``) in front of the bench backend, if installed.

It cannot share the project's virtualenv: it pins ``mcp`` 1.x, the project ``mcp`` 2.x.
``python -m bench.run --setup-contextforge`` installs it into its own virtualenv at
``.cache/contextforge-venv`` (pinned in ``bench/requirements-contextforge.txt``); a run
without that virtualenv skips the scenario and says why.

Set-up, as its documentation describes for a local gateway: SQLite database, in-memory
cache, admin UI off, a random JWT secret; a bearer token minted with its own
``mcpgateway.utils.create_jwt_token``; the backend registered as a gateway
(``POST /gateways``, Streamable HTTP), its tools bundled into a virtual server
(``POST /servers``), whose MCP endpoint ``/servers/<id>/mcp`` is what clients use.
Changed from the defaults, and only so that the backend and the load can reach it at all:
loopback backends allowed (``SSRF_ALLOW_LOCALHOST``), the request rate limiter off
(its default of 100 tool requests per minute would answer most of the load with 429).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx2

from bench.procs import ROOT, Proc, Processes, wait_http

VENV = ROOT / ".cache" / "contextforge-venv"
REQUIREMENTS = ROOT / "bench" / "requirements-contextforge.txt"
INSTALL_TIMEOUT = 900.0
START_TIMEOUT = 120.0


@dataclass
class ContextForge:
    proc: Proc
    url: str
    headers: dict[str, str]


def installed() -> bool:
    return (VENV / "bin" / "mcpgateway").exists()


def install() -> None:
    """Create the separate virtualenv and install the pinned ContextForge into it."""
    VENV.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(VENV)], check=True, timeout=120)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "-r", str(REQUIREMENTS)],
                   check=True, timeout=INSTALL_TIMEOUT)


def start(procs: Processes, workdir: Path, backend_url: str, port: int) -> ContextForge:
    """Start ContextForge, register the backend and return its virtual server's endpoint."""
    secret = secrets.token_hex(32)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "JWT_SECRET_KEY": secret,
        "AUTH_ENCRYPTION_SECRET": secrets.token_hex(32),
        "BASIC_AUTH_PASSWORD": "Bench-" + secrets.token_hex(8),
        "PLATFORM_ADMIN_PASSWORD": "Bench-" + secrets.token_hex(8),
        "PLATFORM_ADMIN_EMAIL": "admin@example.com",
        "DATABASE_URL": f"sqlite:///{workdir}/contextforge.db",
        "CACHE_TYPE": "memory",
        "MCPGATEWAY_UI_ENABLED": "false",
        "MCPGATEWAY_ADMIN_API_ENABLED": "false",
        "LOG_LEVEL": "WARNING",
        "ENVIRONMENT": "development",
        "SSRF_ALLOW_LOCALHOST": "true",
        "RATE_LIMITING_ENABLED": "false",
        "TOOL_RATE_LIMIT": "1000000",
    }
    proc = procs.start("contextforge", [str(VENV / "bin" / "mcpgateway"), "--host",
                                        "127.0.0.1", "--port", str(port)],
                       env=env, cwd=workdir)
    wait_http(proc, port, "/health", timeout=START_TIMEOUT, ok=(200,))
    token = subprocess.run(
        [str(VENV / "bin" / "python"), "-m", "mcpgateway.utils.create_jwt_token",
         "--username", "admin@example.com", "--exp", "120", "--secret", secret],
        env=env, cwd=workdir, capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip().splitlines()[-1]
    headers = {"authorization": f"Bearer {token}"}
    base = f"http://127.0.0.1:{port}"
    with httpx2.Client(base_url=base, headers=headers, timeout=60) as client:
        gateway = client.post("/gateways", json={
            "name": "bench", "url": backend_url, "transport": "STREAMABLEHTTP"})
        if gateway.status_code not in (200, 201):
            raise RuntimeError(f"POST /gateways: {gateway.status_code} {gateway.text[:300]}")
        tools = client.get("/tools")
        tools.raise_for_status()
        ids = [tool["id"] for tool in tools.json()]
        server = client.post("/servers", json={
            "server": {"name": "bench", "associated_tools": ids}})
        if server.status_code not in (200, 201):
            raise RuntimeError(f"POST /servers: {server.status_code} {server.text[:300]}")
        server_id = json.loads(server.text)["id"]
    return ContextForge(proc, f"{base}/servers/{server_id}/mcp", headers)
