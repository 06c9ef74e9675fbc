"""What a session's ``initialize`` costs with 1, 5 and 10 backends, and how many upstream
sessions each client session opens.

One ``vmcp serve`` on a real Redis in front of N bench backends (N = 1, 5, 10). After one
warm-up session (the replica learns what the backends offer), ``--sessions`` client
sessions one after another each initialize, call one tool (``echo`` of the first
backend) and end (DELETE). Reported per N: ``initialize`` p50 and p90, and the upstream
sessions the gateway opened per client session (its ``/status`` ledger). Run for the
work tree and for ``--before`` (a committed revision, default ``main``) alike, so the
same machine gives both columns.

    .venv/bin/python -m bench.lazy [--sessions 40] [--before main] [--output bench/LAZY.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx2

import bench.run as runner
from bench.load import McpHttpSession, percentile
from bench.procs import Processes, free_ports, wait_http
from tests.support.redis_server import RedisServer

BACKEND_COUNTS = (1, 5, 10)
START_TIMEOUT = 30.0


async def _opened(client: httpx2.AsyncClient, base: str) -> int:
    response = await client.get(f"{base}/status")
    response.raise_for_status()
    upstream = response.json()["upstream_sessions"]
    return sum(int(counts["opened"]) for counts in upstream.values())


async def _measure(base: str, tool: str, sessions: int) -> dict[str, Any]:
    url = f"{base}/mcp"
    async with httpx2.AsyncClient(timeout=30) as client:
        with anyio.fail_after(300):
            warm = McpHttpSession(client, url)
            await warm.initialize()
            await warm.call_tool(tool, {"text": "warm"})
            await warm.delete()
            before = await _opened(client, base)
            latencies = []
            for i in range(sessions):
                session = McpHttpSession(client, url)
                started = time.perf_counter()
                await session.initialize()
                latencies.append(time.perf_counter() - started)
                await session.call_tool(tool, {"text": str(i)})
                await session.delete()
            opened = await _opened(client, base) - before
    latencies.sort()
    return {"initialize_p50_ms": 1000 * percentile(latencies, 50),
            "initialize_p90_ms": 1000 * percentile(latencies, 90),
            "upstream_per_session": opened / sessions}


def measure(procs: Processes, workdir: Path, redis: RedisServer, backends: list[str],
            label: str, sessions: int) -> dict[int, dict[str, Any]]:
    results: dict[int, dict[str, Any]] = {}
    for count in BACKEND_COUNTS:
        port = free_ports(1)[0]
        named = [(f"b{i + 1}", url) for i, url in enumerate(backends[:count])]
        proc = runner.start_vmcp(procs, workdir, f"vmcp-{label}-{count}", port, redis.url,
                                 named, key_prefix=f"lazy:{uuid.uuid4().hex[:8]}:")
        try:
            wait_http(proc, port, "/healthz", timeout=START_TIMEOUT, ok=(200,))
            tool = "echo" if count == 1 else "b1_echo"
            results[count] = anyio.run(_measure, f"http://127.0.0.1:{port}", tool, sessions)
            print(f"  {label}, {count} backends: {results[count]}", flush=True)
        finally:
            procs.stop(proc)
    return results


def report(sessions: int, before: str, columns: dict[str, dict[int, dict[str, Any]]]) -> str:
    lines = [
        "# initialize with 1, 5 and 10 backends (bench/lazy.py)", "",
        f"One `vmcp serve` on Redis, {sessions} client sessions in a row, each: initialize, "
        "one `tools/call` on the first backend, DELETE (after one warm-up session). "
        f"`{before}` opened every backend's upstream session at initialize; the work tree "
        "opens a backend's upstream session at its first use.", "",
        "| backends | " + " | ".join(f"{name}: init p50 ms | p90 ms | upstream/session"
                                     for name in columns) + " |",
        "|---|" + "---|---|---|" * len(columns),
    ]
    for count in BACKEND_COUNTS:
        cells = []
        for figures in columns.values():
            row = figures[count]
            cells += [f"{row['initialize_p50_ms']:.1f}", f"{row['initialize_p90_ms']:.1f}",
                      f"{row['upstream_per_session']:.2f}"]
        lines.append(f"| {count} | " + " | ".join(cells) + " |")
    lines.append("")
    for name, figures in columns.items():
        ratio = figures[10]["initialize_p50_ms"] / figures[1]["initialize_p50_ms"]
        lines.append(f"- {name}: p50 with 10 backends = {ratio:.2f}x p50 with 1 "
                     "(target <= 1.3x)")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=40)
    parser.add_argument("--before", default="main",
                        help="a committed revision to compare with ('' for none)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="vmcp-lazy-"))
    print(f"work directory {workdir}", flush=True)
    columns: dict[str, dict[int, dict[str, Any]]] = {}
    redis = RedisServer(workdir / "redis")
    redis.start()
    try:
        with Processes(workdir) as procs:
            ports = free_ports(max(BACKEND_COUNTS))
            started = [runner.start_backend(procs, f"backend-{i + 1}", port)
                       for i, port in enumerate(ports)]
            for proc, port in zip(started, ports, strict=True):
                wait_http(proc, port, "/mcp", timeout=START_TIMEOUT)
            urls = [f"http://127.0.0.1:{port}/mcp" for port in ports]
            if args.before:
                runner.VMCP_SOURCE, commit = runner.export_revision(args.before, workdir)
                columns[f"{args.before} ({commit})"] = measure(
                    procs, workdir, redis, urls, "before", args.sessions)
                runner.VMCP_SOURCE = None
            columns["work tree"] = measure(procs, workdir, redis, urls, "after",
                                           args.sessions)
    finally:
        redis.stop()
    text = report(args.sessions, args.before or "-", columns)
    print(text)
    if args.output is not None:
        args.output.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
