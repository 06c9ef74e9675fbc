"""Composite tools served by the dispatcher, the same way for both revisions.

A composite tool's call runs its workflow here; each tool step goes back through
:meth:`Dispatcher.call <vmcp.dispatch.Dispatcher>`'s routing with the caller's own
upstream, so a step reaches exactly what the caller could reach (and is re-listed,
refused or authorized like a call of the caller's), except that a step may call tools
hidden from listings. What differs between revisions, the upstream supplies: how a
routed result holds a ``CallToolResult``, the envelope a step's request carries, and
how the user is asked (a request on the session's stream, or an ``input_required``
round for a 2026-07-28 client).

While a run waits for the user, what continues it is kept in the store
(:mod:`vmcp.store.workflow_states`) under a one-use handle, so the answer may reach any
replica, even after the one that asked is gone: :func:`state_key` binds the handle to
whom it was given.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Protocol, TypeVar, runtime_checkable

from vmcp.backend import BackendRpcError
from vmcp.composite import Asked, StepFailed, WorkflowRun
from vmcp.composite.engine import Observer, StepObserver
from vmcp.config import CompositeToolConfig
from vmcp.dispatch.seam import Upstream
from vmcp.errors import BackendError, NotPermitted, RequestError

ResultT = TypeVar("ResultT")


Ask = Callable[[str, dict[str, Any] | None], Awaitable[dict[str, Any]]]
"""Puts a request (method, params) to the client; its answer, ``{"result": ...}`` or
``{"error": ...}``."""

Notify = Callable[[dict[str, Any]], Awaitable[None]]
"""Sends a notification to the client request the workflow currently answers."""

Elicit = Callable[[dict[str, Any], Asked], Awaitable[dict[str, Any]]]
"""Puts one step's question (``elicitation/create`` params) to the user; the
``ElicitResult``. Raises ``StepFailed`` or ``AwaitingAnswer`` (see ``StepHost.elicit``)."""

NO_ELICITATION: Final = ("the client did not declare the elicitation capability, so an "
                         "elicitation step cannot ask it")
"""Why an elicitation step fails for a client that cannot be asked (its ``on_error``
applies: ``continue`` lets the step's ``default`` stand in)."""

HANDLE_PREFIX: Final = "vmcp-wf."
"""Starts every handle of a waiting workflow run the gateway gives out (as an
``elicitation/create`` request id, or as a ``requestState``)."""


def new_handle() -> str:
    """An unguessable handle for one question of one run."""
    return HANDLE_PREFIX + secrets.token_urlsafe(24)


def is_handle(value: object) -> bool:
    return isinstance(value, str) and value.startswith(HANDLE_PREFIX) and len(value) < 200


def state_key(handle: str, *bound_to: str) -> str:
    """Where the run ``handle`` names is kept, for the caller it was given to: another
    caller presenting the handle looks elsewhere and finds nothing."""
    digest = hashlib.sha256("\x00".join((*bound_to, handle)).encode()).hexdigest()
    return f"wf:{digest}"

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

    async def run_workflow(self, exposed: str, params: Mapping[str, Any],
                           work: WorkflowCall, *, asks: bool) -> ResultT:
        """Run ``work`` (a composite tool's call, or continue it when ``params`` answer an
        earlier question) with this revision's way of asking the client; ``asks`` says
        whether the workflow may ask at all."""
        ...


class WorkflowCall:
    """One call of a composite tool, ready to run, or to continue from a snapshot.

    Calling it (``work(ask, notify)``) runs it afresh, asking through ``ask``;
    :meth:`run` lets the revision choose how the user is asked and where the run starts.
    """

    def __init__(self, tool: CompositeToolConfig, arguments: Mapping[str, Any],
                 steps: WorkflowUpstream[Any], routed: RoutedCall[Any], progress_token: Any,
                 observer: Observer | None = None,
                 step_observer: StepObserver | None = None) -> None:
        self.tool = tool
        self.arguments = dict(arguments)
        self.progress_token = progress_token
        self._steps = steps
        self._routed = routed
        self._observer = observer
        self._step_observer = step_observer

    async def __call__(self, ask: Ask, notify: Notify) -> dict[str, Any]:
        return await self.run(notify, asking(ask))

    async def run(self, notify: Notify, elicit: Elicit, *,
                  snapshot: Mapping[str, Any] | None = None,
                  answers: Mapping[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """The call's ``CallToolResult``, from the start or from ``snapshot`` with
        ``answers``; raises ``WorkflowSuspended`` (see ``AwaitingAnswer``), and
        ``ValueError`` for a snapshot this code cannot read."""
        host = WorkflowHost(self._steps, self._routed, elicit, notify, self.progress_token)
        if snapshot is None:
            run = WorkflowRun(self.tool, self.arguments, host, self._observer,
                              step_observer=self._step_observer)
        else:
            run = WorkflowRun.from_snapshot(snapshot, answers or {}, host, self._observer,
                                            step_observer=self._step_observer)
        return await run.run()


def asking(ask: Ask) -> Elicit:
    """An ``Elicit`` over a plain request to the client, waited for in place."""

    async def elicit(params: dict[str, Any], asked: Asked) -> dict[str, Any]:
        try:
            answer = await ask("elicitation/create", params)
        except TimeoutError:
            raise StepFailed("the user did not answer in time") from None
        return elicit_result(answer)

    return elicit


def elicit_result(answer: Mapping[str, Any]) -> dict[str, Any]:
    """The ``ElicitResult`` of a client's JSON-RPC answer; raises ``StepFailed`` for an
    error answer."""
    error = answer.get("error")
    if error is not None:
        message = error.get("message") if isinstance(error, Mapping) else error
        raise StepFailed(f"the client could not be asked: {message}")
    result = answer.get("result")
    return result if isinstance(result, dict) else {}


class WorkflowHost:
    """A workflow's way to the tools, the user and the client, for one composite call."""

    def __init__(self, steps: WorkflowUpstream[Any], routed: RoutedCall[Any], elicit: Elicit,
                 notify: Notify, progress_token: Any) -> None:
        self._steps = steps
        self._routed = routed
        self._elicit = elicit
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

    async def elicit(self, params: dict[str, Any], asked: Asked) -> dict[str, Any]:
        return await self._elicit(params, asked)

    async def progress(self, done: int, total: int, message: str) -> None:
        if self._token is None:
            return
        await self._notify({
            "jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": self._token, "progress": done, "total": total,
                       "message": message}})

