"""Gateway CPU per call of two vmcp revisions side by side, in one run, against the floors.

``bench.run --revision`` measures one revision per run, so two runs on a shared machine
compare different moments. This starts the bench backend, one Redis, scenarios (b)
(memory store) and (c) (Redis store) of both the work tree and ``--before`` (default
``main``, exported with ``git archive``), and the floors (g), (h), then runs them all
interleaved for ``--rounds`` rounds with ``bench.run``'s plan (8 sessions x 200 ``echo``,
x 100 ``blob``):

    python -m bench.revisions [--before main] [--rounds 3]

Prints gateway CPU ms per call per round, the median, and its multiple of the floor's
median; raw figures go to ``--json`` when given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from bench import run
from bench.procs import Processes, free_ports, wait_http
from tests.support.redis_server import RedisServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="main")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    plan = run.Plan()
    report = run.Report(started="", plan=plan, machine={})
    workdir = Path(tempfile.mkdtemp(prefix="vmcp-revisions-"))
    before_src, commit = run.export_revision(args.before, workdir)
    ports = free_ports(7)
    with Processes(workdir) as procs:
        redis_server = RedisServer(workdir / "redis")
        redis_server.start()
        try:
            backend = run.start_backend(procs, "backend", ports[0])
            one = [("bench", f"http://127.0.0.1:{ports[0]}/mcp")]
            gateways = {"b-after": run.start_vmcp(procs, workdir, "after-memory", ports[1],
                                                  "memory", one),
                        "c-after": run.start_vmcp(procs, workdir, "after-redis", ports[2],
                                                  redis_server.url, one)}
            run.VMCP_SOURCE = before_src
            gateways["b-before"] = run.start_vmcp(procs, workdir, "before-memory", ports[3],
                                                  "memory", one)
            gateways["c-before"] = run.start_vmcp(procs, workdir, "before-redis", ports[4],
                                                  redis_server.url, one)
            run.VMCP_SOURCE = None
            floors = {"g": run.start_floor(procs, "floor-redis", ports[5], one[0][1],
                                           redis_server.url),
                      "h": run.start_floor(procs, "floor-no-store", ports[6], one[0][1], None)}
            port_of = dict(zip(["b-after", "c-after", "b-before", "c-before", "g", "h"],
                               ports[1:], strict=True))
            wait_http(backend, ports[0], "/mcp", timeout=run.START_TIMEOUT)
            for key, proc in gateways.items():
                wait_http(proc, port_of[key], "/healthz", timeout=run.START_TIMEOUT, ok=(200,))
            for key, proc in floors.items():
                wait_http(proc, port_of[key], "/mcp", timeout=run.START_TIMEOUT)
            scenarios = [run.Scenario(key, key, f"http://127.0.0.1:{port_of[key]}/mcp",
                                      {"gateway": [proc.pid], "backend": [backend.pid]})
                         for key, proc in [*gateways.items(), *floors.items()]]
            for round_no in range(args.rounds):
                shift = round_no % len(scenarios)
                for scenario in scenarios[shift:] + scenarios[:shift]:
                    run.run_scenario(report, plan, scenario)
        finally:
            redis_server.stop()
    if args.json:
        args.json.write_text(json.dumps(report.runs))
    print(f"before = {args.before} ({commit}), after = the work tree")
    for tool in ("echo", "blob"):
        cpu = {key: [r["cpu_seconds"]["gateway"] / r["calls"] * 1000 for r in rounds[tool]]
               for key, rounds in report.runs.items() if tool in rounds}
        for key, figures in cpu.items():
            floor = "h" if key.startswith(("b", "h")) else "g"
            ratio = statistics.median(figures) / statistics.median(cpu[floor])
            print(f"{tool} {key:9} rounds {' '.join(f'{f:.2f}' for f in figures)}  median "
                  f"{statistics.median(figures):.2f} ms  = {ratio:.1f}x floor ({floor})")


if __name__ == "__main__":
    main()
