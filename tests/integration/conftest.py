"""Real processes shared by the end-to-end tests: the demo backends, a gateway in front of
them, and the conformance fixture backend with its own gateway.

Everything here is session-scoped, so each process starts once per run. A failing test
gets the tail of every process log it may have touched attached to its report.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

from tests.support import processes
from tests.support.processes import (
    CONFORMANCE_MODULE,
    GATEWAY_MAX_BODY_BYTES,
    NOTES_MODULE,
    WEATHER_MODULE,
    ManagedProcess,
    gateway_config,
    running_backends,
    running_gateway,
)

_FIRST_PROCESS = pytest.StashKey[int]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[
        None, object, object]:
    item.stash[_FIRST_PROCESS] = len(processes.STARTED)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[
        None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for managed in _processes_of(item):
            report.sections.append(
                (f"log tail: {managed.describe()}", managed.log_tail() or "<empty>"))
    return report


def _processes_of(item: pytest.Item) -> list[ManagedProcess]:
    """The processes a test used: those of its fixtures, and any it started itself."""
    found: list[ManagedProcess] = []
    values = list(getattr(item, "funcargs", {}).values())
    for value in values:
        candidates = value.values() if isinstance(value, dict) else [value]
        found += [c for c in candidates if isinstance(c, ManagedProcess) and c not in found]
    first = item.stash.get(_FIRST_PROCESS, len(processes.STARTED))
    found += [p for p in processes.STARTED[first:] if p not in found]
    return found


@pytest.fixture(scope="session")
def demo_backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        dict[str, ManagedProcess]]:
    """The notes and weather example backends, keyed by the names the gateway gives them."""
    modules = {"notes": NOTES_MODULE, "weather": WEATHER_MODULE}
    with running_backends(modules, tmp_path_factory.mktemp("demo-backends")) as backends:
        yield backends


@pytest.fixture(scope="session")
def gateway(demo_backends: dict[str, ManagedProcess],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """One ``vmcp serve`` (memory store) in front of both demo backends."""
    config = gateway_config(
        demo_backends,
        server={"max_body_bytes": GATEWAY_MAX_BODY_BYTES},
        session={"store": "memory"},
    )
    with running_gateway(config, tmp_path_factory.mktemp("gateway")) as process:
        yield process


@pytest.fixture(scope="session")
def conformance_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """The backend serving the fixtures the official conformance suite asks for."""
    with running_backends({"conformance": CONFORMANCE_MODULE},
                          tmp_path_factory.mktemp("conformance-backend")) as backends:
        yield backends["conformance"]


@pytest.fixture(scope="session")
def conformance_gateway(conformance_backend: ManagedProcess,
                        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """A gateway in front of the conformance backend alone, its names passed through."""
    config = gateway_config(
        {"conformance": conformance_backend},
        session={"store": "memory"},
        aggregation={"prefix_format": ""},
    )
    with running_gateway(config, tmp_path_factory.mktemp("conformance-gateway")) as process:
        yield process


@pytest.fixture(scope="session")
def mixed_backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        dict[str, ManagedProcess]]:
    """One backend of each kind: notes also serves the stateless revision (``--stateless``),
    weather serves only the session-based ones (``--handshake-only``)."""
    modules = {"notes": f"{NOTES_MODULE} --stateless",
               "weather": f"{WEATHER_MODULE} --handshake-only"}
    with running_backends(modules, tmp_path_factory.mktemp("mixed-backends")) as backends:
        yield backends


@pytest.fixture(scope="session")
def mixed_gateway(mixed_backends: dict[str, ManagedProcess],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """A gateway in front of both kinds of backend; upstream sessions kept for stateless
    clients end after one idle second."""
    config = gateway_config(mixed_backends, session={"store": "memory"},
                            stateless={"upstream_idle_seconds": 1.0})
    with running_gateway(config, tmp_path_factory.mktemp("mixed-gateway")) as process:
        yield process
