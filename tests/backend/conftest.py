"""Real demo backends for the backend-layer tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.processes import NOTES_MODULE, WEATHER_MODULE, ManagedProcess, running_backends


@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ManagedProcess]]:
    modules = {"notes": NOTES_MODULE, "weather": WEATHER_MODULE}
    with running_backends(modules, tmp_path_factory.mktemp("health")) as running:
        yield running
