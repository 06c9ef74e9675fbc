"""Discovery lists every page of what a backend announces, whichever revision asks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from vmcp.errors import BackendTimeout
from vmcp.upstream.discovery import MAX_LIST_PAGES, discover_catalog

pytestmark = pytest.mark.anyio


async def test_pages_are_followed_and_only_announced_lists_are_asked_for() -> None:
    asked: list[tuple[str, str | None]] = []
    pages = {("tools/list", None): {"tools": [{"name": "a"}], "nextCursor": "2"},
             ("tools/list", "2"): {"tools": [{"name": "b"}, "junk"]},
             ("prompts/list", None): {"prompts": [{"name": "p"}]}}

    async def fetch(method: str, cursor: str | None) -> Mapping[str, Any]:
        asked.append((method, cursor))
        return pages[(method, cursor)]

    catalog = await discover_catalog(fetch, {"tools": {}, "prompts": {}})
    assert [t["name"] for t in catalog.tools] == ["a", "b"]
    assert [p["name"] for p in catalog.prompts] == ["p"]
    assert catalog.resources == []
    assert sorted(asked, key=str) == sorted(pages, key=str)


async def test_a_cursor_that_never_ends_is_cut_off() -> None:
    calls = 0

    async def fetch(method: str, cursor: str | None) -> Mapping[str, Any]:
        nonlocal calls
        calls += 1
        return {"tools": [{"name": f"t{calls}"}], "nextCursor": "again"}

    catalog = await discover_catalog(fetch, {"tools": {}})
    assert calls == MAX_LIST_PAGES
    assert len(catalog.tools) == MAX_LIST_PAGES


async def test_the_first_failure_is_raised_as_itself() -> None:
    async def fetch(method: str, cursor: str | None) -> Mapping[str, Any]:
        if method == "resources/list":
            raise BackendTimeout("notes", "no answer")
        return {}

    with pytest.raises(BackendTimeout):
        await discover_catalog(fetch, {"tools": {}, "resources": {}})
