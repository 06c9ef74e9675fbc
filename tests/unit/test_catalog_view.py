"""Every backend item explained: exposed, renamed (by prefix or override), filtered, lost."""

from __future__ import annotations

from typing import Any

from vmcp.aggregate import BackendCatalog
from vmcp.config import AggregationConfig
from vmcp.server.catalog_view import EXPOSED, FILTERED, LOST, RENAMED, explain_catalog


def tool(name: str) -> dict[str, Any]:
    return {"name": name, "inputSchema": {"type": "object"}}


CATALOGS = {
    "notes": BackendCatalog(tools=[tool("search"), tool("add"), tool("secret")],
                            prompts=[{"name": "summary"}],
                            resources=[{"uri": "note://1"}],
                            resource_templates=[{"uriTemplate": "note://{id}"}]),
    "weather": BackendCatalog(tools=[tool("search"), tool("forecast")],
                              resources=[{"uri": "note://1"}],
                              resource_templates=[{"uriTemplate": "note://{id}"}]),
}


def outcomes(explained: dict[str, list[Any]]) -> dict[str, list[tuple[str, str, str | None,
                                                                     str]]]:
    return {b: [(i.kind, i.name, i.exposed, i.outcome) for i in items]
            for b, items in explained.items()}


def test_prefix_mode_renames_filters_and_loses_duplicate_resources() -> None:
    config = AggregationConfig.model_validate({
        "conflict": "prefix",
        "tools": {"notes": {"exclude": ["secret"],
                            "overrides": {"search": {"name": "find_notes"}}}}})
    explained, _ = explain_catalog(CATALOGS, config)
    assert outcomes(explained) == {
        "notes": [("tool", "search", "find_notes", RENAMED), ("tool", "add", "notes_add", RENAMED),
                  ("tool", "secret", None, FILTERED),
                  ("prompt", "summary", "notes_summary", RENAMED),
                  ("resource", "note://1", "note://1", EXPOSED),
                  ("resource template", "note://{id}", "note://{id}", EXPOSED)],
        "weather": [("tool", "search", "weather_search", RENAMED),
                    ("tool", "forecast", "weather_forecast", RENAMED),
                    ("resource", "note://1", None, LOST),
                    ("resource template", "note://{id}", None, LOST)],
    }
    notes = {i.name: i.note for i in explained["notes"]}
    assert notes["search"] == "override"
    assert notes["add"] == "prefix"
    assert notes["secret"] == "excluded"
    assert explained["weather"][2].note == "offered by notes too"


def test_a_name_lost_to_a_conflict_says_who_took_it() -> None:
    config = AggregationConfig.model_validate({"conflict": "priority", "prefix_format": "",
                                               "priority_order": ["weather"]})
    explained, warnings = explain_catalog(CATALOGS, config)
    search = next(i for i in explained["notes"] if i.name == "search")
    assert (search.exposed, search.outcome) == (None, LOST)
    assert "shadowed by backend 'weather'" in search.note
    assert search.note in warnings
    assert next(i for i in explained["weather"] if i.name == "search").outcome == EXPOSED
    assert next(i for i in explained["notes"] if i.name == "add").outcome == EXPOSED


def test_include_lists_filter_the_rest() -> None:
    config = AggregationConfig.model_validate({"tools": {"weather": {"include": ["forecast"]}}})
    explained, _ = explain_catalog(CATALOGS, config)
    search = explained["weather"][0]
    assert (search.outcome, search.note) == (FILTERED, "not included")


def test_a_manual_clash_loses_everything_and_says_why() -> None:
    config = AggregationConfig.model_validate({"conflict": "manual"})
    explained, warnings = explain_catalog(CATALOGS, config)
    assert {i.outcome for items in explained.values() for i in items} == {LOST}
    assert len(warnings) == 1
    assert "'search' is exposed by more than one backend" in warnings[0]
