"""The official MCP conformance suite, run through a gateway in front of the fixture backend.

The fixture backend passes every check on its own (see ``tests/conformance``); the
gateway passes tool, prompt and resource names through unchanged, so any check failing
here is something the gateway changed on the way.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conformance.harness import EXPECTED_GATEWAY_FIGURES, gateway_figures, run_conformance
from tests.support.processes import ManagedProcess

SPEC_VERSION = "2025-11-25"


# The first run installs the suite from npm, which can take a while.
@pytest.mark.timeout(900)
def test_conformance_suite_passes_through_the_gateway_without_failures(
    conformance_gateway: ManagedProcess, tmp_path: Path
) -> None:
    report = run_conformance(conformance_gateway.url, SPEC_VERSION, tmp_path / "results")

    summary = report.describe()
    # passed, failed, warnings, exit code, and the one informational check, exactly
    assert gateway_figures(report) == EXPECTED_GATEWAY_FIGURES, summary
    assert not report.failed_scenarios, summary
