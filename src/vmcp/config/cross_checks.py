"""Checks that span sections, run on the raw data so they report even when other fields
are invalid (and so ``check-config`` lists every problem at once)."""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from vmcp.config._checks import Loc
from vmcp.config.composite import composite_problems


def _caller_credential_problems(data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
    """Outgoing auth that passes on the caller's token needs incoming auth that has one:
    an anonymous gateway refuses every ``Authorization`` header, so there is nothing to
    forward or exchange."""
    auth = data.get("auth")
    incoming = auth.get("incoming") if isinstance(auth, Mapping) else None
    incoming_type = incoming.get("type", "anonymous") if isinstance(incoming, Mapping) else (
        "anonymous")
    if incoming_type != "anonymous":
        return []
    backends = data.get("backends", ())
    problems: list[tuple[Loc, str]] = []
    for index, backend in enumerate(backends if isinstance(backends, list | tuple) else ()):
        outgoing = backend.get("auth") if isinstance(backend, Mapping) else None
        kind = outgoing.get("type") if isinstance(outgoing, Mapping) else None
        if kind in ("forward", "token_exchange"):
            problems.append((("backends", index, "auth", "type"),
                             f"{kind!r} passes on the caller's token, but auth.incoming.type is "
                             "'anonymous' (no tokens): use 'oidc' or 'static'"))
    return problems


def cross_section_problems(data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
    """Checks spanning sections, on raw data so they run even when other fields are invalid.

    References to backends are checked against the entries that have a string name, and
    only when ``backends`` is a list at all.
    """
    problems: list[tuple[Loc, str]] = []
    backends = data.get("backends", ())
    first_index: dict[str, int] = {}
    is_list = isinstance(backends, list | tuple)
    for index, backend in enumerate(backends if isinstance(backends, list | tuple) else ()):
        name = backend.get("name") if isinstance(backend, Mapping) else None
        if not isinstance(name, str):
            continue
        if name in first_index:
            problems.append(
                (
                    ("backends", index, "name"),
                    f"duplicate backend name {name!r} (also backends[{first_index[name]}])",
                )
            )
        else:
            first_index[name] = index
    problems += _caller_credential_problems(data)
    problems += composite_problems(data)
    aggregation = data.get("aggregation", {})
    if not isinstance(aggregation, Mapping):
        return problems
    known = ", ".join(sorted(first_index)) or "none configured"
    if is_list:
        order = aggregation.get("priority_order", ())
        for index, name in enumerate(order if isinstance(order, list | tuple) else ()):
            if isinstance(name, str) and name not in first_index:
                problems.append(
                    (
                        ("aggregation", "priority_order", index),
                        f"unknown backend {name!r} (backends: {known})",
                    )
                )
        tools = aggregation.get("tools", {})
        for name in tools if isinstance(tools, Mapping) else ():
            if name not in first_index:
                problems.append(
                    (
                        ("aggregation", "tools", name),
                        f"unknown backend {name!r} (backends: {known})",
                    )
                )
    conflict = aggregation.get("conflict", "prefix")
    prefix_format = aggregation.get("prefix_format", "{backend}_")
    if conflict == "prefix" and isinstance(prefix_format, str) and len(first_index) > 1:
        try:
            fields = {field for _, field, _, _ in string.Formatter().parse(prefix_format)}
        except ValueError:
            fields = {"backend"}  # malformed: reported by the field's own check
        if "backend" not in fields:
            problems.append(
                (
                    ("aggregation", "prefix_format"),
                    f"{prefix_format!r} must contain {{backend}} when conflict is 'prefix' and "
                    "there are several backends, or their tools would shadow each other "
                    "(use conflict: priority or manual for bare names)",
                )
            )
    return problems
