"""Composite tools served by the dispatcher, the same way for both revisions.

A composite tool's call runs its workflow here; each tool step goes back through
:meth:`Dispatcher.call <vmcp.dispatch.Dispatcher>`'s routing with the caller's own
upstream, so a step reaches exactly what the caller could reach (and is re-listed,
refused or authorized like a call of the caller's), except that a step may call tools
hidden from listings. What differs between revisions, the upstream supplies: how a
routed result holds a ``CallToolResult``, the envelope a step's request carries, how
the client is notified and how the user is asked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

from vmcp.backend import BackendRpcError
from vmcp.composite import StepFailed
from vmcp.dispatch.seam import Upstream
from vmcp.errors import BackendError, RequestError

ResultT = TypeVar("ResultT")


@runtime_checkable
class WorkflowUpstream(Upstream[ResultT], Protocol[ResultT]):
    """An upstream that can serve composite tools."""

    def for_steps(self) -> WorkflowUpstream[ResultT]:
        """The upstream a workflow's steps are sent through (without what only the
        composite tool's own request carries, such as its parameter headers)."""
        ...

    def tool_result(self, result: ResultT) -> dict[str, Any]:
        """The ``CallToolResult`` a routed ``tools/call`` answered; raises
        ``RequestError`` when it is not one (a round asking the client for input)."""
        ...

    def as_result(self, result: dict[str, Any]) -> ResultT:
        """A composite tool's ``CallToolResult`` as this revision returns a call's."""
        ...

    def step_meta(self) -> dict[str, Any]:
        """The ``_meta`` a step's request carries (never the client's progress token)."""
        ...

    async def notify(self, message: dict[str, Any]) -> None:
        """Send a notification to the client on the call's response stream."""
        ...

    async def elicit(self, params: dict[str, Any]) -> dict[str, Any]:
        """Ask the user; the ``ElicitResult``. Raises ``RequestError`` when this client
        cannot be asked."""
        ...


RoutedCall = Callable[[Upstream[ResultT], str, Mapping[str, Any]], Awaitable[ResultT]]


class WorkflowHost:
    """A workflow's way to the tools, the user and the client, for one composite call."""

    def __init__(self, upstream: WorkflowUpstream[Any], routed: RoutedCall[Any],
                 progress_token: Any) -> None:
        self._upstream = upstream
        self._steps = upstream.for_steps()
        self._routed = routed
        self._token = progress_token

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        params: dict[str, Any] = {"name": name, "arguments": arguments}
        meta = self._steps.step_meta()
        if meta:
            params["_meta"] = meta
        try:
            return self._steps.tool_result(await self._routed(self._steps, "tools/call",
                                                              params))
        except RequestError as exc:
            raise StepFailed(exc.message) from None
        except BackendRpcError as exc:
            raise StepFailed(f"tool {name!r}: {exc.message}") from None
        except BackendError as exc:
            raise StepFailed(f"tool {name!r}: {exc}") from None

    async def input_schema(self, name: str) -> Mapping[str, Any] | None:
        tool = (await self._steps.routing()).tool(name)
        schema = tool.get("inputSchema") if tool is not None else None
        return schema if isinstance(schema, Mapping) else None

    async def elicit(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self._upstream.elicit(params)
        except RequestError as exc:
            raise StepFailed(exc.message) from None

    async def progress(self, done: int, total: int, message: str) -> None:
        if self._token is None:
            return
        await self._upstream.notify({
            "jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": self._token, "progress": done, "total": total,
                       "message": message}})
