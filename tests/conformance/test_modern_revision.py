"""The official conformance suite at the stateless revision (``--spec-version 2026-07-28``).

Two legs over the same fixture backend: the backend on its own, which pins the baseline,
and a gateway in front of it passing the backend's names through unchanged
(``aggregation.prefix_format: ""``), which must pass the very same checks. The fixture
needs no flag for this revision: the SDK serves it beside the handshake ones on any
endpoint. The suite's ``subscriptions/listen`` checks run only against a server that
announces list changes in ``server/discover`` (else they are skipped, counting as neither
passed nor failed): the fixture does, and so does the gateway, which must deliver its
backend's changes on its own listen streams for them to pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conformance.harness import SUBSCRIPTION_CHECKS, ConformanceReport, run_conformance
from tests.support.processes import (
    CONFORMANCE_MODULE,
    ManagedProcess,
    gateway_config,
    running_backends,
    running_gateway,
)

SPEC_VERSION = "2026-07-28"


@pytest.fixture(scope="module")
def fixture_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    with running_backends({"conformance": CONFORMANCE_MODULE},
                          tmp_path_factory.mktemp("modern-fixture")) as backends:
        yield backends["conformance"]


@pytest.fixture(scope="module")
def direct_report(fixture_backend: ManagedProcess,
                  tmp_path_factory: pytest.TempPathFactory) -> ConformanceReport:
    return run_conformance(fixture_backend.url, SPEC_VERSION,
                           tmp_path_factory.mktemp("modern-direct") / "results")


def _assert_clean(report: ConformanceReport, leg: str) -> None:
    summary = f"{leg}: {report.passed} passed, {report.failed} failed\n{report.describe()}"
    assert report.scenarios, summary
    assert report.failed == 0, summary
    assert not report.failed_scenarios, summary
    assert report.warnings == 0, summary
    assert report.passed > 0, summary
    assert report.exit_code == 0, summary
    ran = {check: report.statuses.get(check) for check in SUBSCRIPTION_CHECKS}
    assert set(ran.values()) == {"SUCCESS"}, f"{leg}: subscription checks {ran}"


# The first run installs the suite from npm, which can take a while.
@pytest.mark.timeout(900)
def test_the_fixture_backend_passes_every_check_of_the_stateless_revision(
        direct_report: ConformanceReport) -> None:
    _assert_clean(direct_report, "fixture backend directly")


@pytest.mark.timeout(900)
def test_the_gateway_passes_the_same_checks_in_front_of_it(
        fixture_backend: ManagedProcess, direct_report: ConformanceReport,
        tmp_path: Path) -> None:
    config = gateway_config({"conformance": fixture_backend}, session={"store": "memory"},
                            aggregation={"prefix_format": ""})
    with running_gateway(config, tmp_path / "gateway") as gateway:
        report = run_conformance(gateway.url, SPEC_VERSION, tmp_path / "results")

    _assert_clean(report, "through the gateway")
    assert report.passed == direct_report.passed, (
        f"through the gateway {report.passed} passed, directly {direct_report.passed}\n"
        f"{report.describe()}")
