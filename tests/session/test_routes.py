"""A live session's routes: re-listing a backend while the session closes is no error."""

from __future__ import annotations

from typing import Any

import pytest

from vmcp.aggregate import BackendCatalog, build_routing_table
from vmcp.config import AggregationConfig
from vmcp.errors import SessionClosed
from vmcp.session.routes import SessionRoutes

pytestmark = pytest.mark.anyio


async def test_a_backend_closed_under_a_re_listing_keeps_the_routes() -> None:
    """A GET stream's catch-up re-lists while a DELETE closes the session: the closed
    connection's refusal must not escape into the stream (it would cut the response)."""
    async def closed(name: str, connection: Any) -> BackendCatalog:
        raise SessionClosed("closing")

    async def connection_of(name: str) -> Any:
        return object()

    catalog = BackendCatalog(tools=[{"name": "t", "inputSchema": {}}])
    routes = SessionRoutes("s", {"b": catalog},
                           rebuild=lambda c: build_routing_table(c, AggregationConfig()),
                           discover=closed, connection_of=connection_of)
    before = routes.table
    await routes.refresh_all(["b"])
    assert routes.table is before
