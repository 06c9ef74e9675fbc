"""Composite tools served by the dispatcher, the same way for both revisions.

A composite tool's call runs its workflow here; each tool step goes back through
:meth:`Dispatcher.call <vmcp.dispatch.Dispatcher>`'s routing with the caller's own
upstream, so a step reaches exactly what the caller could reach (and is re-listed,
refused or authorized like a call of the caller's), except that a step may call tools
hidden from listings. What differs between revisions, the upstream supplies: how a
routed result holds a ``CallToolResult``, the envelope a step's request carries, and
how the user is asked (a request on the session's stream, or an ``input_required``
round for a 2026-07-28 client).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

from vmcp.backend import BackendRpcError
from vmcp.composite import StepFailed
from vmcp.dispatch.seam import Upstream
from vmcp.errors import BackendError, NotPermitted, RequestError

ResultT = TypeVar("ResultT")


Ask = Callable[[str, dict[str, Any] | None], Awaitable[dict[str, Any]]]
"""Puts a request (method, params) to the client; its answer, ``{"result": ...}`` or
``{"error": ...}``."""

Notify = Callable[[dict[str, Any]], Awaitable[None]]
"""Sends a notification to the client request the workflow currently answers."""

Work = Callable[[Ask, Notify], Awaitable[dict[str, Any]]]
"""A composite tool's run: may ask the client and notify it; returns the call's result."""

RoutedCall = Callable[[Upstream[ResultT], str, Mapping[str, Any]], Awaitable[ResultT]]
"""The dispatcher's routing of one step's request."""


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

    def step_meta(self) -> dict[str, Any]:
        """The ``_meta`` a step's request carries (never the client's progress token)."""
        ...

    async def run_workflow(self, exposed: str, params: Mapping[str, Any], work: Work, *,
                           asks: bool) -> ResultT:
        """Run ``work`` (a composite tool's call, or continue it when ``params`` answer an
        earlier question) with this revision's way of asking the client; ``asks`` says
        whether the workflow may ask at all."""
        ...


class WorkflowHost:
    """A workflow's way to the tools, the user and the client, for one composite call."""

    def __init__(self, steps: WorkflowUpstream[Any], routed: RoutedCall[Any], ask: Ask,
                 notify: Notify, progress_token: Any) -> None:
        self._steps = steps
        self._routed = routed
        self._ask = ask
        self._notify = notify
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
        except NotPermitted:
            # The caller's own answer for a name it may not use, naming nothing more.
            raise StepFailed(f"tool {name!r}: not found or not permitted") from None
        except BackendRpcError as exc:
            raise StepFailed(f"tool {name!r}: {exc.message}") from None
        except BackendError as exc:
            raise StepFailed(f"tool {name!r}: {exc}") from None
        except TimeoutError:
            raise StepFailed(f"tool {name!r}: no answer in time") from None

    async def input_schema(self, name: str) -> Mapping[str, Any] | None:
        tool = (await self._steps.routing()).tool(name)
        schema = tool.get("inputSchema") if tool is not None else None
        return schema if isinstance(schema, Mapping) else None

    async def elicit(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            answer = await self._ask("elicitation/create", params)
        except TimeoutError:
            raise StepFailed("the user did not answer in time") from None
        error = answer.get("error")
        if error is not None:
            message = error.get("message") if isinstance(error, Mapping) else error
            raise StepFailed(f"the client could not be asked: {message}")
        result = answer.get("result")
        return result if isinstance(result, dict) else {}

    async def progress(self, done: int, total: int, message: str) -> None:
        if self._token is None:
            return
        await self._notify({
            "jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": self._token, "progress": done, "total": total,
                       "message": message}})

