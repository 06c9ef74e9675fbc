"""The composite tools of one configuration: their definitions, and running one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vmcp.composite.engine import Observer, StepHost, WorkflowRun, output_schema
from vmcp.config import CompositeToolConfig

__all__ = ["CompositeRegistry"]


class CompositeRegistry:
    """Composite tools by exposed name; immutable once built."""

    def __init__(self, tools: Sequence[CompositeToolConfig]) -> None:
        self._tools = {tool.name: tool for tool in tools}
        self._definitions = tuple(_definition(tool) for tool in tools)
        self.hidden = frozenset(name for tool in tools for name in tool.hide_tools)
        """Exposed backend tool names left out of listings and refused to clients."""
        self.observer: Observer | None = None
        """Told of every finished call (metrics)."""

    def __bool__(self) -> bool:
        return bool(self._tools)

    def get(self, name: str) -> CompositeToolConfig | None:
        return self._tools.get(name)

    def definitions(self) -> list[dict[str, Any]]:
        """What ``tools/list`` shows of the composite tools."""
        return [dict(d) for d in self._definitions]

    def start(self, name: str, arguments: Mapping[str, Any], host: StepHost) -> WorkflowRun:
        """A run of the composite tool ``name`` (which must exist) with ``arguments``."""
        return WorkflowRun(self._tools[name], arguments, host, self.observer)


def _definition(tool: CompositeToolConfig) -> dict[str, Any]:
    definition: dict[str, Any] = {"name": tool.name, "inputSchema": dict(tool.parameters)}
    if tool.description:
        definition["description"] = tool.description
    if tool.output is not None:
        definition["outputSchema"] = output_schema(tool.output)
    return definition
