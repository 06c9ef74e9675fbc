"""The dispatcher serves each routed or listed method the same way for any revision."""

from __future__ import annotations

from typing import Any

import pytest

from vmcp.aggregate import BackendCatalog, RoutingTable, build_routing_table
from vmcp.config import AggregationConfig
from vmcp.dispatch import Dispatcher, Target, aggregate_capabilities
from vmcp.errors import INVALID_PARAMS_CODE, RequestError

pytestmark = pytest.mark.anyio

RESOURCE_NOT_FOUND = -32002


def table(**catalogs: BackendCatalog) -> RoutingTable:
    return build_routing_table(catalogs, AggregationConfig())


NOTES = BackendCatalog(
    tools=[{"name": "add", "inputSchema": {"type": "object"}}],
    prompts=[{"name": "summary"}],
    resources=[{"uri": "notes://all", "name": "all"}],
    resource_templates=[{"uriTemplate": "notes://{id}", "name": "one"}],
)


class RecordingUpstream:
    """An upstream whose routing table grows on re-listing, recording every call."""

    def __init__(self, first: RoutingTable, after_refresh: RoutingTable | None = None
                 ) -> None:
        self._table = first
        self._after_refresh = after_refresh
        self.refreshes = 0
        self.calls: list[Target] = []

    async def routing(self, *, refresh: bool = False) -> RoutingTable:
        if refresh:
            self.refreshes += 1
            if self._after_refresh is not None:
                self._table = self._after_refresh
        return self._table

    async def call(self, target: Target) -> dict[str, Any]:
        self.calls.append(target)
        return {"sent": target.params}


@pytest.fixture
def dispatcher() -> Dispatcher[dict[str, Any]]:
    return Dispatcher(resource_not_found_code=RESOURCE_NOT_FOUND)


async def test_a_call_goes_to_its_backend_under_the_backends_own_name(
        dispatcher: Dispatcher[dict[str, Any]]) -> None:
    upstream = RecordingUpstream(table(notes=NOTES))
    result = await dispatcher.call(upstream, "tools/call",
                                   {"name": "notes_add", "arguments": {"x": 1}})
    assert upstream.calls == [Target("notes", "tools/call", "notes_add",
                                     {"name": "add", "arguments": {"x": 1}})]
    assert result == {"sent": {"name": "add", "arguments": {"x": 1}}}
    assert upstream.refreshes == 0


async def test_an_unknown_name_re_lists_once_and_finds_a_new_tool(
        dispatcher: Dispatcher[dict[str, Any]]) -> None:
    grown = BackendCatalog(tools=[*NOTES.tools, {"name": "new", "inputSchema": {}}])
    upstream = RecordingUpstream(table(notes=NOTES), table(notes=grown))
    await dispatcher.call(upstream, "tools/call", {"name": "notes_new"})
    assert upstream.refreshes == 1
    assert [c.params["name"] for c in upstream.calls] == ["new"]


@pytest.mark.parametrize(("method", "params", "code", "message"), [
    ("tools/call", {"name": "nope"}, INVALID_PARAMS_CODE, "Unknown tool: nope"),
    ("prompts/get", {"name": "nope"}, INVALID_PARAMS_CODE, "Unknown prompt: nope"),
    ("resources/read", {"uri": "x://y"}, RESOURCE_NOT_FOUND, "Resource not found: x://y"),
    ("completion/complete", {"ref": {"type": "ref/prompt", "name": "nope"}},
     INVALID_PARAMS_CODE, "Unknown prompt: nope"),
    ("completion/complete", {"ref": {"type": "ref/resource", "uri": "x://y"}},
     RESOURCE_NOT_FOUND, "Resource not found: x://y"),
])
async def test_an_unknown_target_is_refused_after_one_re_listing(
        dispatcher: Dispatcher[dict[str, Any]], method: str, params: dict[str, Any],
        code: int, message: str) -> None:
    upstream = RecordingUpstream(table(notes=NOTES))
    with pytest.raises(RequestError) as refused:
        await dispatcher.call(upstream, method, params)
    assert (refused.value.code, refused.value.message) == (code, message)
    assert upstream.refreshes == 1
    assert upstream.calls == []


async def test_resources_route_by_uri_and_template(
        dispatcher: Dispatcher[dict[str, Any]]) -> None:
    upstream = RecordingUpstream(table(notes=NOTES))
    await dispatcher.call(upstream, "resources/read", {"uri": "notes://all"})
    await dispatcher.call(upstream, "resources/read", {"uri": "notes://42"})
    await dispatcher.call(upstream, "completion/complete",
                          {"ref": {"type": "ref/prompt", "name": "notes_summary"}})
    assert [(c.backend, c.exposed) for c in upstream.calls] == [
        ("notes", "notes://all"), ("notes", "notes://42"), ("notes", "notes_summary")]
    assert upstream.calls[2].params["ref"]["name"] == "summary"


async def test_listings_come_in_one_page_and_refuse_a_cursor(
        dispatcher: Dispatcher[dict[str, Any]]) -> None:
    upstream = RecordingUpstream(table(notes=NOTES))
    tools = await dispatcher.listing(upstream, "tools/list", {})
    templates = await dispatcher.listing(upstream, "resources/templates/list", {})
    assert [t["name"] for t in tools["tools"]] == ["notes_add"]
    assert [t["uriTemplate"] for t in templates["resourceTemplates"]] == ["notes://{id}"]
    with pytest.raises(RequestError, match="Invalid cursor"):
        await dispatcher.listing(upstream, "prompts/list", {"cursor": "abc"})


def test_capabilities_follow_what_backends_offer_and_the_revision() -> None:
    offered = [{"tools": {}, "completions": {}}, {"resources": {"subscribe": True},
                                                 "logging": {}}]
    with_sessions = aggregate_capabilities(offered, list_changed=True, logging_always=True)
    stateless = aggregate_capabilities(offered, list_changed=False, logging_always=False)
    assert with_sessions["tools"] == {"listChanged": True}
    assert with_sessions["resources"] == {"listChanged": True, "subscribe": True}
    assert "completions" in with_sessions
    assert "logging" in with_sessions
    assert stateless == {"tools": {}, "resources": {}, "prompts": {}, "logging": {},
                         "completions": {}}
    assert "logging" not in aggregate_capabilities([{}], list_changed=False,
                                                   logging_always=False)
