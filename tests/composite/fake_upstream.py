"""An in-process upstream whose tools are Python coroutines, for driving workflows step
by step: a tool can wait on an event the test sets, so timing is shown by events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from vmcp.aggregate import BackendCatalog, RoutingTable, build_routing_table
from vmcp.config import AggregationConfig, BackendToolsConfig, ToolOverride
from vmcp.dispatch import Target

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def text_result(text: str, *, error: bool = False,
                structured: Any = None) -> dict[str, Any]:
    result: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": error}
    if structured is not None:
        result["structuredContent"] = structured
    return result


class ToolBox:
    """Tools by name, each a coroutine of its arguments; every call is recorded."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}
        self.schemas: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.started: dict[str, anyio.Event] = {}
        self.cancelled: list[str] = []

    def tool(self, name: str, schema: dict[str, Any] | None = None
             ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.handlers[name] = handler
            self.schemas[name] = schema or {"type": "object"}
            return handler
        return register

    def table(self, hidden: tuple[str, ...] = ()) -> RoutingTable:
        catalog = BackendCatalog(tools=[{"name": n, "inputSchema": s}
                                        for n, s in self.schemas.items()])
        rules = BackendToolsConfig(overrides={n: ToolOverride(visible=False) for n in hidden})
        return build_routing_table({"b": catalog}, AggregationConfig(
            prefix_format="", tools={"b": rules}))


class FakeUpstream:
    """A ``WorkflowUpstream`` over a :class:`ToolBox`, as a session client sees it."""

    def __init__(self, box: ToolBox, *, hidden: tuple[str, ...] = (),
                 answers: list[dict[str, Any]] | None = None) -> None:
        self.box = box
        self._table = box.table(hidden)
        self.notifications: list[dict[str, Any]] = []
        self.elicitations: list[dict[str, Any]] = []
        self._answers = answers or []

    async def routing(self, *, refresh: bool = False) -> RoutingTable:
        return self._table

    async def call(self, target: Target) -> dict[str, Any]:
        name = str(target.params["name"])
        arguments = dict(target.params.get("arguments") or {})
        self.box.calls.append((name, arguments))
        self.box.started.setdefault(name, anyio.Event()).set()
        try:
            return await self.box.handlers[name](arguments)
        except anyio.get_cancelled_exc_class():
            self.box.cancelled.append(name)
            raise

    def for_steps(self) -> FakeUpstream:
        return self

    def tool_result(self, result: dict[str, Any]) -> dict[str, Any]:
        return result

    def step_meta(self) -> dict[str, Any]:
        return {}

    async def run_workflow(self, exposed: str, params: Any, work: Any, *,
                           asks: bool) -> dict[str, Any]:
        result: dict[str, Any] = await work(self._ask, self._notify)
        return result

    async def _notify(self, message: dict[str, Any]) -> None:
        self.notifications.append(message)

    async def _ask(self, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        assert method == "elicitation/create"
        self.elicitations.append(params or {})
        answer = self._answers.pop(0)
        if "raise" in answer:
            raise answer["raise"]
        return {"result": answer}
