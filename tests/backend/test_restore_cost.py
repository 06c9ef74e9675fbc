"""A restore re-attaches without a single backend round trip once catalogs are known."""

from __future__ import annotations

import httpx2
import pytest

from tests.support.processes import ManagedProcess
from vmcp.config import VmcpConfig
from vmcp.identity import ANONYMOUS
from vmcp.session.connector import BackendConnector

pytestmark = pytest.mark.anyio


def config_for(backends: dict[str, ManagedProcess], ttl: float) -> VmcpConfig:
    return VmcpConfig.model_validate({
        "backends": [{"name": n, "url": b.url} for n, b in backends.items()],
        "session": {"catalog_ttl_seconds": ttl}})


async def requests_of_restore(backends: dict[str, ManagedProcess], ttl: float) -> int:
    async with httpx2.AsyncClient() as http:
        creating = BackendConnector(config_for(backends, ttl), http)
        live = await creating.open("s", ANONYMOUS)
        for name in live.backend_names():          # every upstream session opened
            await live.connection(name)
        assert sorted(live.backend_states()) == sorted(backends)
        restoring = creating                       # same replica-wide catalog cache
        restored = await restoring.restore("s", ANONYMOUS, live.backend_names(),
                                           live.backend_states())
        assert sorted(restored.connections()) == sorted(backends)   # all re-attached
        total = sum(c.statistics().requests for c in restored.connections().values())
        assert restored.routing.tools == live.routing.tools
        await restored.aclose()
        await live.aclose()
        return total


async def test_restore_with_known_catalogs_costs_no_backend_round_trip(
    backends: dict[str, ManagedProcess],
) -> None:
    assert await requests_of_restore(backends, ttl=30) == 0
    assert await requests_of_restore(backends, ttl=0) > 0   # without the cache: listings
