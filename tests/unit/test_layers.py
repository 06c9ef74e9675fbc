"""Imports point one way: server → session → backend/store, shared modules below them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "vmcp"

# What each part may import from vmcp itself (module prefixes; "vmcp" alone is the bare
# package, for its version); anything else is a layering error.
ALLOWED = {
    "store": ("vmcp.store", "vmcp.errors"),
    "backend": ("vmcp.backend", "vmcp.errors", "vmcp"),
    "cache.py": (),
    "errors.py": (),
    "identity.py": ("vmcp.errors",),
    "aggregate.py": ("vmcp.errors", "vmcp.config"),
    "authz": ("vmcp.authz", "vmcp.identity", "vmcp.config", "vmcp.errors"),
    "audit": ("vmcp.audit", "vmcp.identity", "vmcp.config", "vmcp.errors"),
    "session": ("vmcp.session", "vmcp.identity", "vmcp.store", "vmcp.backend", "vmcp.cache",
                "vmcp.errors", "vmcp.aggregate", "vmcp.config", "vmcp.tracing",
                "vmcp.auth.outgoing", "vmcp"),
}


def vmcp_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vmcp"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("vmcp"))
    return found


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_each_part_imports_only_what_lies_below_it(part: str) -> None:
    target = PACKAGE / part
    files = [target] if target.is_file() else sorted(target.rglob("*.py"))
    wrong = {
        f"{f.relative_to(PACKAGE)}: {module}"
        for f in files for module in vmcp_imports(f)
        if not any(module == p or (p != "vmcp" and module.startswith(p + "."))
                   for p in ALLOWED[part])
    }
    assert not wrong, sorted(wrong)


def test_nothing_below_the_server_imports_it() -> None:
    offenders = sorted(
        str(f.relative_to(PACKAGE)) for f in PACKAGE.rglob("*.py")
        if "server" not in f.relative_to(PACKAGE).parts
        and f.name not in ("cli.py", "telemetry.py", "probe.py")
        and any(m.startswith("vmcp.server") for m in vmcp_imports(f))
    )
    assert not offenders
