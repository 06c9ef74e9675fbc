"""``python -m chaos --minutes 10 --seed 1``: a chaos run; exit 1 on any violation."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import anyio

from chaos.report import render
from chaos.run import Settings, run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the load runs")
    parser.add_argument("--seed", type=int, default=1, help="seeds the clients and the faults")
    parser.add_argument("--clients", type=int, default=12, help="concurrent clients")
    parser.add_argument("--fault-gap", type=float, nargs=2, default=(2.0, 6.0),
                        metavar=("MIN", "MAX"), help="seconds between two faults")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where logs and the history go (default: a new temporary folder)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vmcp-chaos-"))
    settings = Settings(seconds=args.minutes * 60, seed=args.seed, clients=args.clients,
                        workdir=workdir, fault_gap=(args.fault_gap[0], args.fault_gap[1]))
    result = anyio.run(run, settings)
    history = workdir / "history.jsonl"
    with history.open("w", encoding="utf-8") as out:
        for record in result.records:
            out.write(json.dumps(asdict(record)) + "\n")
        for fault in result.faults:
            out.write(json.dumps({"fault": asdict(fault)}) + "\n")
    with (workdir / "violations.txt").open("w", encoding="utf-8") as out:
        out.writelines(f"{v.kind}: {v.detail}\n" for v in result.violations)
    print(render(result))
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main())
