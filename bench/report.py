"""Writing a benchmark run out: ``RESULTS.md``, ``results.png`` and ``results.json``."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.run import Report

SCENARIO_ORDER = "abcdefghijklmn"
OTHER_CPU = ("redis", "nginx")


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _cpu_ms(run: dict[str, Any], label: str) -> float | None:
    seconds = run["cpu_seconds"].get(label)
    if seconds is None or not run["calls"]:
        return None
    return 1000 * seconds / run["calls"]


def _gateway_cpu(run: dict[str, Any]) -> str:
    ms = _cpu_ms(run, "gateway")
    if ms is None:
        return "-"
    total = run["cpu_seconds"].get("gateway") or 0.0
    system = (run.get("cpu_system_seconds") or {}).get("gateway")
    share = f" ({100 * system / total:.0f}%)" if total and system is not None else ""
    return f"{ms:.2f}{share}"


def _ratio(value: float | None, base: float | None) -> str:
    if not value or not base:
        return "-"
    ratio = value / base
    return f"{ratio:.2f}" if ratio < 10 else f"{ratio:.0f}"


def _table(report: Report, tool: str) -> list[str]:
    base_a = report.best("a", tool)
    base_e = report.best("e", tool)
    lines = [
        "| scenario | calls | calls/s | p50 ms | p90 ms | p99 ms | gateway CPU ms/call "
        "(kernel share) "
        "| backend CPU ms/call | Redis + nginx CPU ms/call | load generator CPU ms/call "
        "| throughput ÷ (a) | throughput ÷ (e) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for key in SCENARIO_ORDER:
        run = report.best(key, tool)
        title = f"({key}) {report.titles.get(key, '')}"
        if run is None:
            reason = report.skipped.get(key, "no result (see Failures)")
            lines.append(f"| {title} | {reason} |  |  |  |  |  |  |  |  |  |  |")
            continue
        other = [_cpu_ms(run, label) for label in OTHER_CPU]
        other_ms = sum(v for v in other if v is not None) if any(
            v is not None for v in other) else None
        marker = " (time-limited)" if run.get("stopped_by_time_limit") else ""
        lines.append(
            f"| {title} | {run['calls']}{marker} | {_fmt(run['calls_per_second'], 0)} "
            f"| {_fmt(run['p50_ms'])} | {_fmt(run['p90_ms'])} | {_fmt(run['p99_ms'])} "
            f"| {_gateway_cpu(run)} | {_fmt(_cpu_ms(run, 'backend'), 2)} "
            f"| {_fmt(other_ms, 2)} | {_fmt(_cpu_ms(run, 'load generator'), 2)} "
            f"| {_ratio(run['calls_per_second'], base_a and base_a['calls_per_second'])} "
            f"| {_ratio(run['calls_per_second'], base_e and base_e['calls_per_second'])} |")
    return lines


def _headline(report: Report) -> list[str]:
    out = []
    a, e = report.best("a", "echo"), report.best("e", "echo")
    for key in "bcdijm":
        run = report.best(key, "echo")
        if run is None:
            continue
        parts = []
        if a:
            parts.append(f"{run['calls_per_second'] / a['calls_per_second']:.2f}x the "
                         "direct throughput")
        if e:
            parts.append(f"{run['calls_per_second'] / e['calls_per_second']:.0f}x FastMCP's "
                         "proxy")
        gateway = _cpu_ms(run, "gateway")
        backend = _cpu_ms(run, "backend")
        floor = report.best(FLOOR_OF[key], "echo")
        floor_cpu = _cpu_ms(floor, "gateway") if floor else None
        if gateway and floor_cpu:
            parts.append(f"{gateway / floor_cpu:.2f}x the floor's gateway CPU per call "
                         f"(({FLOOR_OF[key]}) {floor_cpu:.2f} ms)")
        asgi = report.best("n", "echo")
        asgi_cpu = _cpu_ms(asgi, "gateway") if asgi else None
        if gateway and asgi_cpu and FLOOR_OF[key] in "hk":  # both without a store
            parts.append(f"{gateway / asgi_cpu:.2f}x the ASGI floor's ((n) {asgi_cpu:.2f} ms)")
        if gateway:
            parts.append(f"{gateway:.2f} ms of gateway CPU per call (≈ {1000 / gateway:.0f} "
                         "calls/s per gateway core"
                         + (f"; {gateway / backend:.1f}x what the backend itself spends per "
                            "call" if backend else "") + ")")
        out.append(f"* **({key}) {report.titles[key]}**: " + ", ".join(parts) + ".")
    return out


def _micro(report: Report) -> list[str]:
    m = report.micro
    out: list[str] = []
    per_call = m.get("redis_per_call") or []
    if per_call:
        latest = per_call[-1]
        breakdown = ", ".join(f"`{k}` {v:.2f}" for k, v in sorted(latest["commands_per_call"]
                                                                   .items()))
        out.append(f"* **Redis round trips per `tools/call`** (scenario c, calls phase, "
                   f"{latest['calls']} calls): **{latest['total_per_call']:.2f}** "
                   f"({breakdown}). All rounds: "
                   + ", ".join(f"{r['total_per_call']:.2f}" for r in per_call) + ".")
    idle = m.get("redis_idle_commands_2s")
    if idle is not None:
        out.append(f"* Redis commands from 5 idle vmcp processes over 2 s (background noise "
                   f"in the count above): {sum(idle.values())}"
                   + (f" {idle}" if idle else "") + ".")
    life = m.get("redis_per_session_lifecycle")
    if life:
        breakdown = ", ".join(f"`{k}` {v:.1f}" for k, v in sorted(
            life["commands_per_session"].items()))
        out.append(f"* Redis commands per whole session with no calls (initialize + "
                   f"initialized + DELETE, {life['sessions']} sessions): "
                   f"**{life['total_per_session']:.1f}** ({breakdown}).")
    record = m.get("stored_record")
    if record:
        lengths = record.get("value_bytes") or {}
        out.append(f"* Stored per session in Redis: {record['keys']} key(s); value "
                   + ", ".join(f"{v} bytes" for v in lengths.values())
                   + " (JSON, parsed on every request's liveness check); Redis `MEMORY "
                   "USAGE` " + ", ".join(f"{v} bytes" for v in
                                         record["memory_usage_bytes"].values()) + ".")
    restore = m.get("restore_latency")
    if restore:
        out.append(
            f"* **Restore on a cold replica vs a cache hit** (two replicas on one Redis, "
            f"{restore['trials']} sessions, sequential, each called once where it was "
            "created, so its upstream session is open): first call on the other replica "
            f"p50 **{restore['cold_p50_ms']:.1f} ms** (p90 {restore['cold_p90_ms']:.1f}); "
            f"later calls there p50 **{restore['hit_p50_ms']:.1f} ms** (p90 "
            f"{restore['hit_p90_ms']:.1f}); back on the creating replica p50 "
            f"{restore['creating_replica_p50_ms']:.1f} ms.")
    mem = m.get("memory_per_session")
    if mem:
        out.append(
            f"* **Memory per live session**: **{mem['gateway_kib_per_session']:.1f} KiB** "
            f"(RSS of a fresh vmcp process, memory store, {mem['gateway_rss_before_mib']:.1f}"
            f" → {mem['gateway_rss_after_mib']:.1f} MiB over {mem['sessions']} idle "
            f"sessions; {mem['gateway_rss_after_delete_mib']:.1f} MiB after deleting them). "
            + (f"The backend's own cost per session, for scale: "
               f"{mem['backend_kib_per_session']:.1f} KiB."
               if mem["backend_kib_per_session"] > 0.5 else
               "Idle sessions cost the backend nothing: upstream sessions open on first "
               "use."))
    creation = m.get("session_creation")
    if creation:
        out.append("* **Session creation** (initialize + notifications/initialized, "
                   f"{report.plan.sessions} concurrent clients):")
        out.append("")
        out.append("  | gateway | sessions | sessions/s | initialize p50 ms | p99 ms "
                   "| DELETEs/s |")
        out.append("  |---|--:|--:|--:|--:|--:|")
        for title, r in creation.items():
            out.append(f"  | {title} | {r['sessions']} | {r['sessions_per_second']:.0f} "
                       f"| {r['initialize_p50_ms']:.1f} | {r['initialize_p99_ms']:.1f} "
                       f"| {r['deletes_per_second']:.0f} |")
    sweep = m.get("concurrency_sweep")
    if sweep:
        out.append("* **Gateway CPU per call against concurrency** (scenario b, echo; "
                   "pooled backend connections grow with it):")
        out.append("")
        out.append("  | concurrent sessions | calls | calls/s | p50 ms | p99 ms "
                   "| gateway CPU ms/call | backend CPU ms/call | other load (CPUs) |")
        out.append("  |--:|--:|--:|--:|--:|--:|--:|--:|")
        for r in sweep:
            out.append(f"  | {r['sessions']} | {r['calls']} | {r['calls_per_second']:.0f} "
                       f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
                       f"| {_fmt(_cpu_ms(r, 'gateway'), 2)} "
                       f"| {_fmt(_cpu_ms(r, 'backend'), 2)} "
                       f"| {_fmt(_other_load(r), 2)} |")
    out += _one_session(m)
    out += _stored(m)
    return out


PATH_TITLES = {"direct": "direct to the backend", "memory": "vmcp, memory store",
               "redis": "vmcp, Redis store"}
FLAT_RATIO = 1.25
"""A latency ratio up to this counts as flat in the stored-sessions figure."""


def _one_session(m: dict[str, Any]) -> list[str]:
    figure = m.get("one_session_latency")
    if not figure:
        return []
    paths = figure["paths"]
    out = [f"* **Added latency at one session** (C=1: one session, `tools/call` echo, "
           f"{figure['calls']} calls after {figure['warmup']} warm-up calls, per path and "
           f"round; {figure['rounds']} rounds, interleaved, each starting at another path; "
           "best and median of the rounds' p50/p90; added = vmcp - direct):", "",
           "  | path | p50 ms best | p50 ms median | p90 ms best | p90 ms median "
           "| added p50 ms best | added p50 ms median | added p50 per round | target "
           "| met (best / median) |",
           "  |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for key, f in paths.items():
        target = f.get("added_p50_target_ms")
        met = (f"{'yes' if f['meets_target_best'] else 'no'} / "
               f"{'yes' if f['meets_target_median'] else 'no'}") if target is not None else ""
        out.append(
            f"  | {PATH_TITLES.get(key, key)} | {f['p50_best_ms']:.2f} "
            f"| {f['p50_median_ms']:.2f} | {f['p90_best_ms']:.2f} | {f['p90_median_ms']:.2f} "
            f"| {_fmt(f.get('added_p50_best_ms'), 2)} "
            f"| {_fmt(f.get('added_p50_median_ms'), 2)} "
            f"| {', '.join(f'{v:.2f}' for v in f.get('added_p50_per_round_ms', []))} "
            f"| {'≤ ' + _fmt(target, 1) if target is not None else ''} | {met} |")
    loads = [r["other_load_cores"] for rows in figure["runs"].values() for r in rows]
    out += ["", f"  Other load during these runs: {min(loads):.2f}-{max(loads):.2f} CPUs."]
    return out


def _stored(m: dict[str, Any]) -> list[str]:
    figure = m.get("stored_sessions")
    if not figure:
        return []
    levels = figure["levels"]
    out = [f"* **Latency against stored sessions** (one vmcp process on Redis, "
           f"`session.cache_capacity: {figure['capacity']}`; {figure['clients']} concurrent "
           f"clients at each level: *hits* = each client on its own cached session, "
           f"{figure['hit_calls']} calls; *random* = each of {figure['random_calls']} calls "
           "per client on a session drawn at random among all stored ones, so beyond the "
           "capacity mostly misses: a restore from the record, and an LRU eviction):", "",
           "  | stored sessions | how they were added | hits p50 ms | hits p90 ms "
           "| random p50 ms | random p90 ms | random: misses / calls | evictions "
           "| gateway CPU ms/call (hits / random) | other load (CPUs) | gateway RSS MiB "
           "| Redis used MiB |",
           "  |--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in levels:
        how = []
        if r["created_over_http"]:
            how.append(f"{r['created_over_http']:,} over HTTP "
                       f"({r['http_sessions_per_second']:.0f}/s)")
        if r["written_directly"]:
            how.append(f"{r['written_directly']:,} written into Redis "
                       f"({r['write_seconds']:.2f} s)")
        hits, rand = r["hits"], r["random"]
        errors = hits["errors"] + rand["errors"]
        out.append(
            f"  | {r['stored']:,} ({r['keys_in_redis']:,} keys) | {'; '.join(how) or '-'} "
            f"| {hits['p50_ms']:.1f} | {hits['p90_ms']:.1f} | {rand['p50_ms']:.1f} "
            f"| {rand['p90_ms']:.1f} "
            f"| {rand['cache'].get('cache_misses', 0):.0f} / {rand['calls']}"
            f"{f' ({errors} errors)' if errors else ''} "
            f"| {rand['cache'].get('cache_evictions', 0):.0f} "
            f"| {_fmt(hits['cpu_ms_per_call'].get('gateway'), 2)} / "
            f"{_fmt(rand['cpu_ms_per_call'].get('gateway'), 2)} "
            f"| {_fmt(hits['other_load_cores'], 2)} / {_fmt(rand['other_load_cores'], 2)} "
            f"| {r['gateway_rss_mib']:.0f} | {r['redis_used_memory_mib']:.1f} |")
    first, last = levels[0], levels[-1]
    ratios = figure["ratios_last_vs_first"]

    def verdict(kind: str) -> str:
        worst = max(ratios[f"{kind}_p50"], ratios[f"{kind}_p90"])
        return "flat" if worst <= FLAT_RATIO else "not flat"

    out += ["", f"  {last['stored']:,} vs {first['stored']:,} stored: hits p50 "
            f"{ratios['hits_p50']:.2f}x, p90 {ratios['hits_p90']:.2f}x (**{verdict('hits')}**"
            f"; flat = both ratios ≤ {FLAT_RATIO}); random p50 {ratios['random_p50']:.2f}x, "
            f"p90 {ratios['random_p90']:.2f}x (**{verdict('random')}**). At "
            f"{last['stored']:,} stored, random p50 is "
            f"{last['random']['p50_ms'] / last['hits']['p50_ms']:.2f}x the hits' p50 of the "
            "same level (the misses there are restores)."]
    written = sum(r["written_directly"] for r in levels)
    rates = [r["http_sessions_per_second"] for r in levels if r["created_over_http"]]
    if written and rates:
        out += ["", f"  Sessions were created over HTTP (initialize + initialized, "
                f"{figure['concurrency']} at once) up to {figure['http_max']:,}; at "
                f"{rates[-1]:.0f}/s the remaining {written:,} would have taken "
                f"≈ {written / rates[-1]:.0f} s more, so they were written into Redis "
                "directly instead: byte-for-byte copies of a real session's record "
                "(identity `unauthenticated`, backend list; no upstream session yet, as "
                "they open on first use) under new ids, "
                f"with that process's key prefix (`{figure.get('key_prefix', '?')}`) and the "
                "record's TTL. They are restorable like sessions another replica created; "
                "each opens its upstream session at its first call."]
    return out


def _profile(report: Report) -> list[str]:
    p = report.profile
    if p is None:
        return ["Not profiled in this run."]
    total = max(p.samples, 1)
    out = [f"py-spy, {p.samples} on-CPU samples of the scenario-(c) vmcp process (Redis "
           f"store) under the echo load; files (not kept in git): "
           + ", ".join(f"`{f}`" for f in report.profile_files) + ". "
           + " ".join(report.profile_notes)
           + (" Pinned so that the gateway is not preempted by the processes its writes wake "
              "(on shared cores a sampler that counts runnable threads as busy charges that "
              "wait to `SocketStream.send`, the socket write)." if report.profile_notes
              else ""), "",
           "Where the CPU went (each sample charged to the innermost frame of a known "
           "library; standard-library leaves go to their caller). A Python frame's share "
           "includes the C code and system calls below it: a socket write on loopback "
           "also runs the receiving side's TCP processing and wake-up."
           + (f" During this run the process used {p.gateway_cpu_ms_per_call:.2f} ms of CPU "
              f"per call, {100 * (p.gateway_system_share or 0):.0f}% of it in the kernel."
              if p.gateway_cpu_ms_per_call else ""), "",
           "| part | share | ≈ ms of CPU per call |", "|---|--:|--:|"]
    per_call = p.gateway_cpu_ms_per_call
    out += [f"| {name} | {100 * n / total:.1f}% | "
            f"{_fmt(per_call * n / total if per_call else None, 2)} |"
            for name, n in p.categories]
    under = sum(n for _, n in p.paid_by_vmcp)
    out += ["", f"Samples with vmcp code on the stack ({100 * under / total:.0f}% of all; the "
            "rest is uvicorn parsing requests and the event loop before vmcp is entered), by "
            "what the innermost vmcp frame had called:", "",
            "| called from vmcp | share of all samples | ≈ ms of CPU per call |",
            "|---|--:|--:|"]
    out += [f"| {name} | {100 * n / total:.1f}% | "
            f"{_fmt(per_call * n / total if per_call else None, 2)} |"
            for name, n in p.paid_by_vmcp]
    out += ["", "Hottest lines (self time):", "", "| function | where | share |",
            "|---|---|--:|"]
    out += [f"| `{f}` | `{w}` | {100 * n / total:.1f}% |" for f, w, n in p.self_lines]
    out += ["", "vmcp functions, inclusive (time in them and everything they call):", "",
            "| function | file | share |", "|---|---|--:|"]
    out += [f"| `{f}` | `{w}` | {100 * n / total:.1f}% |" for f, w, n in p.vmcp_inclusive]
    out += ["", "vmcp lines charged with everything below them that is not vmcp "
            "(library calls included):", "", "| function | where | share |", "|---|---|--:|"]
    out += [f"| `{f}` | `{w}` | {100 * n / total:.1f}% |" for f, w, n in p.vmcp_self_lines]
    return out


def _other_load(run: dict[str, Any]) -> float | None:
    busy, seconds = run.get("machine_busy_seconds"), run.get("seconds")
    if busy is None or not seconds or math.isnan(busy):
        return None
    return float((busy - sum(run["cpu_seconds"].values())) / seconds)


def _rounds(report: Report) -> list[str]:
    out = ["Other load = CPUs in use, on average over the calls phase, by processes outside "
           "the benchmark (this machine is shared): it is what makes rounds differ.", "",
           "| scenario | run | calls/s per round | other load per round (CPUs) |",
           "|---|---|---|---|"]
    for key in SCENARIO_ORDER:
        for tool, runs in report.runs.get(key, {}).items():
            out.append(f"| ({key}) | {tool} | "
                       + ", ".join(f"{r['calls_per_second']:.0f}" for r in runs) + " | "
                       + ", ".join(_fmt(_other_load(r), 2) for r in runs) + " |")
    return out


def _modes(report: Report) -> list[str]:
    if not report.modes:
        return ["Not measured in this run (`--quick`)."]
    out = ["| SDK server mode | calls/s | p50 ms | p99 ms | backend CPU ms/call |",
           "|---|--:|--:|--:|--:|"]
    for m in report.modes:
        out.append(f"| {m['mode']} | {m['calls_per_second']:.0f} | {m['p50_ms']:.1f} "
                   f"| {m['p99_ms']:.1f} | {_fmt(_cpu_ms(m, 'backend'), 2)} |")
    return out


def markdown(report: Report) -> str:
    plan = report.plan
    lines = [
        "# What vmcp costs per call",
        "",
        f"Produced by `python -m bench.run{' --quick' if plan.quick else ''}` "
        f"({report.machine.get('date', report.started)}, {report.seconds:.0f} s). Generated "
        "file: re-run the command rather than editing it.",
        "",
        f"Every scenario runs against the same bench backend process (`bench/backend.py`: "
        f"official SDK, `echo` and a 5 KiB `blob`). Load: {plan.sessions} concurrent "
        f"sessions, each `initialize`, {plan.warmup} warm-up calls, then up to "
        f"{plan.echo_calls} `echo` calls (or {plan.blob_calls} `blob` calls) back to back, "
        f"then `DELETE`; figures cover the calls phase only. Scenarios (a)-(d) and the "
        "floors and 2026-07-28 scenarios (g)-(n) ran "
        f"{plan.rounds}x interleaved; the round with the best throughput is shown (all "
        "rounds below). (e) and (f) are bounded by time "
        f"({plan.slow_time_limit:g} s per run) rather than by count.",
        "",
        "Set-up of each scenario:",
        "",
        "* (a) the bench backend itself: official SDK `MCPServer`, stateful, "
        "`json_response=True`, uvicorn with uvloop and httptools.",
        "* (b)-(d) `vmcp serve` with a generated YAML file, one backend, "
        "`prefix_format: \"\"` (tool names pass through), log level warning. (d): nginx, "
        "`worker_processes 1`, an upstream of the three replicas (round robin, "
        "`keepalive 64`), `proxy_http_version 1.1`, `Connection \"\"`, `Host $http_host`, "
        "`proxy_buffering off`, `proxy_request_buffering off`; every request of a session "
        "goes to the next replica, so each session is restored on every replica once "
        "(during the warm-up calls) and then served from each replica's cache.",
        "* (e) `fastmcp.server.create_proxy(url)` (FastMCP 4 has no `FastMCP.as_proxy`; "
        "this is its documented replacement), served with `json_response=True` on uvicorn. "
        "With a URL target FastMCP builds a fresh backend client, i.e. a new backend "
        "session, for every request it relays (`fastmcp/server/providers/proxy.py`, "
        "`_create_client_factory`), which is why its backend CPU per call is several times "
        "the direct figure.",
        "* (f) ContextForge (`mcp-contextforge-gateway`, own virtualenv): SQLite, in-memory "
        "cache, backend registered with `POST /gateways`, tools bundled in a virtual server "
        "(`POST /servers`), clients on `/servers/<id>/mcp` with a bearer token; changed from "
        "its defaults only to allow a loopback backend and to switch its rate limiter off "
        "(100 tool requests per minute by default).",
        "* (g), (h) the floor, `bench/floor.py`: parse HTTP, one Redis `GETEX` (g) or none "
        "(h), forward and relay bytes over a kept-alive backend connection.",
        "* (i), (j) 2026-07-28 clients (no `initialize`, no session, the revision's routing "
        "headers and `_meta` envelope on every call): (i) the memory-store vmcp of (b) in "
        "front of the bench backend, which serves that revision itself; (j) another vmcp in "
        "front of a second bench backend started with `--handshake-only` (it refuses the "
        "stateless revision), so vmcp holds an upstream session for the callers. (k) is "
        "(h) forwarding those calls; (l) the floor holding one upstream session per backend "
        "connection (`--upstream-session`), forwarding each call's bytes on it.",
        "* (m) `vmcp serve --workers 2` on the Redis store: two replica processes accepting "
        "on one port (gateway CPU = both workers and their supervisor); compare with (c), "
        "the same with one process.",
        "* (n) the ASGI floor, `bench/asgi_floor.py`: uvicorn (uvloop, httptools) running one "
        "raw ASGI app that forwards each request's bytes through vmcp's lean HTTP/1.1 pool "
        "and relays the answer's, no store: what vmcp's own stack costs before any of "
        "vmcp's work. vmcp ÷ (n) is vmcp's own share; (n) ÷ (h) is the stack's.",
        "",
        "## Headline (echo)",
        "",
        *_headline(report),
        "",
        f"## echo ({plan.sessions} sessions x {plan.echo_calls} calls)",
        "",
        *_table(report, "echo"),
        "",
        f"## blob, 5 KiB result ({plan.sessions} sessions x {plan.blob_calls} calls)",
        "",
        *_table(report, "blob"),
        "",
        "CPU columns are CPU seconds (utime + stime from `/proc/<pid>/stat`, 10 ms ticks) "
        "used during the calls phase divided by the calls made. Gateway = the vmcp "
        "process(es), FastMCP's or ContextForge's process. All processes share 2 cores, "
        "so the load generator's and the backend's CPU limit throughput too.",
        "",
        "Initialize latency p50 (ms), for reference: "
        + ", ".join(f"({k}) {_fmt(r['initialize_p50_ms'])}" for k in SCENARIO_ORDER
                    if (r := report.best(k, "echo")) is not None) + ".",
        "",
        "## Micro-figures",
        "",
        *_micro(report),
        "",
        "## Profile of one vmcp process under load",
        "",
        *_profile(report),
        "",
        "## Backend response mode",
        "",
        "The bench backend serves stateful sessions with `json_response=True`; measured "
        "direct, same load as the echo run:",
        "",
        *_modes(report),
        "",
        "## All rounds",
        "",
        *_rounds(report),
        "",
        "## Skipped and failed",
        "",
        *([f"* ({k}) {v}" for k, v in report.skipped.items()]
          + [f"* {f}" for f in report.failures] or ["Nothing."]),
        "",
        "## Machine",
        "",
        *[f"* {k}: {v}" for k, v in report.machine.items()],
        "",
    ]
    return "\n".join(lines)


SHORT_LABELS = {"a": "(a) direct", "b": "(b) vmcp\nmemory", "c": "(c) vmcp\nRedis",
                "d": "(d) 3 vmcp\n+ nginx", "e": "(e) FastMCP\nproxy",
                "f": "(f) Context-\nForge", "g": "(g) floor\nRedis", "h": "(h) floor\nno store",
                "i": "(i) vmcp\n07-28", "j": "(j) vmcp 07-28\nsession bk",
                "k": "(k) floor\n07-28", "l": "(l) floor 07-28\nsession bk",
                "m": "(m) vmcp Redis\n2 workers", "n": "(n) ASGI\nfloor"}
FLOOR_OF = {"b": "h", "c": "g", "d": "g", "i": "k", "j": "l", "m": "g"}
"""Which floor each vmcp scenario is compared with: the memory store does no store round
trip, so its floor is the proxy without one; a 2026-07-28 client has no session, so its
floor has no store either (and holds an upstream session for a session-based backend)."""


def plot(report: Report, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -r bench/requirements.txt)"
    keys = [k for k in SCENARIO_ORDER if report.best(k, "echo") or report.best(k, "blob")]
    if not keys:
        return "no results to plot"
    labels = [SHORT_LABELS[k] for k in keys]
    fig, grid = plt.subplots(2, 2, figsize=(13, 9))
    xs = list(range(len(keys)))
    width = 0.38
    for ax, what, digits in ((grid[0][0], "calls_per_second", "%.0f"),
                             (grid[0][1], "gateway", "%.2f")):
        for offset, tool in ((-width / 2, "echo"), (width / 2, "blob")):
            values = []
            for k in keys:
                r = report.best(k, tool)
                value = (r["calls_per_second"] if what == "calls_per_second"
                         else _cpu_ms(r, "gateway")) if r else None
                values.append(value or 0.0)
            bars = ax.bar([x + offset for x in xs], values, width, label=tool)
            ax.bar_label(bars, fmt=digits, fontsize=7)
        ax.set_xticks(xs, labels, fontsize=8)
        ax.legend()
    grid[0][0].set_title("throughput (calls/s, higher is better)")
    grid[0][1].set_title("gateway CPU per call (ms, log scale, lower is better)")
    grid[0][1].set_yscale("log")
    grid[0][1].set_ylim(bottom=0.1)
    if "a" in keys:
        grid[0][1].text(keys.index("a"), 0.15, "no gateway", ha="center", fontsize=8)
    for ax, tool in ((grid[1][0], "echo"), (grid[1][1], "blob")):
        for i, (pct, offset) in enumerate((("p50", -0.27), ("p90", 0.0), ("p99", 0.27))):
            values = [(r[f"{pct}_ms"] if (r := report.best(k, tool)) else 0) for k in keys]
            ax.bar([x + offset for x in xs], values, 0.27, label=pct, color=f"C{i + 2}")
        ax.set_yscale("log")
        ax.set_title(f"{tool} latency (ms, log scale, lower is better)")
        ax.set_xticks(xs, labels, fontsize=8)
        ax.legend()
    fig.suptitle(f"vmcp benchmark: {report.plan.sessions} concurrent sessions, "
                 f"{report.machine.get('nproc', '?')} cores shared by every process, "
                 f"{report.machine.get('date', '')}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def write_outputs(report: Report, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    problem = plot(report, out / "results.png")
    if problem:
        report.failures.append(f"results.png: {problem}")
    (out / "RESULTS.md").write_text(markdown(report))
    data = dataclasses.asdict(report)
    (out / "results.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
