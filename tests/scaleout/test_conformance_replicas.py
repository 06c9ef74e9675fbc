"""The official conformance suite through nginx and three replicas (round robin)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conformance.harness import (
    EXPECTED_GATEWAY_FIGURES,
    SUBSCRIPTION_CHECKS,
    ensure_conformance_suite,
    gateway_figures,
    run_conformance,
)
from tests.scaleout.conftest import Cluster

pytestmark = pytest.mark.slow


def test_conformance_suite_passes_through_three_replicas(
    conformance_cluster: Cluster, tmp_path: Path
) -> None:
    ensure_conformance_suite()
    report = run_conformance(conformance_cluster.url, "2025-11-25", tmp_path / "out")
    # The same figures as one gateway: replicas and round robin change nothing the suite
    # can see (84 checks directly; listings answered as JSON make one informational).
    assert gateway_figures(report) == EXPECTED_GATEWAY_FIGURES, report.describe()
    hits = [conformance_cluster.status(r)["cache"]["loads"] for r in conformance_cluster.replicas]
    assert sum(1 for h in hits if h > 0) >= 2, f"restores per replica: {hits}"


def test_stateless_conformance_with_subscriptions_passes_through_three_replicas(
    conformance_cluster: Cluster, tmp_path: Path
) -> None:
    """A listen stream and the calls that change the lists land on different replicas
    (round robin): each replica's own stream to the backend hears the change."""
    report = run_conformance(conformance_cluster.url, "2026-07-28", tmp_path / "out")
    assert report.failed == 0, report.describe()
    assert report.warnings == 0, report.describe()
    ran = {check: report.statuses.get(check) for check in SUBSCRIPTION_CHECKS}
    assert set(ran.values()) == {"SUCCESS"}, f"subscription checks {ran}\n{report.describe()}"
