"""What one session costs a replica and the store: the figures docs/operations.md sizes with.

One ``vmcp serve`` on a real redis-server in front of two bench backends (all on
loopback). Measured before and after each step:

1. N sessions opened (initialize + initialized) and left idle: Redis ``used_memory``
   and keys, the gateway's RSS and open file descriptors (``/proc/<pid>/fd``);
2. a listening GET stream opened on S of them (what clients that wait for server
   notifications hold): the gateway then holds one client socket and one backend
   stream per backend for each, so its descriptors grow by about 1 + backends;
3. everything closed (streams, then DELETE): what is left.

Also the size of a replica's heartbeat record in Redis (the operator view's).

    .venv/bin/python -m bench.sizing                  # 1000 sessions, 200 streams
    .venv/bin/python -m bench.sizing --sessions 300 --streams 100 --output bench/SIZING.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx2
import redis

from bench.load import McpHttpSession, process_rss_bytes
from bench.procs import Processes, free_ports, wait_http
from bench.run import START_TIMEOUT, _close_sessions, _open_sessions, start_backend, start_vmcp
from tests.support.redis_server import RedisServer

BACKENDS = 2
CONCURRENCY = 16
SETTLE_SECONDS = 1.0
"""How long a figure must stay unchanged to count as settled (bounded by SETTLE_LIMIT)."""
SETTLE_LIMIT = 20.0
KEY_PREFIX = "vmcp-sizing:"


def open_fds(pid: int) -> tuple[int, int]:
    """(all descriptors, sockets) the process holds now."""
    entries = os.listdir(f"/proc/{pid}/fd")
    sockets = 0
    for entry in entries:
        with contextlib.suppress(OSError):
            sockets += os.readlink(f"/proc/{pid}/fd/{entry}").startswith("socket:")
    return len(entries), sockets


def settled(read: Callable[[], Any]) -> Any:
    """``read()`` once it returned the same value for ``SETTLE_SECONDS`` (streams and
    backend connections open in the background), or after ``SETTLE_LIMIT``."""
    deadline = time.monotonic() + SETTLE_LIMIT
    value, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        current = read()
        if current != value:
            value, since = current, time.monotonic()
        elif time.monotonic() - since >= SETTLE_SECONDS:
            break
    return value


class Probe:
    """The figures read at each step."""

    def __init__(self, client: redis.Redis, gateway: int, backends: Sequence[int]) -> None:
        self._client = client
        self._gateway = gateway
        self._backends = backends

    def session_record_bytes(self) -> float:
        return session_record_bytes(self._client)

    def read(self) -> dict[str, Any]:
        fds, sockets = settled(lambda: open_fds(self._gateway))
        memory = self._client.info("memory")
        return {
            "redis_used_memory": int(memory["used_memory"]),
            "redis_keys": int(self._client.dbsize()),
            "gateway_rss": process_rss_bytes(self._gateway),
            "gateway_fds": fds,
            "gateway_sockets": sockets,
            "backend_fds": sum(open_fds(pid)[0] for pid in self._backends),
        }


def per_item(before: dict[str, Any], after: dict[str, Any], count: int) -> dict[str, float]:
    return {key: (after[key] - before[key]) / count for key in before}


async def hold_streams(sessions: Sequence[McpHttpSession], client: httpx2.AsyncClient,
                       stack: contextlib.AsyncExitStack) -> None:
    """Open a GET stream on each session and keep it open on ``stack``."""
    for session in sessions:
        assert session.session_id is not None
        response = await stack.enter_async_context(client.stream("GET", session.url, headers={
            "accept": "text/event-stream", "mcp-session-id": session.session_id,
            "mcp-protocol-version": session.protocol_version}))
        if response.status_code != 200:
            raise RuntimeError(f"GET stream refused: HTTP {response.status_code}")


async def measure(url: str, probe: Probe, sessions: int, streams: int) -> dict[str, Any]:
    limits = httpx2.Limits(max_connections=CONCURRENCY * 2 + streams + 8)
    async with httpx2.AsyncClient(timeout=30, limits=limits) as client:
        with anyio.fail_after(300):
            warm, _, _ = await _open_sessions(url, CONCURRENCY, CONCURRENCY, client)
            await _close_sessions(warm, CONCURRENCY)
            start = await anyio.to_thread.run_sync(probe.read)
            opened, _, seconds = await _open_sessions(url, sessions, CONCURRENCY, client)
            idle = await anyio.to_thread.run_sync(probe.read)
            record = await anyio.to_thread.run_sync(probe.session_record_bytes)
            async with contextlib.AsyncExitStack() as stack:
                await hold_streams(opened[:streams], client, stack)
                streaming = await anyio.to_thread.run_sync(probe.read)
            await _close_sessions(opened, CONCURRENCY)
            closed = await anyio.to_thread.run_sync(probe.read)
    return {"sessions": sessions, "streams": streams, "open_seconds": seconds,
            "session_record_bytes": record,
            "start": start, "idle": idle, "streaming": streaming, "closed": closed,
            "per_idle_session": per_item(start, idle, sessions),
            "per_stream": per_item(idle, streaming, streams) if streams else {}}


def session_record_bytes(client: redis.Redis, sample: int = 50) -> float:
    """Mean ``MEMORY USAGE`` of stored session records (key, value and TTL included)."""
    sizes = []
    for key in client.scan_iter(match=KEY_PREFIX + "?" * 32, count=1000):
        sizes.append(int(client.memory_usage(key) or 0))
        if len(sizes) == sample:
            break
    return sum(sizes) / len(sizes) if sizes else 0.0


def heartbeat_record_bytes(client: redis.Redis) -> int:
    keys = list(client.scan_iter(match=KEY_PREFIX + "{replicas}:beat:*"))
    return max((int(client.memory_usage(k) or 0) for k in keys), default=0)


def report(figures: dict[str, Any]) -> str:
    idle, stream = figures["per_idle_session"], figures["per_stream"]
    rows = [
        ("Redis memory per stored session (`used_memory`)",
         f"{idle['redis_used_memory']:.0f} bytes"),
        ("Redis `MEMORY USAGE` of one session record (mean of 50)",
         f"{figures['session_record_bytes']:.0f} bytes"),
        ("Redis keys per session", f"{idle['redis_keys']:.2f}"),
        ("Gateway RSS per idle live session", f"{idle['gateway_rss'] / 1024:.1f} KiB"),
        ("Gateway file descriptors per idle session", f"{idle['gateway_fds']:.3f}"),
        ("Gateway file descriptors per session with a GET stream open",
         f"{stream.get('gateway_fds', 0):.2f} ({stream.get('gateway_sockets', 0):.2f} sockets)"),
        (f"Gateway RSS per GET stream open on {figures['streams']}",
         f"{stream.get('gateway_rss', 0) / 1024:.1f} KiB"),
        (f"Backend file descriptors per GET stream (all {BACKENDS} backends)",
         f"{stream.get('backend_fds', 0):.2f}"),
        ("Heartbeat record per replica in Redis (`MEMORY USAGE`)",
         f"{figures['heartbeat_record_bytes']} bytes"),
    ]
    steps = "\n".join(
        f"| {name} | {f['redis_used_memory'] / 2**20:.2f} | {f['redis_keys']} | "
        f"{f['gateway_rss'] / 2**20:.1f} | {f['gateway_fds']} | {f['gateway_sockets']} | "
        f"{f['backend_fds']} |"
        for name, f in (("start (after warm-up)", figures["start"]),
                        (f"{figures['sessions']} idle sessions", figures["idle"]),
                        (f"GET streams open on {figures['streams']}", figures["streaming"]),
                        ("all closed", figures["closed"])))
    return "\n".join([
        "# What a session costs: sizing figures",
        "",
        f"Produced by `python -m bench.sizing` ({figures['date']}). Generated file: re-run "
        "the command rather than editing it.",
        "",
        f"One `vmcp serve` (Redis store, {BACKENDS} bench backends, `cache_capacity` above "
        f"the session count) on loopback; {figures['sessions']} sessions opened by "
        f"{CONCURRENCY} clients (initialize + initialized) in {figures['open_seconds']:.1f} s "
        f"and left idle, then a GET stream held open on {figures['streams']} of them, then "
        "everything closed. Descriptors are counted in `/proc/<pid>/fd` once steady.",
        "",
        "| figure | measured |",
        "|---|--:|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
        "| step | Redis used MiB | Redis keys | gateway RSS MiB | gateway fds | gateway "
        "sockets | backend fds |",
        "|---|--:|--:|--:|--:|--:|--:|",
        steps,
        "",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--output", type=Path, help="write the Markdown report here")
    args = parser.parse_args(argv)
    if not 0 <= args.streams <= args.sessions:
        parser.error("--streams must be between 0 and --sessions")
    workdir = Path(tempfile.mkdtemp(prefix="vmcp-sizing-"))
    print(f"work directory: {workdir}", flush=True)
    redis_server = RedisServer(workdir / "redis")
    redis_server.start()
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=10)
    try:
        with Processes(workdir) as procs:
            ports = free_ports(BACKENDS + 1)
            backends = [start_backend(procs, f"backend-{i}", port)
                        for i, port in enumerate(ports[:BACKENDS])]
            for proc, port in zip(backends, ports, strict=False):
                wait_http(proc, port, "/mcp", timeout=START_TIMEOUT)
            gateway = start_vmcp(
                procs, workdir, "vmcp-sizing", ports[-1], redis_server.url,
                [(f"b{i}", f"http://127.0.0.1:{p}/mcp") for i, p in
                 enumerate(ports[:BACKENDS])],
                cache_capacity=args.sessions * 2, key_prefix=KEY_PREFIX)
            wait_http(gateway, ports[-1], "/readyz", timeout=START_TIMEOUT, ok=(200,))
            probe = Probe(client, gateway.pid, [b.pid for b in backends])
            figures = anyio.run(measure, f"http://127.0.0.1:{ports[-1]}/mcp", probe,
                                args.sessions, args.streams)
            figures["heartbeat_record_bytes"] = heartbeat_record_bytes(client)
    finally:
        client.close()
        redis_server.stop()
    figures["date"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = report(figures)
    print(json.dumps(figures, indent=1), file=sys.stderr)
    print(text)
    if args.output is not None:
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
