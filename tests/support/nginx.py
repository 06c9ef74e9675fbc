"""A real nginx, round-robin in front of gateway replicas, with no stickiness."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support.processes import HOST, ProcessStartError, _answers
from tests.support.redis_server import free_port

STARTUP_TIMEOUT_SECONDS = 15.0

# The shipped example (docs/nginx.conf), with the replicas' and nginx's own ports put in:
# every test through nginx runs the configuration the documentation recommends.
EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "nginx.conf"

CONFIG = """
worker_processes 1;
pid nginx.pid;
error_log logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log logs/access.log;
  client_body_temp_path tmp;
  proxy_temp_path tmp;
{site}
}}
"""


def example_site(upstream_ports: Sequence[int], port: int, extra: str = "") -> str:
    """docs/nginx.conf with its ``server`` lines and ``listen`` address replaced, and
    ``extra`` directives added to its ``location``."""
    text = EXAMPLE.read_text(encoding="utf-8")
    servers = "".join(f"    server {HOST}:{p} max_fails=0;\n" for p in upstream_ports)
    text, count = re.subn(r"(?m)^    server \S+ max_fails=0;.*\n(    server .*\n)*", servers,
                          text, count=1)
    text, listens = re.subn(r"(?m)^    listen \S+;", f"    listen {HOST}:{port};", text)
    text, locations = re.subn(r"(?m)^    location / \{\n", lambda m: m.group(0) + extra, text)
    if count != 1 or listens != 1 or locations != 1:
        raise RuntimeError(f"{EXAMPLE} no longer has the upstream servers, one listen line "
                           "and one location")
    return text


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                       else None)
    if found is None:
        raise RuntimeError("nginx not found: install Debian's nginx-light (scripts/bootstrap does)")
    return found


@contextlib.contextmanager
def running_nginx(upstream_ports: Sequence[int], workdir: Path, *,
                  extra: str = "") -> Iterator[str]:
    """nginx on a free port in front of ``upstream_ports``; yields its MCP endpoint URL.

    ``extra`` holds directives for the example's ``location`` block (for instance an
    ``add_header`` that names the replica which answered).
    """
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    port = free_port()
    site = example_site(upstream_ports, port, extra)
    (workdir / "nginx.conf").write_text(CONFIG.format(site=site))
    with (workdir / "logs" / "stdout.log").open("ab") as log:
        process = subprocess.Popen(
            [nginx_binary(), "-p", str(workdir), "-c", "nginx.conf", "-g", "daemon off;"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not _answers(port, "/healthz"):
            if process.poll() is not None or time.monotonic() > deadline:
                errors = (workdir / "logs" / "error.log")
                raise ProcessStartError(
                    f"nginx did not start: {errors.read_text() if errors.exists() else ''}")
            time.sleep(0.05)
        yield f"http://{HOST}:{port}/mcp"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
