"""The conformance fixture backend, run on its own, passes the whole suite.

This pins the baseline: when the suite later runs through the gateway, any
check that fails there is the gateway's doing, not the fixture's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conformance.harness import run_conformance, running_backend

SPEC_VERSION = "2025-11-25"


# The first run installs the suite from npm, which can take a while.
@pytest.mark.timeout(900)
def test_fixture_backend_passes_every_check(tmp_path: Path) -> None:
    with running_backend("examples.backends.conformance") as backend:
        report = run_conformance(backend.url, SPEC_VERSION, tmp_path / "results")

    summary = report.describe()
    assert report.exit_code == 0, summary
    assert report.failed == 0, summary
    assert report.passed > 0, summary
    assert report.warnings == 0, summary
    assert report.scenarios, summary
    assert not report.failed_scenarios, summary
