"""What vmcp costs per call, as ratios from one run: ``python -m bench.run [--quick]``.

Starts everything itself on loopback - one bench backend, redis-server, the vmcp
processes (generated YAML configurations), nginx in front of three replicas, FastMCP's
proxy, ContextForge when installed - runs the scenarios against the same backend process,
then the micro-figures, profiles one vmcp process, writes ``bench/RESULTS.md``,
``bench/results.png`` and ``bench/results.json``, and stops every process it started,
on failure too.

Scenarios (each: an echo run, then a blob run):

  a  direct to the backend
  b  vmcp, memory store, 1 process
  c  vmcp, Redis store, 1 process
  d  vmcp, Redis store, 3 replicas behind nginx (round robin)
  e  FastMCP's proxy (``create_proxy``) in front of the backend
  f  ContextForge in front of the backend (``--setup-contextforge`` installs it)
  g  the floor (``bench/floor.py``) with one Redis ``GETEX`` per call; h  without it
  i  vmcp, 2026-07-28 clients, the backend speaking that revision too
  j  vmcp, 2026-07-28 clients, a backend speaking only the session-based revisions
  k  the floor of (i): (h) forwarding the 2026-07-28 calls
  l  the floor of (j): the floor holding one upstream session per backend connection
  m  vmcp, Redis store, ``vmcp serve --workers 2`` (two replica processes on one port)
  n  the ASGI floor (``bench/asgi_floor.py``): uvicorn and vmcp's lean pool forwarding bytes,
     no store - what vmcp's stack costs before any of vmcp's own work
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import anyio
import httpx2
import redis

from bench import contextforge
from bench.load import (
    LoadError,
    LoadResult,
    McpHttpSession,
    cpu_snapshot,
    percentile,
    process_rss_bytes,
    run,
    run_load,
)
from bench.procs import ROOT, Proc, Processes, StartError, children, free_ports, wait_http
from bench.profile import ProfileSummary, Recording, summarize
from tests.support.redis_server import RedisServer
from vmcp.identity import UNAUTHENTICATED
from vmcp.session import metadata as md

BENCH = ROOT / "bench"
START_TIMEOUT = 60.0
GATEWAY_LABELS = ("gateway",)


@dataclass
class Plan:
    """How much work each part does; ``--quick`` shrinks everything."""

    sessions: int = 8
    echo_calls: int = 200
    blob_calls: int = 100
    warmup: int = 5
    time_limit: float = 30.0
    slow_time_limit: float = 12.0        # FastMCP and ContextForge: bounded by time
    rounds: int = 3                      # a-d are repeated, interleaved; best round kept
    mode_calls: int = 200
    restore_trials: int = 30
    restore_hits: int = 10
    memory_sessions: int = 1000
    creation_sessions: int = 300
    profile_calls: int = 600
    sweep: tuple[int, ...] = (1, 8, 32, 64)
    sweep_calls: int = 1600              # total per concurrency level
    quiet_wait: float = 90.0             # bound on waiting for the machine to calm down
    one_session_calls: int = 300         # added latency at C=1: calls per path and round
    one_session_warmup: int = 30
    one_session_rounds: int = 3          # direct / memory / Redis, interleaved
    stored_levels: tuple[int, ...] = (100, 1_000, 10_000)   # stored sessions
    stored_capacity: int = 1000          # that vmcp process's session.cache_capacity
    stored_http_max: int = 1000          # created over HTTP up to this; the rest written
    stored_concurrency: int = 32         # concurrent initialize+initialized when creating
    stored_clients: int = 8              # concurrent clients measuring at each level
    stored_hit_calls: int = 50           # per client, on its own cached session
    stored_random_calls: int = 20        # per client, each on a session drawn at random
    quick: bool = False

    @classmethod
    def quick_plan(cls) -> Plan:
        return cls(sessions=2, echo_calls=20, blob_calls=10, warmup=2, time_limit=3.0,
                   slow_time_limit=3.0, rounds=1, mode_calls=20, restore_trials=3,
                   restore_hits=3, memory_sessions=50, creation_sessions=20,
                   profile_calls=0, sweep=(1, 4), sweep_calls=40, quiet_wait=0.0,
                   one_session_calls=60, one_session_warmup=5, stored_levels=(10, 100, 1000),
                   stored_capacity=100, stored_http_max=100, stored_hit_calls=5,
                   stored_random_calls=3, quick=True)


@dataclass
class Scenario:
    key: str
    title: str
    url: str
    watch: dict[str, list[int]]
    tool_prefix: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    slow: bool = False
    modern: bool = False                 # 2026-07-28 clients (no session)


@dataclass
class Report:
    started: str
    plan: Plan
    machine: dict[str, str] = field(default_factory=dict)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    titles: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    modes: list[dict[str, Any]] = field(default_factory=list)
    micro: dict[str, Any] = field(default_factory=dict)
    profile: ProfileSummary | None = None
    profile_files: list[str] = field(default_factory=list)
    profile_notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def best(self, key: str, tool: str) -> dict[str, Any] | None:
        runs = self.runs.get(key, {}).get(tool, [])
        return max(runs, key=lambda r: r["calls_per_second"]) if runs else None


# --------------------------------------------------------------------------- processes


def vmcp_binary() -> str:
    found = Path(sys.executable).parent / "vmcp"
    return str(found) if found.exists() else "vmcp"


VMCP_SOURCE: Path | None = None
"""A ``src`` directory to run vmcp from instead of the work tree's (``--revision``)."""


def clean_env() -> dict[str, str]:
    """This environment without ``VMCP_*`` (the generated files alone configure vmcp)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("VMCP_")}


def vmcp_env() -> dict[str, str]:
    env = clean_env()
    if VMCP_SOURCE is not None:
        # Ahead of the editable install's path entry, so this copy is the one imported.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(VMCP_SOURCE), env.get("PYTHONPATH", "")) if p)
    return env


def export_revision(revision: str, workdir: Path) -> tuple[Path, str]:
    """``src/`` of a committed revision, extracted under ``workdir``; and its short hash."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", revision],
                            capture_output=True, text=True, timeout=30, check=True
                            ).stdout.strip()
    target = workdir / f"vmcp-{commit}"
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "src"],
                             capture_output=True, timeout=60, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, timeout=60, check=True)
    return target / "src", commit


def start_backend(procs: Processes, name: str, port: int, *extra: str) -> Proc:
    return procs.start(name, [sys.executable, "-m", "bench.backend", "--port", str(port),
                              *extra], env=clean_env())


def write_vmcp_config(workdir: Path, name: str, port: int, store: str,
                      backends: Sequence[tuple[str, str]], *, cache_capacity: int = 1000,
                      key_prefix: str | None = None) -> Path:
    prefix = f", key_prefix: \"{key_prefix}\"" if key_prefix else ""
    lines = [
        "# Generated by bench/run.py",
        f"server: {{host: 127.0.0.1, port: {port}, replica_id: {name}}}",
        f"session: {{store: \"{store}\", cache_capacity: {cache_capacity}{prefix}}}",
        "backends:",
        *[f"  - {{name: {b}, url: \"{url}\"}}" for b, url in backends],
    ]
    if len(backends) == 1:
        lines.append('aggregation: {prefix_format: ""}')  # tool names pass through unchanged
    path = workdir / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_vmcp(procs: Processes, workdir: Path, name: str, port: int, store: str,
               backends: Sequence[tuple[str, str]], *args: str, **kwargs: Any) -> Proc:
    config = write_vmcp_config(workdir, name, port, store, backends, **kwargs)
    return procs.start(name, [vmcp_binary(), "serve", "--config", str(config),
                              "--log-level", "warning", *args], env=vmcp_env())


def wait_workers(port: int, count: int, timeout: float = START_TIMEOUT) -> None:
    """Until ``count`` different workers have answered ``/status`` (each on a connection
    of its own: the kernel hands new connections to whichever worker accepts first)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < count:
        if time.monotonic() > deadline:
            raise StartError(f"only {len(seen)} of {count} workers answered on port {port}")
        with contextlib.suppress(httpx2.HTTPError, KeyError, ValueError):
            seen.add(httpx2.get(f"http://127.0.0.1:{port}/status", timeout=5
                                ).json()["replica_id"])


NGINX_CONF = """\
# Generated by bench/run.py: round robin over the vmcp replicas, SSE-friendly proxying.
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    upstream vmcp {{
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://vmcp;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""


def start_nginx(procs: Processes, workdir: Path, port: int, upstreams: Sequence[int]) -> Proc:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    prefix = workdir / "nginx"
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in upstreams)
    (prefix / "nginx.conf").write_text(NGINX_CONF.format(dir=prefix, servers=servers, port=port))
    return procs.start("nginx", [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                                 "-g", "daemon off;"])


def start_floor(procs: Processes, name: str, port: int, backend_url: str,
                redis_url: str | None, *extra: str) -> Proc:
    store = ["--redis", redis_url] if redis_url else []
    return procs.start(name, [sys.executable, "-m", "bench.floor", "--port", str(port),
                              "--backend", backend_url, *store, *extra], env=clean_env())


def start_asgi_floor(procs: Processes, port: int, backend_url: str) -> Proc:
    return procs.start("asgi-floor", [sys.executable, "-m", "bench.asgi_floor", "--port",
                                      str(port), "--backend", backend_url], env=clean_env())


def start_fastmcp(procs: Processes, port: int, backend_url: str) -> Proc:
    return procs.start("fastmcp", [sys.executable, "-m", "bench.fastmcp_proxy", "--port",
                                   str(port), "--backend", backend_url], env=clean_env())


# --------------------------------------------------------------------------- measuring


def echo_args(i: int) -> dict[str, Any]:
    return {"text": f"ping {i}"}


def load(url: str, plan: Plan, tool: str, *, calls: int, time_limit: float,
         watch: Mapping[str, Sequence[int]] | None = None,
         headers: Mapping[str, str] | None = None,
         on_calls_start: Callable[[], None] | None = None,
         on_calls_end: Callable[[], None] | None = None, modern: bool = False) -> LoadResult:
    result: LoadResult = run(lambda: run_load(
        url, sessions=plan.sessions, calls=calls, tool=tool, warmup=plan.warmup,
        time_limit=time_limit, watch=watch, headers=headers,
        on_calls_start=on_calls_start, on_calls_end=on_calls_end, modern=modern))
    if result.errors:
        print(f"    {result.errors} errors, first: {result.first_errors[:1]}", flush=True)
    return result


def describe(result: LoadResult) -> str:
    cpu = ", ".join(f"{k} {1000 * v / max(result.calls, 1):.2f}"
                    for k, v in result.cpu_seconds.items())
    return (f"{result.calls} calls, {result.calls_per_second:.0f}/s, p50 {result.p50_ms:.1f} "
            f"p99 {result.p99_ms:.1f} ms; CPU ms/call: {cpu}; other load "
            f"{result.other_load_cores():.2f} CPUs")


def run_scenario(report: Report, plan: Plan, scenario: Scenario,
                 hooks: Mapping[str, tuple[Callable[[], None], Callable[[], None]]]
                 | None = None) -> None:
    limit = plan.slow_time_limit if scenario.slow else plan.time_limit
    for tool, calls in (("echo", plan.echo_calls), ("blob", plan.blob_calls)):
        start_hook, end_hook = (hooks or {}).get(tool, (None, None))
        print(f"  ({scenario.key}) {scenario.title}: {tool} ...", flush=True)
        try:
            result = load(scenario.url, plan, scenario.tool_prefix + tool, calls=calls,
                          time_limit=limit, watch=scenario.watch, headers=scenario.headers,
                          on_calls_start=start_hook, on_calls_end=end_hook,
                          modern=scenario.modern)
        except (LoadError, httpx2.HTTPError, OSError) as exc:
            report.failures.append(f"({scenario.key}) {tool}: {exc}")
            print(f"    failed: {exc}", flush=True)
            continue
        print(f"    {describe(result)}", flush=True)
        report.runs.setdefault(scenario.key, {}).setdefault(tool, []).append(result.as_dict())


class CommandStats:
    """Redis ``INFO commandstats`` deltas (calls per command, ``info`` itself left out)."""

    def __init__(self, port: int) -> None:
        self._client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        self._before: dict[str, int] = {}
        self.delta: dict[str, int] = {}

    def snapshot(self) -> dict[str, int]:
        stats = self._client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(value["calls"])
                for name, value in stats.items() if name != "cmdstat_info"}

    def start(self) -> None:
        self._before = self.snapshot()

    def stop(self) -> None:
        after = self.snapshot()
        self.delta = {k: v - self._before.get(k, 0) for k, v in after.items()
                      if v - self._before.get(k, 0) > 0}

    def close(self) -> None:
        self._client.close()


def backend_modes(procs: Processes, plan: Plan, report: Report) -> None:
    """The SDK server's response modes, measured direct (the bench backend's default: JSON)."""
    modes = [("stateful, JSON responses (json_response=True)", ()),
             ("stateful, SSE responses (SDK default)", ("--sse",)),
             ("stateless, JSON responses", ("--stateless",))]
    ports = free_ports(len(modes))
    started = [start_backend(procs, f"mode-backend-{i}", port, *extra)
               for i, ((_, extra), port) in enumerate(zip(modes, ports, strict=True))]
    try:
        for proc, port in zip(started, ports, strict=True):
            wait_http(proc, port, "/mcp", timeout=START_TIMEOUT)
        for (title, _), proc, port in zip(modes, started, ports, strict=True):
            print(f"  backend mode: {title} ...", flush=True)
            result = load(f"http://127.0.0.1:{port}/mcp", plan, "echo", calls=plan.mode_calls,
                          time_limit=plan.time_limit, watch={"backend": [proc.pid]})
            print(f"    {describe(result)}", flush=True)
            report.modes.append({"mode": title, **result.as_dict()})
    finally:
        for proc in started:
            procs.stop(proc)


async def _restore_latency(create_url: str, other_url: str, trials: int,
                           hits: int) -> dict[str, Any]:
    cold: list[float] = []
    warm: list[float] = []
    origin: list[float] = []
    async with httpx2.AsyncClient(timeout=30) as client:
        for trial in range(trials):
            session = McpHttpSession(client, create_url)
            await session.initialize()
            # One call where it was created: upstream sessions open on first use, and the
            # first call elsewhere is to measure a restore (re-attach), not that opening.
            await session.call_tool("echo", echo_args(trial))
            session.url = other_url
            try:
                for i in range(hits + 1):
                    started = time.perf_counter()
                    await session.call_tool("echo", echo_args(i))
                    (cold if i == 0 else warm).append(time.perf_counter() - started)
                session.url = create_url
                started = time.perf_counter()
                await session.call_tool("echo", echo_args(trial))
                origin.append(time.perf_counter() - started)
            finally:
                await session.delete()
    cold.sort()
    warm.sort()
    origin.sort()
    return {
        "trials": trials,
        "cold_p50_ms": 1000 * percentile(cold, 50), "cold_p90_ms": 1000 * percentile(cold, 90),
        "hit_p50_ms": 1000 * percentile(warm, 50), "hit_p90_ms": 1000 * percentile(warm, 90),
        "creating_replica_p50_ms": 1000 * percentile(origin, 50),
    }


async def _open_sessions(url: str, count: int, concurrency: int,
                         client: httpx2.AsyncClient) -> tuple[list[McpHttpSession], list[float],
                                                              float]:
    sessions: list[McpHttpSession] = []
    latencies: list[float] = []
    remaining = iter(range(count))

    async def worker() -> None:
        for _ in remaining:
            session = McpHttpSession(client, url)
            started = time.perf_counter()
            await session.initialize()
            latencies.append(time.perf_counter() - started)
            sessions.append(session)

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return sessions, sorted(latencies), time.perf_counter() - began


async def _close_sessions(sessions: list[McpHttpSession], concurrency: int) -> float:
    queue = iter(list(sessions))

    async def worker() -> None:
        for session in queue:
            await session.delete()

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return time.perf_counter() - began


async def _creation_rate(url: str, count: int, concurrency: int) -> dict[str, Any]:
    limits = httpx2.Limits(max_connections=concurrency * 2)
    async with httpx2.AsyncClient(timeout=30, limits=limits) as client:
        with anyio.fail_after(120):
            warm, _, _ = await _open_sessions(url, concurrency, concurrency, client)
            await _close_sessions(warm, concurrency)
            sessions, latencies, seconds = await _open_sessions(url, count, concurrency, client)
            closing = await _close_sessions(sessions, concurrency)
    return {"sessions": count, "concurrency": concurrency,
            "sessions_per_second": count / seconds,
            "initialize_p50_ms": 1000 * percentile(latencies, 50),
            "initialize_p99_ms": 1000 * percentile(latencies, 99),
            "deletes_per_second": count / closing}


async def _memory_per_session(url: str, gateway: int, backend: int, count: int,
                              concurrency: int) -> dict[str, Any]:
    limits = httpx2.Limits(max_connections=concurrency * 2)
    async with httpx2.AsyncClient(timeout=30, limits=limits) as client:
        with anyio.fail_after(180):
            warm, _, _ = await _open_sessions(url, 50, concurrency, client)
            await _close_sessions(warm, concurrency)
            await anyio.sleep(1.0)
            gateway_before, backend_before = process_rss_bytes(gateway), process_rss_bytes(backend)
            sessions, _, seconds = await _open_sessions(url, count, concurrency, client)
            await anyio.sleep(1.0)
            gateway_after, backend_after = process_rss_bytes(gateway), process_rss_bytes(backend)
            await _close_sessions(sessions, concurrency)
            await anyio.sleep(1.0)
            gateway_closed = process_rss_bytes(gateway)
    return {
        "sessions": count,
        "gateway_rss_before_mib": gateway_before / 2**20,
        "gateway_rss_after_mib": gateway_after / 2**20,
        "gateway_kib_per_session": (gateway_after - gateway_before) / count / 1024,
        "gateway_rss_after_delete_mib": gateway_closed / 2**20,
        "backend_kib_per_session": (backend_after - backend_before) / count / 1024,
        "open_seconds": seconds,
    }


# --------------------------------------------------------------------------- latency figures

ADDED_P50_TARGET_MS = {"memory": 1.5, "redis": 2.0}
"""What the added latency at one session is compared with (vmcp p50 - direct p50)."""

STORED_PREFIX = "vmcp-bench-stored:"
"""Key prefix of the stored-sessions figure's vmcp process (its records alone)."""


def one_session_latency(plan: Plan, paths: Sequence[tuple[str, str, dict[str, list[int]]]]
                        ) -> dict[str, Any]:
    """``tools/call`` echo latency at C=1 per path; the first path is the direct one.

    ``paths``: (key, URL, watched pids). The rounds are interleaved and each starts at
    another path, so a busy spell of the shared machine does not fall on one path only.
    """
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key, _, _ in paths}
    for round_no in range(plan.one_session_rounds):
        shift = round_no % len(paths)
        for key, url, watch in [*paths[shift:], *paths[:shift]]:
            result: LoadResult = run(lambda url=url, watch=watch: run_load(
                url, sessions=1, calls=plan.one_session_calls, tool="echo",
                warmup=plan.one_session_warmup, time_limit=plan.time_limit, watch=watch))
            if result.errors:
                raise LoadError(f"{key}: {result.errors} errors, first: "
                                f"{result.first_errors[:1]}")
            print(f"    round {round_no + 1}, {key}: p50 {result.p50_ms:.2f} p90 "
                  f"{result.p90_ms:.2f} ms ({result.calls} calls, other load "
                  f"{result.other_load_cores():.2f} CPUs)", flush=True)
            runs[key].append({
                "round": round_no + 1, "calls": result.calls,
                "calls_per_second": result.calls_per_second, "p50_ms": result.p50_ms,
                "p90_ms": result.p90_ms, "p99_ms": result.p99_ms,
                "gateway_cpu_ms_per_call": result.cpu_ms_per_call("gateway"),
                "other_load_cores": result.other_load_cores(),
            })
    direct = paths[0][0]
    summary: dict[str, dict[str, Any]] = {}
    for key, rows in runs.items():
        p50s = sorted(r["p50_ms"] for r in rows)
        p90s = sorted(r["p90_ms"] for r in rows)
        summary[key] = {"p50_best_ms": p50s[0], "p50_median_ms": statistics.median(p50s),
                        "p90_best_ms": p90s[0], "p90_median_ms": statistics.median(p90s)}
    for key, figures in summary.items():
        if key == direct:
            continue
        base = summary[direct]
        figures["added_p50_best_ms"] = figures["p50_best_ms"] - base["p50_best_ms"]
        figures["added_p50_median_ms"] = figures["p50_median_ms"] - base["p50_median_ms"]
        figures["added_p90_median_ms"] = figures["p90_median_ms"] - base["p90_median_ms"]
        figures["added_p50_per_round_ms"] = [
            r["p50_ms"] - d["p50_ms"] for r, d in zip(runs[key], runs[direct], strict=True)]
        target = ADDED_P50_TARGET_MS.get(key)
        figures["added_p50_target_ms"] = target
        if target is not None:
            figures["meets_target_best"] = figures["added_p50_best_ms"] <= target
            figures["meets_target_median"] = figures["added_p50_median_ms"] <= target
    return {"calls": plan.one_session_calls, "warmup": plan.one_session_warmup,
            "rounds": plan.one_session_rounds, "paths": summary, "runs": runs}


def stored_sessions(procs: Processes, workdir: Path, plan: Plan, *, backend_url: str,
                    backend_pid: int, redis_server: RedisServer) -> dict[str, Any]:
    """Latency of cached and of randomly picked sessions as the store fills up.

    One vmcp process on Redis with ``cache_capacity`` ``plan.stored_capacity``. Sessions
    are created over HTTP (``plan.stored_concurrency`` at once) up to
    ``plan.stored_http_max``; beyond that, copies of a real session's record are written
    into Redis under new ids (see ``_write_records``).
    """
    (port,) = free_ports(1)
    proc = start_vmcp(procs, workdir, "vmcp-stored", port, redis_server.url,
                      [("bench", backend_url)], cache_capacity=plan.stored_capacity,
                      key_prefix=STORED_PREFIX)
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=10)
    try:
        wait_http(proc, port, "/healthz", timeout=START_TIMEOUT, ok=(200,))
        watch = {"gateway": [proc.pid], "backend": [backend_pid],
                 "redis": [redis_server.process.pid] if redis_server.process else []}
        return dict(run(lambda: _stored_sessions(f"http://127.0.0.1:{port}", watch,
                                                 client, plan)))
    finally:
        procs.stop(proc)
        try:
            for batch in _batched(client.scan_iter(match=STORED_PREFIX + "*", count=1000),
                                  1000):
                client.unlink(*batch)
        finally:
            client.close()


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_records(client: redis.Redis, template_id: str, count: int) -> list[str]:
    """Store ``count`` new sessions as byte-for-byte copies of ``template_id``'s record.

    The record is what the gateway itself wrote for a full session: identity
    ``unauthenticated`` and the backend list, plus the backend's state (its session id
    and ``InitializeResult``) once the session used the backend (upstream sessions open
    on first use), so each copy is restorable like a session another replica created.
    Copies share that backend session, if any; the TTL is the template's.
    """
    key = STORED_PREFIX + template_id
    raw = client.get(key)
    ttl_ms = client.pttl(key)
    if not isinstance(raw, bytes) or not isinstance(ttl_ms, int) or ttl_ms <= 0:
        raise LoadError(f"no live record under {key}")
    record = json.loads(raw)
    if not (md.is_full_session(record) and record[md.IDENTITY] == UNAUTHENTICATED):
        raise LoadError(f"not a restorable unauthenticated record: {sorted(record)}")
    ids = [uuid.uuid4().hex for _ in range(count)]  # the gateway's id format
    for batch in _batched(ids, 1000):
        with client.pipeline(transaction=False) as pipe:
            for session_id in batch:
                pipe.set(STORED_PREFIX + session_id, raw, px=ttl_ms, nx=True)
            if not all(pipe.execute()):
                raise LoadError("a generated session id was already stored")
    return ids


CACHE_COUNTERS = ("vmcp_cache_hits_total", "vmcp_cache_misses_total",
                  "vmcp_cache_restores_total", "vmcp_cache_restore_failures_total",
                  "vmcp_cache_evictions_total", "vmcp_live_sessions")


async def _cache_counters(client: httpx2.AsyncClient, base: str) -> dict[str, float]:
    """The gateway's session-cache counters, from its ``/metrics``."""
    response = await client.get(base + "/metrics")
    response.raise_for_status()
    found: dict[str, float] = {}
    for line in response.text.splitlines():
        name, _, value = line.partition(" ")
        if name in CACHE_COUNTERS:
            found[name.removesuffix("_total").removeprefix("vmcp_")] = float(value)
    return found


async def _timed_echo(pick: Callable[[int, int], McpHttpSession], clients: int,
                      calls: int, watch: Mapping[str, Sequence[int]] | None = None
                      ) -> dict[str, Any]:
    """``clients`` concurrent clients, ``calls`` echo calls each on ``pick(client, i)``;
    with the CPU per call of the ``watch``-ed processes."""
    latencies: list[float] = []
    errors: list[str] = []

    async def one_client(index: int) -> None:
        for i in range(calls):
            session = pick(index, i)
            args = echo_args(index * calls + i)
            started = time.perf_counter()
            try:
                result = await session.call_tool("echo", args)
                text = (result.get("content") or [{}])[0].get("text")
                if text != args["text"]:
                    raise LoadError(f"echo answered {str(result)[:100]}")
            except (LoadError, httpx2.HTTPError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - started)

    before = cpu_snapshot(watch or {})
    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for index in range(clients):
            tg.start_soon(one_client, index)
    seconds = time.perf_counter() - began
    after = cpu_snapshot(watch or {})
    used = {label: sum(after[label]) - sum(before[label]) for label in after}
    busy = used.pop("machine")
    latencies.sort()
    return {"calls": len(latencies), "errors": len(errors), "first_errors": errors[:3],
            "seconds": seconds, "p50_ms": 1000 * percentile(latencies, 50),
            "p90_ms": 1000 * percentile(latencies, 90),
            "max_ms": 1000 * latencies[-1] if latencies else math.nan,
            "cpu_ms_per_call": {label: 1000 * v / max(len(latencies), 1)
                                for label, v in used.items()},
            "other_load_cores": (busy - sum(used.values())) / seconds if seconds else math.nan}


async def _stored_sessions(base: str, watch: dict[str, list[int]], client: redis.Redis,
                           plan: Plan) -> dict[str, Any]:
    url = base + "/mcp"
    rng = random.Random(20)
    ids: list[str] = []
    hot: list[McpHttpSession] = []
    levels: list[dict[str, Any]] = []
    limits = httpx2.Limits(max_connections=2 * max(plan.stored_concurrency,
                                                   plan.stored_clients))
    async with httpx2.AsyncClient(timeout=30, limits=limits) as http:

        picks = itertools.count()

        def random_session(index: int, i: int) -> McpHttpSession:
            # Two clients may draw one session at once: their request ids must differ
            # (a session refuses an id it is still answering).
            session = McpHttpSession(http, url, first_id=1 + 1000 * next(picks))
            session.session_id = rng.choice(ids)
            session.protocol_version = hot[0].protocol_version
            return session

        for level in plan.stored_levels:
            row: dict[str, Any] = {"stored": level, "created_over_http": 0,
                                   "written_directly": 0}
            by_http = max(0, min(level, plan.stored_http_max) - len(ids))
            if by_http:
                with anyio.fail_after(120):
                    created, latencies, seconds = await _open_sessions(
                        url, by_http, plan.stored_concurrency, http)
                ids += [s.session_id for s in created if s.session_id]
                if not hot:
                    hot.extend(created[:plan.stored_clients])
                row.update(created_over_http=by_http, http_seconds=seconds,
                           http_sessions_per_second=by_http / seconds,
                           initialize_p50_ms=1000 * percentile(latencies, 50),
                           initialize_p99_ms=1000 * percentile(latencies, 99))
            if level > len(ids):
                started = time.perf_counter()
                written = level - len(ids)
                ids += _write_records(client, ids[-1], written)
                row.update(written_directly=written,
                           write_seconds=time.perf_counter() - started)
            row["keys_in_redis"] = sum(1 for _ in client.scan_iter(
                match=STORED_PREFIX + "*", count=1000))
            await _timed_echo(lambda index, i: hot[index], len(hot), 2)  # warm-up
            before = await _cache_counters(http, base)
            row["hits"] = await _timed_echo(lambda index, i: hot[index], len(hot),
                                            plan.stored_hit_calls, watch)
            middle = await _cache_counters(http, base)
            row["random"] = await _timed_echo(random_session, plan.stored_clients,
                                              plan.stored_random_calls, watch)
            after = await _cache_counters(http, base)
            for kind, (start, end) in (("hits", (before, middle)), ("random", (middle, after))):
                row[kind]["cache"] = {k: end[k] - start.get(k, 0.0) for k in end
                                      if k != "live_sessions"}
            row["live_sessions"] = after.get("live_sessions")
            row["gateway_rss_mib"] = process_rss_bytes(watch["gateway"][0]) / 2**20
            row["redis_used_memory_mib"] = int(client.info("memory")["used_memory"]) / 2**20
            print(f"    {level} stored: hits p50 {row['hits']['p50_ms']:.2f} p90 "
                  f"{row['hits']['p90_ms']:.2f} ms; random p50 {row['random']['p50_ms']:.2f} "
                  f"p90 {row['random']['p90_ms']:.2f} ms, cache {row['random']['cache']}",
                  flush=True)
            levels.append(row)
    first, last = levels[0], levels[-1]
    ratios = {f"{kind}_{p}": last[kind][f"{p}_ms"] / first[kind][f"{p}_ms"]
              for kind in ("hits", "random") for p in ("p50", "p90")}
    return {"capacity": plan.stored_capacity, "key_prefix": STORED_PREFIX,
            "http_max": plan.stored_http_max,
            "concurrency": plan.stored_concurrency, "clients": plan.stored_clients,
            "hit_calls": plan.stored_hit_calls, "random_calls": plan.stored_random_calls,
            "levels": levels, "ratios_last_vs_first": ratios}


def micro_figures(procs: Processes, workdir: Path, plan: Plan, report: Report, *,
                  backend_url: str, redis_server: RedisServer, replica_urls: Sequence[str],
                  commands: CommandStats, vmcp_redis_url: str, backend_pid: int,
                  one_session_paths: Sequence[tuple[str, str, dict[str, list[int]]]]) -> None:
    micro = report.micro

    def step(name: str, fn: Callable[[], Any]) -> None:
        try:
            micro[name] = fn()
            print(f"  {name}: {str(micro[name])[:400]}", flush=True)
        except Exception as exc:  # a failed figure is recorded, the others still run
            report.failures.append(f"micro-figure {name}: {type(exc).__name__}: {exc}")
            print(f"  {name} failed: {exc}", flush=True)
            traceback.print_exc()

    print("  added latency at one session (direct, vmcp memory, vmcp Redis):", flush=True)
    step("one_session_latency", lambda: one_session_latency(plan, one_session_paths))

    # Redis commands over whole sessions with no calls: initialize, initialized, DELETE.
    def lifecycle() -> dict[str, Any]:
        sessions = max(plan.sessions * 5, 10)
        commands.start()
        run(lambda: _lifecycle_only(vmcp_redis_url, sessions))
        commands.stop()
        return {"sessions": sessions,
                "commands_per_session": {k: v / sessions for k, v in commands.delta.items()},
                "total_per_session": sum(commands.delta.values()) / sessions}

    step("redis_per_session_lifecycle", lifecycle)

    def record_size() -> dict[str, Any]:
        client = redis.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=5)
        try:
            sizes: dict[str, Any] = run(lambda: _stored_record_sizes(vmcp_redis_url, client))
        finally:
            client.close()
        return sizes

    step("stored_record", record_size)
    step("restore_latency", lambda: run(lambda: _restore_latency(
        replica_urls[0], replica_urls[1], plan.restore_trials, plan.restore_hits)))

    # Memory per live session: a fresh process, memory store, room for every session.
    def memory() -> dict[str, Any]:
        (port,) = free_ports(1)
        proc = start_vmcp(procs, workdir, "vmcp-memory-probe", port, "memory",
                          [("bench", backend_url)], cache_capacity=plan.memory_sessions * 2)
        try:
            wait_http(proc, port, "/healthz", timeout=START_TIMEOUT, ok=(200,))
            return dict(run(lambda: _memory_per_session(
                f"http://127.0.0.1:{port}/mcp", proc.pid, backend_pid, plan.memory_sessions,
                plan.sessions)))
        finally:
            procs.stop(proc)

    step("memory_per_session", memory)

    # Session creation with 1 and with 3 backends (3 bench backend processes).
    def creation() -> dict[str, Any]:
        extra_ports = free_ports(5)
        extra = [start_backend(procs, f"backend-{i + 2}", extra_ports[i]) for i in range(2)]
        gateways: list[tuple[str, Proc, int]] = []
        try:
            for proc, port in zip(extra, extra_ports[:2], strict=True):
                wait_http(proc, port, "/mcp", timeout=START_TIMEOUT)
            three = [("b1", backend_url)] + [
                (f"b{i + 2}", f"http://127.0.0.1:{p}/mcp") for i, p in enumerate(extra_ports[:2])]
            configs = [("1 backend, memory store", "vmcp-create-1", "memory",
                        [("bench", backend_url)]),
                       ("3 backends, memory store", "vmcp-create-3", "memory", three),
                       ("3 backends, Redis store", "vmcp-create-3r", redis_server.url, three)]
            results: dict[str, Any] = {}
            for (title, name, store, backends), port in zip(configs, extra_ports[2:],
                                                              strict=True):
                proc = start_vmcp(procs, workdir, name, port, store, backends)
                gateways.append((title, proc, port))
            for _, proc, port in gateways:
                wait_http(proc, port, "/healthz", timeout=START_TIMEOUT, ok=(200,))
            for title, _, port in gateways:
                results[title] = run(lambda port=port: _creation_rate(
                    f"http://127.0.0.1:{port}/mcp", plan.creation_sessions, plan.sessions))
            return results
        finally:
            for _, proc, _ in gateways:
                procs.stop(proc)
            for proc in extra:
                procs.stop(proc)

    step("session_creation", creation)

    print(f"  latency against stored sessions ({', '.join(map(str, plan.stored_levels))}; "
          f"cache_capacity {plan.stored_capacity}):", flush=True)
    step("stored_sessions", lambda: stored_sessions(procs, workdir, plan,
                                                    backend_url=backend_url,
                                                    backend_pid=backend_pid,
                                                    redis_server=redis_server))


async def _stored_record_sizes(url: str, client: redis.Redis) -> dict[str, Any]:
    """Bytes of the session records that a live session has in Redis."""
    before = set(client.scan_iter(match="vmcp:session:*", count=1000))
    async with httpx2.AsyncClient(timeout=30) as http:
        session = McpHttpSession(http, url)
        await session.initialize()
        try:
            new = set(client.scan_iter(match="vmcp:session:*", count=1000)) - before
            sizes = {key.decode(): int(client.memory_usage(key) or 0) for key in new}
            lengths = {key.decode(): int(client.strlen(key)) for key in new
                       if client.type(key) == b"string"}
        finally:
            await session.delete()
    return {"keys": len(sizes), "value_bytes": lengths, "memory_usage_bytes": sizes}


async def _lifecycle_only(url: str, count: int) -> None:
    async with httpx2.AsyncClient(timeout=30) as client:
        with anyio.fail_after(60):
            sessions, _, _ = await _open_sessions(url, count, 4, client)
            await _close_sessions(sessions, 4)


def pin(pids: Sequence[int], cpus: set[int]) -> None:
    """Restrict every thread of these processes to ``cpus`` (best effort)."""
    for pid in pids:
        try:
            tasks = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tasks:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, cpus)


def profile_vmcp(report: Report, plan: Plan, proc: Proc, url: str,
                 others: Sequence[int]) -> None:
    """Sample the Redis-store vmcp process (scenario c's) under the echo load.

    The vmcp process gets a CPU of its own, everything else in the loop (backend, Redis,
    load generator, py-spy) the other(s). Shared, the gateway's socket writes wake the
    backend, which preempts the gateway on the spot, and a sampler that counts runnable
    threads as busy then charges that wait to the write (``SocketStream.send``).
    """
    raw = BENCH / "profile-vmcp.collapsed.txt"
    svg = BENCH / "profile-vmcp.svg"
    measured: LoadResult | None = None
    cpus = os.sched_getaffinity(0)
    pinned = len(cpus) >= 2
    if pinned:
        alone = {max(cpus)}
        pin([proc.pid], alone)
        pin([*others, os.getpid()], cpus - alone)
        report.profile_notes.append(
            f"vmcp pinned to CPU {max(cpus)}; backend, Redis, load generator and py-spy to "
            f"CPU(s) {', '.join(map(str, sorted(cpus - alone)))}.")
    try:
        for output, fmt in ((raw, "raw"), (svg, "flamegraph")):
            print(f"  py-spy ({fmt}) on vmcp pid {proc.pid} ...", flush=True)
            recording = Recording(proc.pid, output, fmt=fmt)
            if pinned:
                pin([recording.pid], cpus - {max(cpus)})
            try:
                time.sleep(1.0)  # py-spy attaches
                result = load(url, plan, "echo", calls=plan.profile_calls,
                              time_limit=plan.time_limit,
                              watch={"gateway": [proc.pid], "backend and Redis": list(others),
                                     "py-spy": [recording.pid]})
                print(f"    {describe(result)}", flush=True)
                measured = measured or result
            finally:
                recording.stop()
            report.profile_files.append(str(output.relative_to(ROOT)))
    finally:
        if pinned:
            pin([proc.pid, *others, os.getpid()], cpus)
    report.profile = summarize(raw)
    if measured is not None and measured.calls:
        report.profile.gateway_cpu_ms_per_call = measured.cpu_ms_per_call("gateway")
        total = measured.cpu_seconds.get("gateway") or 0.0
        if total:
            report.profile.gateway_system_share = (
                measured.cpu_system_seconds.get("gateway", 0.0) / total)


def wait_for_quiet(report: Report, seconds: float, threshold: float = 0.3) -> None:
    """Wait (at most ``seconds``) until other processes use under ``threshold`` CPUs."""
    from bench.load import machine_busy_seconds

    deadline = time.monotonic() + seconds
    while True:
        before, started = machine_busy_seconds(), time.monotonic()
        time.sleep(2.0)
        busy = (machine_busy_seconds() - before) / (time.monotonic() - started)
        if busy < threshold or time.monotonic() >= deadline:
            report.machine["other load before the run (CPUs)"] = f"{busy:.2f}"
            if busy >= threshold:
                print(f"  the machine stays busy ({busy:.2f} CPUs in use); going ahead",
                      flush=True)
            return
        print(f"  waiting for the machine to calm down ({busy:.2f} CPUs in use) ...",
              flush=True)


def concurrency_sweep(report: Report, plan: Plan, url: str, watch: dict[str, list[int]]
                      ) -> list[dict[str, Any]]:
    """Gateway CPU per call and latency against the number of concurrent sessions."""
    rows = []
    for sessions in plan.sweep:
        calls = max(plan.sweep_calls // sessions, 10)
        result: LoadResult = run(lambda sessions=sessions, calls=calls: run_load(
            url, sessions=sessions, calls=calls, tool="echo", warmup=plan.warmup,
            time_limit=plan.time_limit, watch=watch))
        print(f"    C={sessions}: {describe(result)}", flush=True)
        rows.append({"sessions": sessions, **result.as_dict(),
                     "other_load_cores": result.other_load_cores()})
    return rows


# --------------------------------------------------------------------------- machine notes


def machine_notes() -> dict[str, str]:
    def command(*argv: str) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (done.stdout or done.stderr).strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return "?"

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import version

    def pkg(name: str) -> str:
        try:
            return version(name)
        except Exception:
            return "not installed"

    revision = command("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD")
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "vmcp revision": revision + (" with uncommitted changes in src/" if dirty else ""),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "load average at start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "redis-server": command(shutil.which("redis-server") or "redis-server", "--version"),
        "nginx": command(shutil.which("nginx") or "/usr/sbin/nginx", "-v"),
        "packages": ", ".join(f"{p} {pkg(p)}" for p in (
            "mcp", "httpx2", "uvicorn", "uvloop", "starlette", "redis", "fastmcp")),
    }


# --------------------------------------------------------------------------- main


def _exit_on_signal(signum: int, frame: FrameType | None) -> NoReturn:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--setup-contextforge", action="store_true",
                        help="install ContextForge into .cache/contextforge-venv first")
    parser.add_argument("--skip-contextforge", action="store_true")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--revision", metavar="REV",
                        help="run vmcp from this commit's src/ (git archive) instead of the "
                             "work tree's, which may be mid-edit")
    parser.add_argument("--out", type=Path, default=BENCH,
                        help="where RESULTS.md, results.png and results.json go")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    plan = Plan.quick_plan() if args.quick else Plan()
    report = Report(started=time.strftime("%Y-%m-%d %H:%M:%S"), plan=plan,
                    machine=machine_notes())
    began = time.monotonic()
    if args.setup_contextforge and not contextforge.installed():
        print("installing ContextForge into .cache/contextforge-venv ...", flush=True)
        contextforge.install()
    workdir = Path(tempfile.mkdtemp(prefix="vmcp-bench-"))
    print(f"work directory (configs, logs): {workdir}", flush=True)
    if args.revision:
        global VMCP_SOURCE
        VMCP_SOURCE, commit = export_revision(args.revision, workdir)
        report.machine["vmcp revision"] = f"{commit} (--revision {args.revision}; src/ exported)"
        print(f"vmcp from {VMCP_SOURCE}", flush=True)
    try:
        with Processes(workdir) as procs:
            _run_all(procs, workdir, plan, report, args)
    finally:
        report.seconds = time.monotonic() - began
        from bench.report import write_outputs

        write_outputs(report, args.out)
        print(f"wrote {args.out / 'RESULTS.md'} ({report.seconds:.0f}s)", flush=True)
    return 1 if report.failures else 0


def _run_all(procs: Processes, workdir: Path, plan: Plan, report: Report,
             args: argparse.Namespace) -> None:
    (p_backend, p_mem, p_redis, p_r1, p_r2, p_r3, p_nginx, p_fast, p_cf, p_floor,
     p_floor_bare, p_backend_hs, p_vmcp_hs, p_floor_hs, p_workers, p_asgi) = free_ports(16)
    backend_url = f"http://127.0.0.1:{p_backend}/mcp"
    print("starting processes ...", flush=True)
    redis_server = RedisServer(workdir / "redis")
    redis_server.start()
    backend = start_backend(procs, "backend", p_backend)
    one = [("bench", backend_url)]
    vmcp_mem = start_vmcp(procs, workdir, "vmcp-memory", p_mem, "memory", one)
    vmcp_redis = start_vmcp(procs, workdir, "vmcp-redis", p_redis, redis_server.url, one)
    replicas = [start_vmcp(procs, workdir, f"replica-{i + 1}", port, redis_server.url, one)
                for i, port in enumerate((p_r1, p_r2, p_r3))]
    nginx = start_nginx(procs, workdir, p_nginx, (p_r1, p_r2, p_r3))
    fast = start_fastmcp(procs, p_fast, backend_url)
    floor = start_floor(procs, "floor-redis", p_floor, backend_url, redis_server.url)
    floor_bare = start_floor(procs, "floor-no-store", p_floor_bare, backend_url, None)
    asgi_floor = start_asgi_floor(procs, p_asgi, backend_url)
    # 2026-07-28 clients in front of a backend that speaks only the session-based revisions.
    hs_url = f"http://127.0.0.1:{p_backend_hs}/mcp"
    backend_hs = start_backend(procs, "backend-handshake-only", p_backend_hs, "--handshake-only")
    vmcp_hs = start_vmcp(procs, workdir, "vmcp-session-backend", p_vmcp_hs, "memory",
                         [("bench", hs_url)])
    floor_hs = start_floor(procs, "floor-upstream-session", p_floor_hs, hs_url, None,
                           "--upstream-session")
    vmcp_workers = start_vmcp(procs, workdir, "vmcp-2-workers", p_workers, redis_server.url,
                              one, "--workers", "2")
    commands = CommandStats(redis_server.port)
    try:
        wait_http(backend, p_backend, "/mcp", timeout=START_TIMEOUT)
        wait_http(backend_hs, p_backend_hs, "/mcp", timeout=START_TIMEOUT)
        wait_http(floor_hs, p_floor_hs, "/mcp", timeout=START_TIMEOUT)
        for proc, port in ((vmcp_mem, p_mem), (vmcp_redis, p_redis), (vmcp_hs, p_vmcp_hs),
                           *zip(replicas, (p_r1, p_r2, p_r3), strict=True)):
            wait_http(proc, port, "/healthz", timeout=START_TIMEOUT, ok=(200,))
        wait_http(nginx, p_nginx, "/healthz", timeout=START_TIMEOUT, ok=(200,))
        wait_http(vmcp_workers, p_workers, "/healthz", timeout=START_TIMEOUT, ok=(200,))
        wait_workers(p_workers, 2)
        wait_http(fast, p_fast, "/mcp", timeout=START_TIMEOUT)
        wait_http(floor, p_floor, "/mcp", timeout=START_TIMEOUT)
        wait_http(floor_bare, p_floor_bare, "/mcp", timeout=START_TIMEOUT)
        wait_http(asgi_floor, p_asgi, "/mcp", timeout=START_TIMEOUT)
        nginx_workers = children(nginx.pid)
        redis_pid = redis_server.process.pid if redis_server.process else 0

        def url(port: int) -> str:
            return f"http://127.0.0.1:{port}/mcp"

        scenarios = [
            Scenario("a", "direct to the backend", backend_url, {"backend": [backend.pid]}),
            Scenario("b", "vmcp, memory store, 1 process", url(p_mem),
                     {"gateway": [vmcp_mem.pid], "backend": [backend.pid]}),
            Scenario("c", "vmcp, Redis store, 1 process", url(p_redis),
                     {"gateway": [vmcp_redis.pid], "backend": [backend.pid],
                      "redis": [redis_pid]}),
            Scenario("d", "vmcp, Redis, 3 replicas behind nginx", url(p_nginx),
                     {"gateway": [r.pid for r in replicas], "backend": [backend.pid],
                      "redis": [redis_pid], "nginx": nginx_workers}),
            Scenario("e", "FastMCP proxy (create_proxy)", url(p_fast),
                     {"gateway": [fast.pid], "backend": [backend.pid]}, slow=True),
            Scenario("g", "floor: minimal proxy, Redis GETEX per call", url(p_floor),
                     {"gateway": [floor.pid], "backend": [backend.pid], "redis": [redis_pid]}),
            Scenario("h", "floor: minimal proxy, no store", url(p_floor_bare),
                     {"gateway": [floor_bare.pid], "backend": [backend.pid]}),
            Scenario("i", "vmcp, 2026-07-28 clients, backend speaks 2026-07-28", url(p_mem),
                     {"gateway": [vmcp_mem.pid], "backend": [backend.pid]}, modern=True),
            Scenario("j", "vmcp, 2026-07-28 clients, session-based backend",
                     url(p_vmcp_hs), {"gateway": [vmcp_hs.pid], "backend": [backend_hs.pid]},
                     modern=True),
            Scenario("k", "floor of (i): no store, 2026-07-28 calls forwarded",
                     url(p_floor_bare), {"gateway": [floor_bare.pid], "backend": [backend.pid]},
                     modern=True),
            Scenario("l", "floor of (j): one upstream session per backend connection",
                     url(p_floor_hs), {"gateway": [floor_hs.pid], "backend": [backend_hs.pid]},
                     modern=True),
            Scenario("m", "vmcp, Redis store, --workers 2", url(p_workers),
                     {"gateway": [vmcp_workers.pid, *children(vmcp_workers.pid)],
                      "backend": [backend.pid], "redis": [redis_pid]}),
            Scenario("n", "ASGI floor: uvicorn + vmcp's lean pool, no store", url(p_asgi),
                     {"gateway": [asgi_floor.pid], "backend": [backend.pid]}),
        ]
        floors = [s for s in scenarios if s.key in "ghijklmn"]
        for s in scenarios:
            report.titles[s.key] = s.title
        report.titles["f"] = "ContextForge gateway"

        if plan.quiet_wait:
            wait_for_quiet(report, plan.quiet_wait)
        if not plan.quick:
            print("backend response modes:", flush=True)
            backend_modes(procs, plan, report)

        # Redis commands per request on the hot path: scenario c's calls phases.
        hooks = {"echo": (commands.start, commands.stop)}
        idle = CommandStats(redis_server.port)
        idle.start()
        time.sleep(2.0)
        idle.stop()
        report.micro["redis_idle_commands_2s"] = idle.delta
        idle.close()
        for round_no in range(plan.rounds):
            print(f"round {round_no + 1}/{plan.rounds}:", flush=True)
            for s in [*scenarios[:4], *floors]:
                run_scenario(report, plan, s, hooks if s.key == "c" else None)
                if s.key == "c" and commands.delta:
                    calls = report.runs["c"]["echo"][-1]["calls"]
                    report.micro.setdefault("redis_per_call", []).append({
                        "calls": calls,
                        "commands_per_call": {k: v / calls for k, v in commands.delta.items()},
                        "total_per_call": sum(commands.delta.values()) / calls,
                    })
        run_scenario(report, plan, scenarios[4])
        procs.stop(fast)

        _contextforge(procs, workdir, plan, report, args, backend, backend_url, p_cf)

        print("micro-figures:", flush=True)
        print("  concurrency sweep, scenario (b):", flush=True)
        try:
            report.micro["concurrency_sweep"] = concurrency_sweep(
                report, plan, url(p_mem), {"gateway": [vmcp_mem.pid], "backend": [backend.pid]})
        except (LoadError, httpx2.HTTPError, OSError) as exc:
            report.failures.append(f"concurrency sweep: {exc}")
        micro_figures(procs, workdir, plan, report, backend_url=backend_url,
                      redis_server=redis_server, replica_urls=[url(p_r1), url(p_r2)],
                      commands=commands, vmcp_redis_url=url(p_redis),
                      backend_pid=backend.pid, one_session_paths=[
                          ("direct", backend_url, {"backend": [backend.pid]}),
                          ("memory", url(p_mem), {"gateway": [vmcp_mem.pid],
                                                  "backend": [backend.pid]}),
                          ("redis", url(p_redis), {"gateway": [vmcp_redis.pid],
                                                   "backend": [backend.pid],
                                                   "redis": [redis_pid]})])

        if not (args.no_profile or plan.quick):
            print("profile:", flush=True)
            try:
                profile_vmcp(report, plan, vmcp_redis, url(p_redis),
                             [backend.pid, redis_pid])
            except Exception as exc:
                report.failures.append(f"profile: {type(exc).__name__}: {exc}")
                print(f"  failed: {exc}", flush=True)
    except StartError as exc:
        report.failures.append(f"start-up: {exc}")
        print(f"start-up failed: {exc}", flush=True)
    finally:
        commands.close()
        procs.stop_all()
        redis_server.stop()
        for name, status in procs.unexpected_exits:
            report.failures.append(f"{name} exited by itself before the end, status {status}"
                                   " (negative: killed by that signal)")


def _contextforge(procs: Processes, workdir: Path, plan: Plan, report: Report,
                  args: argparse.Namespace, backend: Proc, backend_url: str, port: int) -> None:
    if args.skip_contextforge:
        report.skipped["f"] = "skipped on request (--skip-contextforge)"
        return
    if not contextforge.installed():
        report.skipped["f"] = (
            "not installed: it pins mcp 1.x and cannot share the project's virtualenv "
            "(mcp 2.x); `python -m bench.run --setup-contextforge` installs it into "
            ".cache/contextforge-venv")
        return
    if plan.quick:
        report.skipped["f"] = "not in --quick runs (its start-up alone takes ~20 s)"
        return
    print("starting ContextForge ...", flush=True)
    try:
        cf = contextforge.start(procs, workdir, backend_url, port)
    except Exception as exc:
        report.skipped["f"] = f"could not be set up: {type(exc).__name__}: {exc}"
        report.failures.append(f"(f) set-up: {exc}")
        return
    try:
        run_scenario(report, plan, Scenario(
            "f", "ContextForge gateway", cf.url,
            {"gateway": [cf.proc.pid, *children(cf.proc.pid)], "backend": [backend.pid]},
            tool_prefix="bench-", headers=cf.headers, slow=True))
    finally:
        procs.stop(cf.proc)


if __name__ == "__main__":
    sys.exit(main())
