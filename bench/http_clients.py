"""CPU per backend call of candidate HTTP clients: what vmcp's backend call path could use.

Starts the bench echo backend (``python -m bench.backend``), opens one MCP session on it,
then for each client sends ``tools/call echo`` POSTs: N one after another, then M tasks
at once, each reading the whole ``application/json`` answer. The figure is this process's
CPU time (``time.process_time``, user + system) per request, under uvloop as ``vmcp
serve`` runs; the clients run interleaved over several rounds and the best round counts.

    python -m bench.http_clients [--sequential 400] [--concurrent 8x50] [--rounds 3]

Candidates: httpx2 as vmcp uses it (``backend_http_client`` and ``wire.posted``), httpx2's
client over vmcp's lean transport (``vmcp.backend.http11``), that transport's connection
used directly (no httpx2 at all: the floor of a hand-written client), and aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
import uvloop

from vmcp.backend.http11 import LeanHttpTransport, _Connection
from vmcp.backend.http_client import BulkheadTransport
from vmcp.backend.wire import posted, read_body

Call = Callable[[bytes], Awaitable[bytes]]
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream",
           "mcp-protocol-version": "2025-06-18"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_up(url: str) -> None:
    async with httpx2.AsyncClient() as client:
        for _ in range(200):
            try:
                await client.get(url)
                return
            except httpx2.TransportError:
                await asyncio.sleep(0.05)
    raise RuntimeError("backend did not start")


async def _session(url: str) -> dict[str, str]:
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"}}}
    async with httpx2.AsyncClient() as client:
        response = await client.post(url, json=init, headers=HEADERS)
        headers = {**HEADERS, "mcp-session-id": response.headers["mcp-session-id"]}
        await client.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                          headers=headers)
    return headers


def _httpx2(url: str, headers: dict[str, str], http: httpx2.AsyncClient) -> Call:
    timeout = httpx2.Timeout(None, connect=10.0)

    async def call(body: bytes) -> bytes:
        async with posted("bench", http, url, body, headers, timeout) as response:
            return await read_body("bench", response)
    return call


def _transport_only(url: str, headers: dict[str, str], transport: LeanHttpTransport) -> Call:
    """httpx2's request and response objects over the lean transport, without the client."""
    parsed = httpx2.URL(url)

    async def call(body: bytes) -> bytes:
        request = httpx2.Request("POST", parsed, headers=headers, content=body)
        response = await transport.handle_async_request(request)
        try:
            return await read_body("bench", response)
        finally:
            await response.aclose()
    return call


def _direct(url: str, headers: dict[str, str]) -> tuple[Call, Callable[[], None]]:
    """The lean transport's connections used directly: one request's bytes, httptools."""
    parsed = httpx2.URL(url)
    host, port = parsed.host, parsed.port or 80
    idle: list[_Connection] = []
    head_lines = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers.items())
    prefix = b"POST %s HTTP/1.1\r\nhost: %s:%d\r\n%s" % (parsed.raw_path, host.encode(), port,
                                                          head_lines)

    async def call(body: bytes) -> bytes:
        if idle:
            conn = idle.pop()
        else:
            _, conn = await asyncio.get_running_loop().create_connection(_Connection, host, port)
        await conn.start(b"%scontent-length: %d\r\n\r\n%s" % (prefix, len(body), body))
        data = b"".join([chunk async for chunk in conn.body()])
        if conn.reusable():
            idle.append(conn)
        else:
            conn.close()
        return data

    def close() -> None:
        for conn in idle:
            conn.close()
    return call, close


async def _measure(call: Call, sequential: int, tasks: int, per_task: int) -> tuple[float, float]:
    counter = iter(range(1, 10**9))

    def body() -> bytes:
        return json.dumps({"jsonrpc": "2.0", "id": next(counter), "method": "tools/call",
                           "params": {"name": "echo", "arguments": {"text": "hello"}}}).encode()

    async def run(count: int) -> None:
        for _ in range(count):
            answer = await call(body())
            assert b'"hello"' in answer, answer[:200]

    async with asyncio.TaskGroup() as group:  # warm up: connections open, caches filled
        for _ in range(tasks):
            group.create_task(run(5))
    start = time.process_time()
    await run(sequential)
    seq = (time.process_time() - start) / sequential * 1000
    start = time.process_time()
    async with asyncio.TaskGroup() as group:
        for _ in range(tasks):
            group.create_task(run(per_task))
    conc = (time.process_time() - start) / (tasks * per_task) * 1000
    return seq, conc


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    port = _free_port()
    backend = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.backend",
                                                   "--port", str(port))
    url = f"http://127.0.0.1:{port}/mcp"
    results: dict[str, list[tuple[float, float]]] = {}
    try:
        await _wait_up(url)
        headers = await _session(url)
        tasks, per_task = (int(part) for part in args.concurrent.split("x"))
        for _ in range(args.rounds):
            for name, lean in (("httpx2 + httpcore2 (vmcp before)", False),
                               ("httpx2 client + lean transport (vmcp now)", True)):
                http = httpx2.AsyncClient(transport=BulkheadTransport(lean_calls=lean),
                                          timeout=None)
                results.setdefault(name, []).append(
                    await _measure(_httpx2(url, headers, http), args.sequential, tasks, per_task))
                await http.aclose()
            transport = LeanHttpTransport(64)
            results.setdefault("lean transport, httpx2 Request/Response, no client", []).append(
                await _measure(_transport_only(url, headers, transport), args.sequential, tasks,
                               per_task))
            await transport.aclose()
            direct, close = _direct(url, headers)
            results.setdefault("lean connection, no httpx2", []).append(
                await _measure(direct, args.sequential, tasks, per_task))
            close()
            async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=64)) as session:
                async def aio(body: bytes) -> bytes:
                    async with session.post(url, data=body, headers=headers) as response:
                        return await response.read()
                results.setdefault(f"aiohttp {aiohttp.__version__}", []).append(
                    await _measure(aio, args.sequential, tasks, per_task))
    finally:
        backend.terminate()
        await backend.wait()
    return {name: {"sequential": min(r[0] for r in rounds), "concurrent": min(r[1] for r in rounds),
                   "rounds": rounds, "median_seq": statistics.median(r[0] for r in rounds)}
            for name, rounds in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sequential", type=int, default=400)
    parser.add_argument("--concurrent", default="8x50", help="TASKSxCALLS")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = uvloop.run(_main(args))
    base = results["httpx2 + httpcore2 (vmcp before)"]
    print("| client | sequential ms CPU/call | concurrent ms CPU/call | vs httpx2 (seq / conc) |")
    print("|---|--:|--:|--:|")
    for name, figures in results.items():
        print(f"| {name} | {figures['sequential']:.3f} | {figures['concurrent']:.3f} | "
              f"{figures['sequential'] / base['sequential']:.2f} / "
              f"{figures['concurrent'] / base['concurrent']:.2f} |")
    print("rounds:", json.dumps({k: v["rounds"] for k, v in results.items()}))


if __name__ == "__main__":
    main()
