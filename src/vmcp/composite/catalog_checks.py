"""A composite tool's steps checked against what the backends offer right now.

The configuration alone cannot tell whether a step's tool exists or takes the arguments
the step gives it: that needs the backends' catalogs (``vmcp check-config --probe``).
A step may name any exposed tool, listed or hidden.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from vmcp.config import CompositeToolConfig

__all__ = ["catalog_problems"]

Tools = Mapping[str, Mapping[str, Any]]
"""Exposed tool name → the tool as listed (with its ``inputSchema``)."""


def catalog_problems(tools: tuple[CompositeToolConfig, ...], offered: Tools) -> list[str]:
    """Each problem as ``composite_tools[i].steps[j].field: message``."""
    problems: list[str] = []
    for index, tool in enumerate(tools):
        where = f"composite_tools[{index}]"
        if tool.name in offered:
            problems.append(f"{where}.name: {tool.name!r} is also a backend tool, which the "
                            "composite tool hides")
        for hidden in tool.hide_tools:
            if hidden not in offered:
                problems.append(f"{where}.hide_tools: no backend offers {hidden!r}")
        for position, step in enumerate(tool.steps):
            at = f"{where}.steps[{position}]"
            if step.tool is not None:
                problems += _call_problems(at, step.tool, step.arguments, offered)
            if step.step is not None:
                problems += _call_problems(f"{at}.step", step.step.tool, step.step.arguments,
                                           offered)
    return problems


def _call_problems(at: str, name: str, arguments: Mapping[str, Any],
                   offered: Tools) -> Iterator[str]:
    tool = offered.get(name)
    if tool is None:
        yield f"{at}.tool: no backend offers a tool {name!r}"
        return
    schema = tool.get("inputSchema")
    if not isinstance(schema, Mapping):
        return
    properties = schema.get("properties")
    if isinstance(properties, Mapping) and schema.get("additionalProperties") is not True:
        for key in arguments:
            if key not in properties:
                known = ", ".join(sorted(properties)) or "none"
                yield f"{at}.arguments.{key}: not a parameter of {name!r} (it takes: {known})"
    required = schema.get("required")
    for key in required if isinstance(required, list) else ():
        if key not in arguments:
            yield f"{at}.arguments: {name!r} requires {key!r}"
