"""A small load generator for MCP Streamable-HTTP endpoints: raw JSON-RPC over httpx2.

Not the SDK client: every request here is one hand-built POST, so the generator's own
CPU per call stays small and comparable across the endpoints under test.

One run = C concurrent sessions against one URL. Each session:

1. ``initialize`` (+ ``notifications/initialized``), then a few warm-up calls;
2. waits until every session got that far (the calls phase starts for all at once);
3. makes up to N ``tools/call`` requests back to back, until N or the time limit;
4. waits until every session finished its calls (the calls phase ends), then ``DELETE``.

Throughput, latency percentiles and the CPU used by the watched processes are taken over
the calls phase only, so session set-up and tear-down are not mixed into per-call figures
(``initialize`` latencies are reported on their own). CPU comes from
``/proc/<pid>/stat`` (utime + stime), summed per label over that label's processes.

Standalone use::

    python -m bench.load --url http://127.0.0.1:4483/mcp --sessions 8 --calls 200 \\
        --tool echo --watch gateway=1234
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
import httpx2

PROTOCOL_VERSION = "2025-11-25"
MODERN_VERSION = "2026-07-28"
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
    "io.modelcontextprotocol/clientInfo": {"name": "vmcp-bench", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
ACCEPT = "application/json, text/event-stream"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SETUP_TIMEOUT = 60.0
"""Bound on the set-up phase (initialize + warm-up of every session), seconds."""
TEARDOWN_TIMEOUT = 30.0
REQUEST_TIMEOUT = 30.0


class LoadError(Exception):
    """A run could not be carried out (no session could be initialized, for example)."""


# --------------------------------------------------------------------------- CPU accounting


def process_cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of one process in seconds, from ``/proc/<pid>/stat`` (0 if gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except OSError:
        return 0.0, 0.0
    # The command name (field 2) is in parentheses and may contain spaces: split after it.
    fields = raw[raw.rindex(b")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of the whole line
    return utime / CLK_TCK, stime / CLK_TCK


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from ``/proc/<pid>/stat`` (0.0 if it is gone)."""
    return sum(process_cpu_times(pid))


def process_rss_bytes(pid: int) -> int:
    """Resident set size of one process, from ``/proc/<pid>/status``."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise LoadError(f"no VmRSS for pid {pid}")


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy (not idle, not waiting for I/O) since boot."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


def cpu_snapshot(watch: Mapping[str, Sequence[int]]) -> dict[str, tuple[float, float]]:
    """(user, system) CPU seconds so far per label, of this process, and machine-wide."""
    snapshot: dict[str, tuple[float, float]] = {"machine": (machine_busy_seconds(), 0.0)}
    for label, pids in watch.items():
        times = [process_cpu_times(pid) for pid in pids]
        snapshot[label] = (sum(t[0] for t in times), sum(t[1] for t in times))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    snapshot["load generator"] = (usage.ru_utime, usage.ru_stime)
    return snapshot


# --------------------------------------------------------------------------- results


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (nan when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class LoadResult:
    url: str
    tool: str
    sessions: int
    sessions_ok: int
    calls: int
    errors: int
    seconds: float
    calls_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    initialize_p50_ms: float
    initialize_p99_ms: float
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    cpu_system_seconds: dict[str, float] = field(default_factory=dict)
    machine_busy_seconds: float = math.nan
    """All CPUs' busy time during the calls phase, whoever used it."""
    first_errors: list[str] = field(default_factory=list)
    stopped_by_time_limit: bool = False

    def other_load_cores(self) -> float:
        """Average CPUs used during the calls phase by processes not watched here."""
        if not self.seconds:
            return math.nan
        return (self.machine_busy_seconds - sum(self.cpu_seconds.values())) / self.seconds

    def cpu_ms_per_call(self, label: str) -> float:
        if label not in self.cpu_seconds or not self.calls:
            return math.nan
        return 1000 * self.cpu_seconds[label] / self.calls

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- one session


class McpHttpSession:
    """One MCP session over raw HTTP: initialize, call tools, delete.

    ``modern``: a client of the stateless revision (2026-07-28) instead - no
    ``initialize``, no session, no ``DELETE``; every request carries the revision's
    routing headers and its ``_meta`` envelope.
    """

    def __init__(self, client: httpx2.AsyncClient, url: str,
                 headers: Mapping[str, str] | None = None, *, modern: bool = False,
                 first_id: int = 1) -> None:
        self._client = client
        self.url = url
        self._extra_headers = dict(headers or {})
        self._next_id = first_id - 1
        self.session_id: str | None = None
        self.protocol_version = MODERN_VERSION if modern else PROTOCOL_VERSION
        self.modern = modern

    def _headers(self) -> dict[str, str]:
        headers = {"accept": ACCEPT, "content-type": "application/json", **self._extra_headers}
        if self.session_id is not None or self.modern:
            if self.session_id is not None:
                headers["mcp-session-id"] = self.session_id
            headers["mcp-protocol-version"] = self.protocol_version
        return headers

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """One JSON-RPC request; its result, or ``LoadError`` for any kind of failure."""
        self._next_id += 1
        request_id = self._next_id
        headers = self._headers()
        if self.modern:
            params = {**params, "_meta": MODERN_META}
            headers["mcp-method"] = method
            if "name" in params:
                headers["mcp-name"] = params["name"]
        body = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method,
                           "params": params}).encode()
        response = await self._client.post(self.url, content=body, headers=headers)
        if response.status_code != 200:
            raise LoadError(f"{method}: HTTP {response.status_code}: {response.text[:200]}")
        message = _response_message(response, request_id)
        if "error" in message:
            raise LoadError(f"{method}: JSON-RPC error {message['error']}")
        if method == "initialize":
            self.session_id = response.headers.get("mcp-session-id")
            self.protocol_version = message["result"].get("protocolVersion", PROTOCOL_VERSION)
        result: dict[str, Any] = message["result"]
        return result

    async def notify(self, method: str) -> None:
        body = json.dumps({"jsonrpc": "2.0", "method": method}).encode()
        response = await self._client.post(self.url, content=body, headers=self._headers())
        if response.status_code not in (200, 202):
            raise LoadError(f"{method}: HTTP {response.status_code}")

    async def initialize(self) -> None:
        if self.modern:
            return
        await self.request("initialize", {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "vmcp-bench", "version": "1"},
        })
        await self.notify("notifications/initialized")

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        result = await self.request("tools/call", {"name": name, "arguments": arguments})
        if result.get("isError"):
            raise LoadError(f"tools/call {name}: isError: {str(result)[:200]}")
        return result

    async def delete(self) -> None:
        if self.session_id is None:
            return
        response = await self._client.delete(self.url, headers=self._headers())
        if response.status_code not in (200, 202, 204, 404, 405):
            raise LoadError(f"DELETE: HTTP {response.status_code}")
        self.session_id = None


def _response_message(response: httpx2.Response, request_id: int) -> dict[str, Any]:
    """The JSON-RPC response in a JSON body, or in an SSE body's ``data:`` lines."""
    content_type = response.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        message: dict[str, Any] = json.loads(response.content)
        return message
    if content_type.startswith("text/event-stream"):
        for block in response.text.replace("\r\n", "\n").split("\n\n"):
            data = "\n".join(line[5:].lstrip() for line in block.split("\n")
                             if line.startswith("data:"))
            if not data.strip():
                continue
            candidate = json.loads(data)
            if candidate.get("id") == request_id and ("result" in candidate
                                                      or "error" in candidate):
                return dict(candidate)
        raise LoadError("SSE stream ended without the response")
    raise LoadError(f"unexpected content-type {content_type!r}")


def _check_echo(tool: str, arguments: dict[str, Any], result: dict[str, Any]) -> None:
    if tool.endswith("echo"):
        content = result.get("content") or [{}]
        if content[0].get("text") != arguments.get("text"):
            raise LoadError(f"echo answered {str(content)[:100]}")


# --------------------------------------------------------------------------- one run


class _Barrier:
    """All ``parties`` arrive (or drop out) before anyone passes."""

    def __init__(self, parties: int) -> None:
        self._waiting = parties
        self.passed = anyio.Event()

    def arrive(self) -> None:
        self._waiting -= 1
        if self._waiting <= 0:
            self.passed.set()


async def run_load(
    url: str,
    *,
    sessions: int = 8,
    calls: int = 200,
    tool: str = "echo",
    arguments: Callable[[int], dict[str, Any]] | None = None,
    warmup: int = 5,
    time_limit: float = 60.0,
    watch: Mapping[str, Sequence[int]] | None = None,
    headers: Mapping[str, str] | None = None,
    on_calls_start: Callable[[], None] | None = None,
    on_calls_end: Callable[[], None] | None = None,
    modern: bool = False,
) -> LoadResult:
    """Run C=``sessions`` sessions of up to N=``calls`` calls each against ``url``.

    ``watch`` maps a label to the pids whose CPU the calls phase is charged to;
    ``headers`` are added to every request (an ``Authorization``, for example);
    ``on_calls_start`` / ``on_calls_end`` run at the phase's edges (for other counters);
    ``modern``: 2026-07-28 clients (no session; "initialize" is then only the first call).
    """
    make_args = arguments or (lambda i: {"text": f"ping {i}"} if tool.endswith("echo") else {})
    watch = dict(watch or {})
    latencies: list[float] = []
    init_latencies: list[float] = []
    errors: list[str] = []
    ready = _Barrier(sessions)
    finished = _Barrier(sessions)
    ok_sessions = 0
    stop_at = math.inf
    timed_out = False
    limits = httpx2.Limits(max_connections=sessions * 2, max_keepalive_connections=sessions * 2)
    timeout = httpx2.Timeout(REQUEST_TIMEOUT)

    async def one_session(index: int, client: httpx2.AsyncClient) -> None:
        nonlocal ok_sessions, timed_out
        session = McpHttpSession(client, url, headers, modern=modern)
        in_setup = True
        try:
            started = time.perf_counter()
            await session.initialize()
            init_latencies.append(time.perf_counter() - started)
            for i in range(warmup):
                args = make_args(i)
                _check_echo(tool, args, await session.call_tool(tool, args))
            ok_sessions += 1
            in_setup = False
            ready.arrive()
            await ready.passed.wait()
            for i in range(calls):
                if time.perf_counter() >= stop_at:
                    timed_out = True
                    break
                args = make_args(index * calls + i)
                started = time.perf_counter()
                try:
                    result = await session.call_tool(tool, args)
                    _check_echo(tool, args, result)
                except (LoadError, httpx2.HTTPError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    if len(errors) > max(20, sessions * calls // 10):
                        raise LoadError(f"too many errors; first: {errors[0]}") from exc
                    continue
                latencies.append(time.perf_counter() - started)
        except (LoadError, httpx2.HTTPError) as exc:
            errors.append(f"session {index}: {type(exc).__name__}: {exc}")
            if in_setup:
                ready.arrive()
        finally:
            finished.arrive()
            with anyio.move_on_after(TEARDOWN_TIMEOUT, shield=True):
                await finished.passed.wait()
                try:
                    await session.delete()
                except (LoadError, httpx2.HTTPError) as exc:
                    errors.append(f"session {index} DELETE: {exc}")

    failure: str | None = None
    async with httpx2.AsyncClient(limits=limits, timeout=timeout) as client, \
            anyio.create_task_group() as tg:
        for index in range(sessions):
            tg.start_soon(one_session, index, client)
        with anyio.move_on_after(SETUP_TIMEOUT):
            await ready.passed.wait()
        if not ready.passed.is_set() or ok_sessions == 0:
            failure = (f"no session could be initialized at {url} within "
                       f"{SETUP_TIMEOUT:g}s: {errors[0] if errors else 'timed out'}")
            tg.cancel_scope.cancel()
        else:
            if on_calls_start is not None:
                on_calls_start()
            before = cpu_snapshot(watch)
            began = time.perf_counter()
            stop_at = began + time_limit
            with anyio.move_on_after(time_limit + REQUEST_TIMEOUT + 5):
                await finished.passed.wait()
            ended = time.perf_counter()
            after = cpu_snapshot(watch)
            if on_calls_end is not None:
                on_calls_end()
            if not finished.passed.is_set():
                failure = "the calls phase overran its time limit"
                tg.cancel_scope.cancel()
    if failure is not None:
        raise LoadError(failure)

    latencies.sort()
    init_latencies.sort()
    seconds = ended - began
    return LoadResult(
        url=url, tool=tool, sessions=sessions, sessions_ok=ok_sessions,
        calls=len(latencies), errors=len(errors), seconds=seconds,
        calls_per_second=len(latencies) / seconds if seconds > 0 else math.nan,
        p50_ms=1000 * percentile(latencies, 50), p90_ms=1000 * percentile(latencies, 90),
        p99_ms=1000 * percentile(latencies, 99),
        max_ms=1000 * latencies[-1] if latencies else math.nan,
        initialize_p50_ms=1000 * percentile(init_latencies, 50),
        initialize_p99_ms=1000 * percentile(init_latencies, 99),
        cpu_seconds={label: sum(after[label]) - sum(before[label])
                     for label in after if label != "machine"},
        cpu_system_seconds={label: after[label][1] - before[label][1]
                            for label in after if label != "machine"},
        machine_busy_seconds=after["machine"][0] - before["machine"][0],
        first_errors=errors[:5], stopped_by_time_limit=timed_out,
    )


def run(coro_fn: Callable[[], Any]) -> Any:
    """``anyio.run`` on uvloop when it is installed (less client CPU per request)."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return anyio.run(coro_fn)
    return anyio.run(coro_fn, backend_options={"use_uvloop": True})


# --------------------------------------------------------------------------- command line


def _parse_watch(items: Sequence[str]) -> dict[str, list[int]]:
    watch: dict[str, list[int]] = {}
    for item in items:
        label, _, pids = item.partition("=")
        watch.setdefault(label, []).extend(int(p) for p in pids.split(",") if p)
    return watch


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="MCP Streamable-HTTP load generator.")
    parser.add_argument("--url", required=True)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--tool", default="echo")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--watch", action="append", default=[],
                        help="LABEL=PID[,PID...]: charge these processes' CPU to LABEL")
    parser.add_argument("--modern", action="store_true",
                        help="2026-07-28 clients: no session, the revision's headers")
    args = parser.parse_args(argv)
    host = httpx2.URL(args.url).host
    if host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("loopback URLs only")
    result = run(lambda: run_load(args.url, sessions=args.sessions, calls=args.calls,
                                  tool=args.tool, warmup=args.warmup,
                                  time_limit=args.time_limit,
                                  watch=_parse_watch(args.watch), modern=args.modern))
    print(json.dumps(result.as_dict(), indent=2))


if __name__ == "__main__":
    main()
