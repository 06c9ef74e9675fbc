"""Imports point one way, down the data path, and no module imports itself back.

Every top-level module and package of ``vmcp`` has a layer; a part may import its own
modules and parts of lower layers only. A new package must be given a layer here, so the
architecture is decided rather than drifted into (see docs/architecture.md).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "vmcp"

LAYERS: list[set[str]] = [
    {"__init__", "errors"},                 # the version; the errors tree
    # who calls; spans; caches and shared loads; URI templates; sandboxed templates
    {"identity", "tracing", "cache", "concurrency", "lru", "uri_template", "templating"},
    {"logs", "config"},
    {"store", "backend", "aggregate",       # metadata store; one backend; routing tables
     "authz", "audit", "composite"},        # what a caller may use; who did what; workflows
    {"auth", "dispatch"},                   # credentials in and out; one MCP method
    {"upstream"},                           # reaching backends for a caller
    {"session", "stateless"},               # the two revisions' backends
    {"telemetry"},
    {"server", "probe", "bridge", "demo"},  # the ASGI app; check-config's probe; stdio bridge; demo
    {"cli"},
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def part_of(module: str) -> str:
    """``vmcp.session.manager`` → ``session``; ``vmcp`` → ``__init__``."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def vmcp_imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vmcp"):
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("vmcp"))


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_part_has_a_layer() -> None:
    parts = {part_of(module_name(path)) for path in SOURCES}
    assert parts <= set(RANK), sorted(parts - set(RANK))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path) -> None:
    own = part_of(module_name(path))
    wrong = sorted(
        module for module in vmcp_imports(path)
        if part_of(module) != own and RANK.get(part_of(module), 99) >= RANK[own]
    )
    assert not wrong, f"{own} (layer {RANK[own]}) imports {wrong}"


def test_no_module_imports_itself_back() -> None:
    """No cycle among modules, counting imports inside functions too."""
    modules = {module_name(path): path for path in SOURCES}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {
        name: {target for m in vmcp_imports(path)
               if (target := resolve(m)) is not None and target != name
               and not name.startswith(target + ".")}  # a package's own __init__ is no cycle
        for name, path in modules.items()
    }
    assert not find_cycles(graph)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*trail[trail.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return cycles


def test_the_layer_check_fails_on_an_upward_import(tmp_path: Path) -> None:
    """The check itself can fail: a store module importing the server is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from vmcp.server.app import build_app\n")
    upward = [m for m in vmcp_imports(bad) if RANK[part_of(m)] >= RANK["store"]]
    assert upward == ["vmcp.server.app"]


def test_the_cycle_check_fails_on_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
