"""Each package's ``__all__`` names exactly what it re-exports."""

from __future__ import annotations

import importlib
import types

import pytest

PACKAGES = ["vmcp.config", "vmcp.store", "vmcp.session", "vmcp.backend", "vmcp.authz"]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_complete_and_resolvable(name: str) -> None:
    package = importlib.import_module(name)
    exported = set(package.__all__)
    for member in exported:
        assert hasattr(package, member), f"{name}.__all__ names missing {member}"
    # Classes and functions of vmcp's own that the package makes importable from itself.
    public = {
        member for member, value in vars(package).items()
        if not member.startswith("_") and not isinstance(value, types.ModuleType)
        and str(getattr(value, "__module__", "")).startswith("vmcp")
    }
    assert public <= exported, f"{name} re-exports without listing: {sorted(public - exported)}"
