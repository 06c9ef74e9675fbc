"""``python -m bench.attacks``: the full-size resource attacks on one gateway, with figures.

One ``vmcp serve`` (memory store) in front of two benchmark backends, ``alpha`` and
``beta`` (``--hang``: beta's ``hang()`` never answers). While each attack runs, a
well-behaved probe calls ``alpha_echo`` every 0.25 s; the runner reports the probe's
answers and latencies, the gateway's open descriptors (``/proc/<pid>/fd``) and what the
attackers were answered. Everything is on loopback, bounded in count and time.

``--src DIR`` runs the gateway from another checkout's ``src`` (for "before" figures of
an older version); the configuration sets no limit, so every limit is at its default.
The tests in ``tests/`` run the same attacks scaled down; this is the full size.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import yaml

from bench.procs import Processes, free_ports, wait_http

PROTOCOL = "2025-11-25"
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
PROBE_INTERVAL = 0.25
Figures = dict[str, Any]
IDS = itertools.count(100)


class Gateway:
    def __init__(self, pid: int, port: int) -> None:
        self.pid = pid
        self.url = f"http://127.0.0.1:{port}/mcp"
        self.port = port

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


async def open_session(http: httpx2.AsyncClient, url: str) -> dict[str, str]:
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": PROTOCOL, "capabilities": {},
        "clientInfo": {"name": "attacks", "version": "1"}}}
    response = await http.post(url, json=body, headers=HEADERS)
    headers = {**HEADERS, "Mcp-Session-Id": response.headers["mcp-session-id"],
               "MCP-Protocol-Version": PROTOCOL}
    await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                    headers=headers)
    return headers


def reply_of(response: httpx2.Response) -> dict[str, Any]:
    if response.headers.get("content-type", "").startswith("application/json"):
        return dict(response.json())
    for line in response.text.splitlines():
        if line.startswith("data: ") and '"id"' in line:
            return dict(json.loads(line[6:]))
    return {"error": {"message": f"no reply (HTTP {response.status_code})"}}


async def call(http: httpx2.AsyncClient, url: str, headers: dict[str, str], tool: str,
               arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    response = await http.post(url, headers=headers, json={
        "jsonrpc": "2.0", "id": next(IDS), "method": "tools/call",
        "params": {"name": tool, "arguments": arguments or {}}})
    return reply_of(response)


class Probe:
    """Calls alpha_echo every PROBE_INTERVAL; latencies of the answers, count of failures."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.seconds: list[float] = []
        self.failures: list[str] = []
        self.most_fds = 0

    async def run(self, http: httpx2.AsyncClient, headers: dict[str, str]) -> None:
        while True:
            started = time.perf_counter()
            try:
                with anyio.fail_after(30):
                    reply = await call(http, self.gateway.url, headers, "alpha_echo",
                                       {"text": "probe"})
                if "result" in reply:
                    self.seconds.append(time.perf_counter() - started)
                else:
                    self.failures.append(str(reply["error"]["message"])[:120])
            except (TimeoutError, httpx2.HTTPError) as exc:
                self.failures.append(type(exc).__name__)
            self.most_fds = max(self.most_fds, self.gateway.fds())
            await anyio.sleep(max(0.0, PROBE_INTERVAL - (time.perf_counter() - started)))

    def figures(self) -> Figures:
        ordered = sorted(self.seconds)
        p99 = ordered[math.ceil(0.99 * len(ordered)) - 1] if ordered else None
        return {"probe_answers": len(ordered), "probe_failures": Counter(self.failures),
                "probe_p50_ms": round(1000 * statistics.median(ordered), 1) if ordered else None,
                "probe_p99_ms": round(1000 * p99, 1) if p99 is not None else None,
                "probe_max_ms": round(1000 * ordered[-1], 1) if ordered else None,
                "gateway_fds_max": self.most_fds}


async def under_probe(gateway: Gateway, attack: Callable[[Probe], Awaitable[Figures]]
                      ) -> Figures:
    limits = httpx2.Limits(max_connections=4)
    async with httpx2.AsyncClient(timeout=60, limits=limits) as http:
        headers = await open_session(http, gateway.url)
        probe = Probe(gateway)
        async with anyio.create_task_group() as group:
            group.start_soon(probe.run, http, headers)
            figures = await attack(probe)
            group.cancel_scope.cancel()
    return {**probe.figures(), **figures}


async def stream_flood(gateway: Gateway, streams: int, seconds: float) -> Figures:
    async def attack(probe: Probe) -> Figures:
        limits = httpx2.Limits(max_connections=streams * 2 + 10)
        statuses: Counter[int] = Counter()
        health: Counter[str] = Counter()
        async with httpx2.AsyncClient(timeout=30, limits=limits) as http:
            sessions = [await open_session(http, gateway.url) for _ in range(streams)]
            opened: list[httpx2.Response] = []
            with anyio.move_on_after(seconds):
                for headers in sessions:
                    request = http.build_request(
                        "GET", gateway.url, headers={**headers, "Accept": "text/event-stream"})
                    response = await http.send(request, stream=True)
                    statuses[response.status_code] += 1
                    opened.append(response)
                joined = await open_session(http, gateway.url)
                listed = await http.post(gateway.url, headers=joined, json={
                    "jsonrpc": "2.0", "id": 3, "method": "tools/list"})
                tools = len(reply_of(listed).get("result", {}).get("tools", []))
                await anyio.sleep(seconds)
            status = (await http.get(f"http://127.0.0.1:{gateway.port}/status")).json()
            health.update(b["name"] + ":" + b["health"] for b in status["backends"])
            for response in opened:
                await response.aclose()
        return {"get_statuses": dict(statuses), "tools_of_session_opened_during": tools,
                "health_after": dict(health)}
    return await under_probe(gateway, attack)


async def hanging_flood(gateway: Gateway, calls: int, seconds: float) -> Figures:
    async def attack(probe: Probe) -> Figures:
        answers: Counter[str] = Counter()
        slowest = [0.0]
        limits = httpx2.Limits(max_connections=calls + 10)
        async with httpx2.AsyncClient(timeout=seconds + 30, limits=limits) as http:
            headers = await open_session(http, gateway.url)

            async def one() -> None:
                started = time.perf_counter()
                try:
                    reply = await call(http, gateway.url, headers, "beta_hang")
                    message = str(reply.get("error", {}).get("message", "answered"))
                except httpx2.HTTPError as exc:
                    message = type(exc).__name__
                slowest[0] = max(slowest[0], time.perf_counter() - started)
                answers[message.split(" within")[0].split(" in use")[0]] += 1

            with anyio.move_on_after(seconds):
                async with anyio.create_task_group() as group:
                    for _ in range(calls):
                        group.start_soon(one)
        return {"flood_answers": dict(answers), "flood_answered": sum(answers.values()),
                "flood_slowest_s": round(slowest[0], 2)}
    return await under_probe(gateway, attack)


async def dribble(gateway: Gateway, heads: int, bodies: int, seconds: float) -> Figures:
    async def attack(probe: Probe) -> Figures:
        outcomes: Counter[str] = Counter()

        async def one(data: bytes) -> None:
            try:
                stream = await anyio.connect_tcp("127.0.0.1", gateway.port)
            except OSError as exc:
                outcomes[f"connect {type(exc).__name__}"] += 1
                return
            async with stream:
                answer = b""

                async def read() -> None:
                    nonlocal answer
                    try:
                        while True:
                            answer += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        pass

                async with anyio.create_task_group() as group:
                    group.start_soon(read)
                    with anyio.move_on_after(seconds):
                        for byte in data:
                            try:
                                await stream.send(bytes([byte]))
                            except (anyio.BrokenResourceError, OSError):
                                break
                            await anyio.sleep(0.5)
                    group.cancel_scope.cancel()
                status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
                outcomes[status or "open until the end"] += 1

        head = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        async with anyio.create_task_group() as group:
            for _ in range(heads):
                group.start_soon(one, head + b"X-Slow: " + b"a" * 1000)
            for _ in range(bodies):
                group.start_soon(one, head + b"Content-Length: 1000\r\n\r\n" + b"{" * 1000)
        return {"dribblers": dict(outcomes)}
    return await under_probe(gateway, attack)


async def huge_header(gateway: Gateway, megabytes: int) -> Figures:
    async def attack(probe: Probe) -> Figures:
        started = time.perf_counter()
        sent = 0
        answer = b""
        async with await anyio.connect_tcp("127.0.0.1", gateway.port) as stream:
            await stream.send(b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
            chunk = b"b" * (1024 * 1024)
            try:
                for _ in range(megabytes):
                    await stream.send(chunk)
                    sent += 1
                await stream.send(b"\r\n\r\n")
                with anyio.move_on_after(30):
                    answer = await stream.receive()
            except (anyio.BrokenResourceError, anyio.EndOfStream, OSError):
                pass
        return {"huge_header_mb_sent": sent,
                "huge_header_answer": answer.split(b"\r\n", 1)[0].decode(errors="replace"),
                "huge_header_seconds": round(time.perf_counter() - started, 2)}
    return await under_probe(gateway, attack)


async def abandoned(gateway: Gateway, calls: int, wait: float) -> Figures:
    async def attack(probe: Probe) -> Figures:
        async with httpx2.AsyncClient(timeout=60) as http:
            headers = await open_session(http, gateway.url)
            with anyio.move_on_after(2):  # the clients hang up after 2 s
                async with anyio.create_task_group() as group:
                    for _ in range(calls):
                        group.start_soon(call, http, gateway.url, headers, "beta_hang")
            started = time.perf_counter()
            running = calls
            while time.perf_counter() - started < wait:
                reply = await call(http, gateway.url, headers, "beta_hanging")
                running = int(reply["result"]["content"][0]["text"])
                if running == 0:
                    break
                await anyio.sleep(0.25)
        return {"abandoned_calls_still_running": running,
                "seconds_until_cancelled": round(time.perf_counter() - started, 2)}
    return await under_probe(gateway, attack)


def gateway_config(ports: Sequence[int]) -> dict[str, Any]:
    """Every limit at its default: the figures are what a deployment gets as is."""
    backends: list[dict[str, Any]] = [
        {"name": name, "url": f"http://127.0.0.1:{port}/mcp", "call_timeout_seconds": 15}
        for name, port in zip(("alpha", "beta"), ports[1:], strict=True)]
    config: dict[str, Any] = {"server": {"host": "127.0.0.1", "port": ports[0]},
                              "backends": backends,
                              "health": {"interval_seconds": 2, "timeout_seconds": 2},
                              "limits": {"call_timeout_seconds": 15}}
    return config


async def run_all(gateway: Gateway, scale: float) -> dict[str, Figures]:
    def n(count: int) -> int:
        return max(1, int(count * scale))

    results: dict[str, Figures] = {}
    attacks: list[tuple[str, Callable[[], Awaitable[Figures]]]] = [
        ("get_stream_flood", lambda: stream_flood(gateway, n(500), 20)),
        ("hanging_call_flood", lambda: hanging_flood(gateway, n(1000), 20)),
        ("header_and_body_dribble", lambda: dribble(gateway, n(500), n(100), 35)),
        ("huge_header", lambda: huge_header(gateway, 96)),
        ("abandoned_calls", lambda: abandoned(gateway, n(50), 20)),
    ]
    for name, attack in attacks:
        print(f"-- {name}", file=sys.stderr, flush=True)
        before = gateway.fds()
        results[name] = {"gateway_fds_before": before, **await attack()}
        print(json.dumps(results[name], default=str), file=sys.stderr, flush=True)
        await anyio.sleep(3)  # let the gateway settle before the next attack
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attacks", description=__doc__)
    parser.add_argument("--src", type=Path, default=None,
                        help="run the gateway from this checkout's src/ (default: this one)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every count")
    parser.add_argument("--output", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    workdir = Path(tempfile.mkdtemp(prefix="vmcp-attacks-"))
    ports = free_ports(3)
    env = dict(os.environ)
    if args.src is not None:
        env["PYTHONPATH"] = str(args.src.resolve() / "src")
    config = workdir / "gateway.yaml"
    config.write_text(yaml.safe_dump(gateway_config(ports)))
    with Processes(workdir) as procs:
        for name, port in zip(("alpha", "beta"), ports[1:], strict=True):
            backend = procs.start(name, [sys.executable, "-m", "bench.backend", "--port",
                                         str(port), "--hang"])
            wait_http(backend, port, "/mcp", timeout=30)
        # The gateway keeps the runner's own soft limit (1,024) as vmcp serve would get it.
        served = procs.start("gateway", [
            sys.executable, "-c", "import resource, sys; "
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard})); "
            "from vmcp.cli import main; sys.argv[0] = 'vmcp'; main()",
            "serve", "--config", str(config)], env=env)
        wait_http(served, ports[0], "/readyz", timeout=60, ok=[200])
        results = anyio.run(run_all, Gateway(served.pid, ports[0]), args.scale)
    text = json.dumps(results, indent=2, default=str)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
