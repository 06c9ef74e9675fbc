"""The composite tools of one configuration: their definitions, and running one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from vmcp.composite.engine import Observer, StepObserver, output_schema
from vmcp.config import CompositeToolConfig
from vmcp.identity import Principal

__all__ = ["CompositeRegistry"]


class CompositeRegistry:
    """Composite tools by exposed name.

    A reload :meth:`replace` swaps the whole set at once; a run holds the definition it
    started with, so a run under way finishes as it began.
    """

    def __init__(self, tools: Sequence[CompositeToolConfig]) -> None:
        self.observer: Observer | None = None
        """Told of every finished call (metrics)."""
        self.step_events: Callable[[str, Principal], StepObserver] | None = None
        """Gives, per call (tool, caller), what is told of its steps (the audit trail)."""
        self.replace(tools)

    def replace(self, tools: Sequence[CompositeToolConfig]) -> bool:
        """Serve ``tools`` from now on; whether anything changed."""
        before = getattr(self, "_tools", None)
        self.generation = getattr(self, "generation", -1) + 1
        """Counts replacements: what a cached listing was made from."""
        self._tools = {tool.name: tool for tool in tools}
        self._definitions = tuple(_definition(tool) for tool in tools)
        self.hidden = frozenset(name for tool in tools for name in tool.hide_tools)
        """Exposed backend tool names left out of listings and refused to clients."""
        return before != self._tools

    def step_observer(self, tool: str, principal: Principal) -> StepObserver | None:
        return self.step_events(tool, principal) if self.step_events is not None else None

    def __bool__(self) -> bool:
        return bool(self._tools)

    def get(self, name: str) -> CompositeToolConfig | None:
        return self._tools.get(name)

    def definitions(self) -> list[dict[str, Any]]:
        """What ``tools/list`` shows of the composite tools."""
        return [dict(d) for d in self._definitions]


def _definition(tool: CompositeToolConfig) -> dict[str, Any]:
    definition: dict[str, Any] = {"name": tool.name, "inputSchema": dict(tool.parameters)}
    if tool.description:
        definition["description"] = tool.description
    if tool.output is not None:
        definition["outputSchema"] = output_schema(tool.output)
    return definition
