"""Merging backend catalogs into one routing table."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmcp.aggregate import (
    MAX_NAME_LENGTH,
    BackendCatalog,
    Route,
    RoutingTable,
    build_routing_table,
    compile_uri_template,
)
from vmcp.config import AggregationConfig, BackendToolsConfig, ToolOverride
from vmcp.errors import ConfigError


def tool(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "inputSchema": {"type": "object"}, **extra}


def names(items: list[dict[str, Any]]) -> list[str]:
    return [item["name"] for item in items]


def build(catalogs: dict[str, BackendCatalog], **config: Any) -> tuple[RoutingTable, list[str]]:
    warnings: list[str] = []
    table = build_routing_table(
        catalogs, AggregationConfig.model_validate(config), on_warning=warnings.append
    )
    return table, warnings


NOTES = BackendCatalog(
    tools=[tool("search", description="Search notes"), tool("add_note")],
    prompts=[{"name": "summarize"}],
)
WEATHER = BackendCatalog(
    tools=[tool("search", description="Search places"), tool("forecast")],
    prompts=[{"name": "summarize"}, {"name": "weather_report"}],
)
BOTH = {"weather": WEATHER, "notes": NOTES}  # deliberately not in name order


# --------------------------------------------------------------------------- prefix mode


def test_prefix_mode_prefixes_every_tool_and_routes_back() -> None:
    table, warnings = build(BOTH)

    assert names(table.tools) == [
        "notes_search",
        "notes_add_note",
        "weather_search",
        "weather_forecast",
    ]
    assert table.route_tool("notes_search") == Route("notes", "search")
    assert table.route_tool("weather_search") == Route("weather", "search")
    assert table.route_tool("search") is None
    assert warnings == []


def test_exposed_tool_is_the_backend_json_with_only_the_name_replaced() -> None:
    original = tool("search", description="d", annotations={"readOnlyHint": True}, _meta={"k": 1})

    table, _ = build({"notes": BackendCatalog(tools=[original])})

    assert table.tools == [{**original, "name": "notes_search"}]
    assert original["name"] == "search"


def test_table_keeps_its_own_copies() -> None:
    catalog = BackendCatalog(tools=[tool("search")])
    table, _ = build({"notes": catalog})

    catalog.tools[0]["inputSchema"]["type"] = "changed"
    table.tools.clear()

    assert table.tools[0]["inputSchema"] == {"type": "object"}


def test_custom_prefix_format() -> None:
    table, _ = build(BOTH, prefix_format="{backend}.")

    assert "notes.search" in names(table.tools)


def test_empty_prefix_passes_names_through() -> None:
    table, warnings = build({"notes": NOTES}, prefix_format="")

    assert names(table.tools) == ["search", "add_note"]
    assert table.route_tool("search") == Route("notes", "search")
    assert warnings == []


def test_empty_prefix_clash_keeps_the_first_backend_and_warns() -> None:
    table, warnings = build(BOTH, prefix_format="")

    assert names(table.tools) == ["search", "add_note", "forecast"]
    assert table.route_tool("search") == Route("notes", "search")
    assert len(warnings) == 2  # the tool and the prompt "summarize"
    assert "tool 'search' of backend 'weather'" in warnings[0]
    assert "already taken by tool 'search' of backend 'notes'" in warnings[0]


def test_prefix_mode_uses_an_overridden_name_as_is() -> None:
    rules = BackendToolsConfig(
        overrides={
            "search": ToolOverride(name="find_notes", description="Find notes"),
            "add_note": ToolOverride(description="Store a note"),
        }
    )

    table, _ = build(BOTH, tools={"notes": rules})

    by_name = {t["name"]: t for t in table.tools}
    assert by_name["find_notes"]["description"] == "Find notes"
    assert by_name["notes_add_note"]["description"] == "Store a note"
    assert table.route_tool("find_notes") == Route("notes", "search")
    assert "notes_search" not in by_name


def test_names_that_only_collide_after_prefixing_keep_the_first() -> None:
    catalogs = {
        "a": BackendCatalog(tools=[tool("b_c")]),
        "a_b": BackendCatalog(tools=[tool("c")]),
    }

    table, warnings = build(catalogs)

    assert names(table.tools) == ["a_b_c"]
    assert table.route_tool("a_b_c") == Route("a", "b_c")
    assert len(warnings) == 1
    assert "tool 'c' of backend 'a_b' would be exposed as 'a_b_c', already taken" in warnings[0]


# --------------------------------------------------------------------------- filters


def test_include_keeps_only_the_listed_own_names() -> None:
    notes = BackendCatalog(tools=[tool("search"), tool("add_note"), tool("delete_note")])
    rules = BackendToolsConfig(include=("search", "delete_note"))

    table, warnings = build({"notes": notes}, tools={"notes": rules})

    assert names(table.tools) == ["notes_search", "notes_delete_note"]
    assert warnings == []


def test_exclude_is_applied_after_include() -> None:
    notes = BackendCatalog(tools=[tool("search"), tool("add_note"), tool("delete_note")])
    # Validation refuses a name in both lists; built unvalidated to pin the order down.
    rules = BackendToolsConfig.model_construct(
        include=("search", "delete_note"), exclude=("delete_note",), overrides={}
    )

    table, _ = build({"notes": notes}, tools={"notes": rules})

    assert names(table.tools) == ["notes_search"]


def test_empty_include_means_all() -> None:
    notes = BackendCatalog(tools=[tool("search"), tool("add_note")])

    table, _ = build({"notes": notes}, tools={"notes": BackendToolsConfig(exclude=("add_note",))})

    assert names(table.tools) == ["notes_search"]


def test_filters_apply_before_overrides() -> None:
    rules = BackendToolsConfig(
        include=("search",), overrides={"search": ToolOverride(name="find_notes")}
    )

    table, _ = build({"notes": NOTES}, tools={"notes": rules})

    assert names(table.tools) == ["find_notes"]


def test_filters_and_overrides_naming_unknown_tools_warn() -> None:
    rules = BackendToolsConfig(
        include=("search", "ghost"), overrides={"phantom": ToolOverride(name="p")}
    )

    table, warnings = build({"notes": NOTES}, tools={"notes": rules})

    assert names(table.tools) == ["notes_search"]
    assert warnings == [
        "aggregation.tools.notes.include names tool 'ghost', which backend 'notes' does not offer",
        "aggregation.tools.notes.overrides names tool 'phantom', "
        "which backend 'notes' does not offer",
    ]


def test_rules_for_backends_without_a_catalog_are_ignored() -> None:
    table, warnings = build(
        {"notes": NOTES}, tools={"weather": BackendToolsConfig(include=("forecast",))}
    )

    assert names(table.tools) == ["notes_search", "notes_add_note"]
    assert warnings == []


# --------------------------------------------------------------------------- priority mode


def test_priority_mode_gives_the_bare_name_to_the_listed_backend() -> None:
    table, warnings = build(BOTH, conflict="priority", priority_order=["weather"])

    assert names(table.tools) == ["notes_search", "add_note", "search", "forecast"]
    assert table.route_tool("search") == Route("weather", "search")
    assert table.route_tool("notes_search") == Route("notes", "search")
    assert table.route_tool("add_note") == Route("notes", "add_note")
    assert warnings == []


def test_priority_mode_ranks_unlisted_backends_by_name() -> None:
    catalogs = {
        "c": BackendCatalog(tools=[tool("x")]),
        "b": BackendCatalog(tools=[tool("x")]),
        "a": BackendCatalog(tools=[tool("x")]),
    }

    table, _ = build(catalogs, conflict="priority", priority_order=["c"])

    assert table.route_tool("x") == Route("c", "x")
    assert table.route_tool("a_x") == Route("a", "x")
    assert table.route_tool("b_x") == Route("b", "x")


def test_priority_mode_without_order_prefers_the_first_backend_by_name() -> None:
    table, _ = build(BOTH, conflict="priority")

    assert table.route_tool("search") == Route("notes", "search")
    assert table.route_tool("weather_search") == Route("weather", "search")


def test_priority_mode_with_empty_prefix_drops_the_shadowed_tools() -> None:
    table, warnings = build(BOTH, conflict="priority", priority_order=["weather"], prefix_format="")

    assert names(table.tools) == ["add_note", "search", "forecast"]
    assert table.route_tool("search") == Route("weather", "search")
    assert any(
        "tool 'search' of backend 'notes' is shadowed by backend 'weather'" in w for w in warnings
    )


def test_priority_mode_bare_names_beat_prefixed_fallbacks() -> None:
    catalogs = {
        "a": BackendCatalog(tools=[tool("x")]),
        "b": BackendCatalog(tools=[tool("x")]),
        "c": BackendCatalog(tools=[tool("b_x")]),
    }

    table, warnings = build(catalogs, conflict="priority")

    assert table.route_tool("x") == Route("a", "x")
    assert table.route_tool("b_x") == Route("c", "b_x")
    assert len(warnings) == 1
    assert "tool 'x' of backend 'b' would be exposed as 'b_x', already taken" in warnings[0]


def test_priority_mode_overrides_take_part_in_the_contest() -> None:
    rules = BackendToolsConfig(overrides={"add_note": ToolOverride(name="forecast")})

    table, _ = build(BOTH, conflict="priority", priority_order=["weather"], tools={"notes": rules})

    assert table.route_tool("forecast") == Route("weather", "forecast")
    assert table.route_tool("notes_forecast") == Route("notes", "add_note")


# --------------------------------------------------------------------------- manual mode


def test_manual_mode_without_overrides_names_every_clash() -> None:
    notes = BackendCatalog(tools=[tool("search"), tool("list"), tool("add_note")])
    weather = BackendCatalog(tools=[tool("search"), tool("list")])
    maps = BackendCatalog(tools=[tool("search")])

    with pytest.raises(ConfigError) as caught:
        build({"weather": weather, "notes": notes, "maps": maps}, conflict="manual")

    assert str(caught.value).splitlines() == [
        "aggregation.tools: tool name 'list' is exposed by more than one backend: "
        "notes (tool 'list'), weather (tool 'list'); add overrides under "
        "aggregation.tools.<backend>.overrides so that each exposed name is unique",
        "aggregation.tools: tool name 'search' is exposed by more than one backend: "
        "maps (tool 'search'), notes (tool 'search'), weather (tool 'search'); add overrides "
        "under aggregation.tools.<backend>.overrides so that each exposed name is unique",
    ]


def test_manual_mode_with_overrides_exposes_bare_names() -> None:
    rules = BackendToolsConfig(overrides={"search": ToolOverride(name="search_notes")})

    table, warnings = build(BOTH, conflict="manual", tools={"notes": rules})

    assert names(table.tools) == ["search_notes", "add_note", "search", "forecast"]
    assert table.route_tool("search_notes") == Route("notes", "search")
    assert table.route_tool("search") == Route("weather", "search")
    assert table.route_tool("forecast") == Route("weather", "forecast")
    # prompts have no overrides: their clash is resolved by priority, with a warning
    assert names(table.prompts) == ["summarize", "weather_summarize", "weather_report"]
    assert len(warnings) == 1
    assert "prompt 'summarize' is offered by backends 'notes', 'weather'" in warnings[0]


def test_manual_mode_reports_a_clash_created_by_an_override() -> None:
    rules = BackendToolsConfig(
        overrides={"search": ToolOverride(name="find"), "add_note": ToolOverride(name="forecast")}
    )

    with pytest.raises(ConfigError) as caught:
        build(BOTH, conflict="manual", tools={"notes": rules})

    message = str(caught.value)
    assert "tool name 'forecast'" in message
    assert "notes (tool 'add_note', renamed), weather (tool 'forecast')" in message
    assert "'search'" not in message.split("forecast", 1)[0]


# --------------------------------------------------------------------------- prompts


def test_prompts_are_prefixed_like_tools() -> None:
    table, _ = build(BOTH)

    assert names(table.prompts) == [
        "notes_summarize",
        "weather_summarize",
        "weather_weather_report",
    ]
    assert table.route_prompt("weather_summarize") == Route("weather", "summarize")
    assert table.route_prompt("summarize") is None


def test_prompts_follow_priority_mode() -> None:
    table, _ = build(BOTH, conflict="priority", priority_order=["weather"])

    assert table.route_prompt("summarize") == Route("weather", "summarize")
    assert table.route_prompt("notes_summarize") == Route("notes", "summarize")
    assert table.route_prompt("weather_report") == Route("weather", "weather_report")


def test_tool_filters_do_not_apply_to_prompts() -> None:
    rules = BackendToolsConfig(include=("search",))

    table, _ = build({"notes": NOTES}, tools={"notes": rules})

    assert names(table.prompts) == ["notes_summarize"]


# --------------------------------------------------------------------------- name length


def test_names_longer_than_64_characters_are_skipped_with_a_warning() -> None:
    fits = "t" * (MAX_NAME_LENGTH - len("notes_"))
    too_long = "u" * (MAX_NAME_LENGTH - len("notes_") + 1)
    notes = BackendCatalog(tools=[tool(fits), tool(too_long)], prompts=[{"name": too_long}])

    table, warnings = build({"notes": notes})

    assert names(table.tools) == [f"notes_{fits}"]
    assert len(table.tools[0]["name"]) == MAX_NAME_LENGTH
    assert table.prompts == []
    assert len(warnings) == 2
    assert all("longer than 64; skipped" in w for w in warnings)


def test_a_skipped_long_name_does_not_claim_the_name() -> None:
    long_name = "x" * 70
    catalogs = {
        "a": BackendCatalog(tools=[tool(long_name)]),
        "b": BackendCatalog(tools=[tool(long_name)]),
    }

    table, warnings = build(catalogs, conflict="manual")

    assert table.tools == []
    assert len(warnings) == 2


# --------------------------------------------------------------------------- resources


def test_resources_first_backend_by_name_wins_and_duplicates_warn() -> None:
    catalogs = {
        "weather": BackendCatalog(resources=[{"uri": "shared://readme", "name": "w"}]),
        "notes": BackendCatalog(
            resources=[{"uri": "notes://1", "name": "n1"}, {"uri": "shared://readme", "name": "n"}]
        ),
    }

    table, warnings = build(catalogs)

    assert table.resources == [
        {"uri": "notes://1", "name": "n1"},
        {"uri": "shared://readme", "name": "n"},
    ]
    assert table.route_resource("shared://readme") == "notes"
    assert warnings == [
        "resource 'shared://readme' of backend 'weather' is already offered by backend 'notes'; "
        "skipped"
    ]


def test_route_resource_prefers_exact_uris_then_templates_in_backend_order() -> None:
    catalogs = {
        "a": BackendCatalog(resource_templates=[{"uriTemplate": "files://{name}"}]),
        "b": BackendCatalog(
            resources=[{"uri": "files://special"}],
            resource_templates=[
                {"uriTemplate": "files://{name}"},
                {"uriTemplate": "notes://{id}/body"},
            ],
        ),
        "c": BackendCatalog(resource_templates=[{"uriTemplate": "notes://{id}"}]),
    }

    table, warnings = build(catalogs)

    assert table.route_resource("files://special") == "b"  # exact beats a's template
    assert table.route_resource("files://other") == "a"
    assert table.route_resource("notes://7/body") == "b"
    assert table.route_resource("notes://7") == "c"
    assert table.route_resource("notes://7/title") is None
    assert table.route_resource("unknown://x") is None
    assert [t["uriTemplate"] for t in table.resource_templates] == [
        "files://{name}",
        "notes://{id}/body",
        "notes://{id}",
    ]
    assert len(warnings) == 1  # b's files://{name} duplicates a's


def test_templates_beyond_level_1_are_listed_but_not_routed() -> None:
    catalogs = {"a": BackendCatalog(resource_templates=[{"uriTemplate": "files://{+path}"}])}

    table, warnings = build(catalogs)

    assert table.resource_templates == [{"uriTemplate": "files://{+path}"}]
    assert table.route_resource("files://x") is None
    assert len(warnings) == 1
    assert "beyond RFC 6570 level 1" in warnings[0]


@pytest.mark.parametrize(
    ("template", "uri", "matches"),
    [
        ("notes://{id}", "notes://42", True),
        ("notes://{id}", "notes://", False),  # values are never empty
        ("notes://{id}", "notes://4/2", False),  # "/" is never part of a level-1 value
        ("notes://{id}", "notes://4?x", False),
        ("notes://{id}", "notes://a%2Fb", True),
        ("weather://{city}/{day}", "weather://Paris/monday", True),
        ("weather://{city}/{day}", "weather://Paris", False),
        ("file:///{dir}/{name}.txt", "file:///docs/readme.txt", True),
        ("file:///{dir}/{name}.txt", "file:///docs/readme.md", False),
        ("a.b://{x}", "aXb://1", False),  # literals are literal, not regex
        ("static://fixed", "static://fixed", True),
        ("x://{var.sub}", "x://v", True),
        ("x://{pct%20name}", "x://v", True),
    ],
)
def test_level_1_template_matching(template: str, uri: str, matches: bool) -> None:
    pattern = compile_uri_template(template)

    assert pattern is not None
    assert bool(pattern.fullmatch(uri)) is matches


@pytest.mark.parametrize(
    "template",
    [
        "x://{+path}",
        "x://{#frag}",
        "x://{?q}",
        "x://{/seg}",
        "x://{a,b}",
        "x://{list*}",
        "x://{var:3}",
        "x://{}",
        "x://{unclosed",
        "x://closed}",
        "x://{a{b}}",
    ],
)
def test_templates_beyond_level_1_do_not_compile(template: str) -> None:
    assert compile_uri_template(template) is None


# --------------------------------------------------------------------------- robustness


def test_malformed_entries_are_skipped_with_a_warning() -> None:
    catalog = BackendCatalog(
        tools=[{"description": "no name"}, {"name": ""}, tool("ok")],
        resources=[{"name": "no uri"}],
        resource_templates=[{"uriTemplate": 3}],
        prompts=[{"name": None}],
    )

    table, warnings = build({"notes": catalog})

    assert names(table.tools) == ["notes_ok"]
    assert table.resources == []
    assert table.resource_templates == []
    assert table.prompts == []
    assert len(warnings) == 5


def test_without_on_warning_problems_are_dropped_silently() -> None:
    table = build_routing_table(BOTH, AggregationConfig(prefix_format=""))

    assert table.route_tool("search") == Route("notes", "search")


def test_order_does_not_depend_on_catalog_insertion_order() -> None:
    forward, _ = build({"notes": NOTES, "weather": WEATHER})
    backward, _ = build({"weather": WEATHER, "notes": NOTES})

    assert forward.tools == backward.tools
    assert forward.prompts == backward.prompts


def test_empty_table() -> None:
    table = RoutingTable()

    assert (table.tools, table.prompts, table.resources, table.resource_templates) == (
        [],
        [],
        [],
        [],
    )
    assert table.route_tool("x") is None
    assert table.route_prompt("x") is None
    assert table.route_resource("x://y") is None
    assert repr(table) == "RoutingTable(tools=0, prompts=0, resources=0, resource_templates=0)"


def test_routing_table_refuses_duplicate_names() -> None:
    with pytest.raises(ValueError, match="exposed twice"):
        RoutingTable(tools=[({"name": "x"}, Route("a", "x")), ({"name": "x"}, Route("b", "x"))])


# --------------------------------------------------------------------------- property

# Sampled names collide once prefixed ("a" + "b_c" against "a_b" + "c" with "{backend}_",
# "a" + "bc" against "ab" + "c" with "{backend}") or reach the length limit; they are drawn
# twice as often as the regular expressions, which cover everything else.
_backend_samples = st.sampled_from(["a", "a_", "a_b", "ab", "a-b", "b"])
_tool_samples = st.sampled_from(["bc", "b_c", "_c", "c", "b-c", "y" * 59, "z" * 60])
backend_names = st.one_of(
    _backend_samples, _backend_samples, st.from_regex(r"[a-z0-9_-]{1,12}", fullmatch=True)
)
tool_names = st.one_of(
    _tool_samples, _tool_samples, st.from_regex(r"[A-Za-z0-9_.-]{1,62}", fullmatch=True)
)
catalog_specs = st.dictionaries(
    backend_names, st.lists(tool_names, unique=True, max_size=6), max_size=5
)


@settings(database=None, max_examples=400, deadline=None)
@given(catalog_specs, st.sampled_from(["{backend}_", "{backend}.", "{backend}", "x{backend}-"]))
def test_prefix_mode_names_are_unique_and_route_back_to_their_origin(
    spec: dict[str, list[str]], prefix_format: str
) -> None:
    catalogs = {
        backend: BackendCatalog(tools=[tool(name, origin=[backend, name]) for name in own])
        for backend, own in spec.items()
    }
    warnings: list[str] = []

    table = build_routing_table(
        catalogs, AggregationConfig(prefix_format=prefix_format), on_warning=warnings.append
    )

    exposed = names(table.tools)
    assert len(exposed) == len(set(exposed))
    for item in table.tools:
        backend, own_name = item["origin"]
        assert table.route_tool(item["name"]) == Route(backend, own_name)
        assert item["name"] == prefix_format.format(backend=backend) + own_name
        assert len(item["name"]) <= MAX_NAME_LENGTH
    # every tool that is not exposed is accounted for by exactly one warning
    assert len(exposed) + len(warnings) == sum(len(own) for own in spec.values())


def test_a_tool_that_is_not_visible_is_routed_but_not_listed() -> None:
    catalogs = {"notes": BackendCatalog(tools=[tool("add"), tool("purge")])}
    rules = BackendToolsConfig(overrides={"purge": ToolOverride(visible=False)})
    table, _ = build(catalogs, tools={"notes": rules})
    assert names(table.tools) == ["notes_add"]
    route = table.route_tool("notes_purge")
    assert route is not None
    assert (route.backend, route.name, route.visible) == ("notes", "purge", False)
    hidden = table.tool("notes_purge")
    assert hidden is not None
    assert hidden["name"] == "notes_purge"
    assert table.tool("notes_add") is not None
    assert table.tool("nothing") is None
