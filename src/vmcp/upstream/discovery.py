"""Everything one backend offers: its tools, resources, templates and prompts, all pages.

Both revisions list backends the same way; they differ only in how one page is fetched
(over a session's connection, or as a stateless request with an envelope).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import anyio

from vmcp import __version__
from vmcp.aggregate import BackendCatalog, listings_for
from vmcp.backend import BackendConnection
from vmcp.errors import BackendError

CLIENT_INFO: Final = {"name": "vmcp", "version": __version__}
CLIENT_CAPABILITIES: Final[dict[str, Any]] = {
    "sampling": {},
    "elicitation": {"form": {}, "url": {}},
    "roots": {"listChanged": True},
}
"""What vmcp tells backends it can do: it relays these requests to its own client."""
MAX_LIST_PAGES: Final = 100
"""Pages followed at most per listing: a backend whose cursors never end is cut off."""

FetchPage = Callable[[str, str | None], Awaitable[Mapping[str, Any]]]
"""Fetch one page of a listing: (method, cursor or None) → the page's result."""


async def discover_catalog(fetch: FetchPage, capabilities: Mapping[str, Any]
                           ) -> BackendCatalog:
    """The catalog of a backend announcing ``capabilities``, following pagination cursors.

    The listings are fetched in parallel; the first failure is raised as itself (not as an
    exception group), so callers handle a ``BackendError`` like any other.
    """
    results: dict[str, list[dict[str, Any]]] = {}
    failures: list[BackendError] = []

    async def collect(method: str, field: str) -> None:
        try:
            results[field] = await _all_pages(fetch, method, field)
        except BackendError as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        for method, field in listings_for(capabilities):
            tg.start_soon(collect, method, field)
    if failures:
        raise failures[0]
    return BackendCatalog(
        tools=results.get("tools", []),
        resources=results.get("resources", []),
        resource_templates=results.get("resourceTemplates", []),
        prompts=results.get("prompts", []),
    )


async def discover(connection: BackendConnection) -> BackendCatalog:
    """The catalog of a backend over one of its (session-based) connections."""
    async def fetch(method: str, cursor: str | None) -> Mapping[str, Any]:
        return await connection.request(method, {"cursor": cursor} if cursor else None)

    capabilities = connection.state.initialize_result.get("capabilities") or {}
    return await discover_catalog(fetch, capabilities)


async def _all_pages(fetch: FetchPage, method: str, field: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(MAX_LIST_PAGES):
        page = await fetch(method, cursor)
        found = page.get(field)
        if isinstance(found, list):
            items.extend(item for item in found if isinstance(item, dict))
        next_cursor = page.get("nextCursor")
        cursor = next_cursor if isinstance(next_cursor, str) and next_cursor else None
        if cursor is None:
            break
    return items
