"""A short chaos run with a fixed seed: every fault kind once, and not one violation.

The same harness as ``python -m chaos`` (three replicas behind nginx, Redis, three
backends, clients of three identities), for 25 s of load, or until every kind of fault
has hit it; the checker it ends with is itself tested in ``test_checker.py``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from chaos.faults import WEIGHTS
from chaos.history import CALL, INITIALIZE, STATELESS, STRANGER, STREAM
from chaos.report import render
from chaos.run import Settings, run

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(180), pytest.mark.timing]

SEED = 7
LOAD_SECONDS = 25.0
CLIENTS = 6


async def test_a_short_chaos_run_with_every_fault_kind_has_no_violation(tmp_path: Path) -> None:
    result = await run(Settings(seconds=LOAD_SECONDS, seed=SEED, clients=CLIENTS,
                                workdir=tmp_path, fault_gap=(0.3, 1.0)))
    report = render(result)
    kinds = Counter(r.kind for r in result.records)
    assert {INITIALIZE, CALL, STREAM, STRANGER, STATELESS} <= set(kinds), report
    assert sum(kinds.values()) > 150, report
    assert {f.kind for f in result.faults} == set(WEIGHTS), report
    assert result.violations == [], report
