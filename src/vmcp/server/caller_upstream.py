"""One stateless request's view of the backends: the 2026-07-28 revision's ``Upstream``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mcp.shared.inbound import (
    MCP_PARAM_HEADER_PREFIX,
    validate_mcp_param_headers,
)
from mcp_types import (
    INVALID_PARAMS,
)
from starlette.datastructures import Headers

from vmcp.aggregate import RoutingTable
from vmcp.composite import Asked, AwaitingAnswer, StepFailed, WorkflowSuspended
from vmcp.config import CompositeToolConfig
from vmcp.dispatch import NO_ELICITATION, Target, WorkflowCall, is_handle, new_handle, state_key
from vmcp.errors import (
    InvalidRound,
    RequestError,
)
from vmcp.stateless.backends import Caller, StatelessBackends, View
from vmcp.stateless.input_rounds import Outcome
from vmcp.stateless.pool import BackendKind
from vmcp.store.workflow_states import WorkflowStates

logger = logging.getLogger(__name__)

Notify = Callable[[dict[str, Any]], Awaitable[None]]
"""Where a request's notifications go (its response stream)."""


class CallerUpstream:
    """One stateless request's view of the backends (the dispatcher's ``Upstream``)."""

    def __init__(self, backends: StatelessBackends, caller: Caller, *,
                 headers: Headers | None = None, notify: Notify | None = None,
                 states: WorkflowStates | None = None) -> None:
        self._backends = backends
        self._caller = caller
        self._states = states
        self._headers = headers if headers is not None else Headers()
        self._notify = notify if notify is not None else _drop
        self._view: View | None = None

    @property
    def view(self) -> View:
        """The view the last routing came from."""
        assert self._view is not None, "routing() first"
        return self._view

    async def routing(self, *, refresh: bool = False) -> RoutingTable:
        self._view = await self._backends.view(self._caller, refresh=refresh)
        return self._view.routing

    async def call(self, target: Target) -> tuple[BackendKind, Outcome]:
        forwarded: dict[str, str] = {}
        if target.method == "tools/call":
            forwarded = _checked_param_headers(self.view, target.exposed, target.params,
                                               self._headers)
        return await self._backends.call(
            self._caller, target.backend, target.method, target.params,
            target=(target.method, target.exposed), headers=forwarded, notify=self._notify)

    # -- composite tools (WorkflowUpstream) ------------------------------------------

    def for_steps(self) -> CallerUpstream:
        """Steps carry none of the composite call's ``Mcp-Param-*`` headers."""
        return CallerUpstream(self._backends, self._caller, notify=self._notify,
                              states=self._states)

    def tool_result(self, result: tuple[BackendKind, Outcome]) -> dict[str, Any]:
        _, outcome = result
        if outcome.result is None:
            raise RequestError(INVALID_PARAMS, "the tool asked for input (input_required), "
                               "which a composite tool's step cannot pass on")
        return outcome.result

    def step_meta(self) -> dict[str, Any]:
        return {k: v for k, v in self._caller.meta.items() if k != "progressToken"}

    async def run_workflow(self, exposed: str, params: Mapping[str, Any],
                           work: WorkflowCall, *, asks: bool) -> tuple[BackendKind, Outcome]:
        """A workflow that asks the user answers ``input_required``: once nothing else can
        go on without the answer, the run's snapshot is kept in the store under a fresh
        handle (the ``requestState``: one use, bound to the identity and this tool, gone
        after the tool's ``answer_ttl_seconds``), and the retry that carries it continues
        the run on whichever replica it reaches."""
        state = params.get("requestState")
        if state is None and not asks:
            return BackendKind.MODERN, Outcome(result=await work(_cannot_ask, self._notify))
        assert self._states is not None, "a composite call that asks needs the state store"
        bound = (self._caller.binding, exposed)
        snapshot: Mapping[str, Any] | None = None
        answers: dict[str, dict[str, Any]] = {}
        if state is not None:
            responses = _responses(params)
            record = await self._states.take(state_key(state, *bound)) if is_handle(
                state) else None
            if record is None or not isinstance(record.get("snapshot"), dict):
                raise InvalidRound("Invalid or expired requestState: no run of this tool "
                                   "waits for it (expired, already answered, or not yours)")
            snapshot = record["snapshot"]
            step = str(record.get("step"))
            answer = (responses or {}).get(step)
            if answer is not None and not isinstance(answer, dict):
                raise InvalidRound(f"inputResponses[{step!r}] must be an object")
            if answer is not None:
                answers[step] = answer
        try:
            result = await work.run(self._notify, self._suspending, snapshot=snapshot,
                                    answers=answers)
        except WorkflowSuspended as suspended:
            handle = new_handle()
            ttl = CompositeToolConfig.model_validate(suspended.snapshot["tool"]
                                                     ).answer_ttl_seconds
            await self._states.create(state_key(handle, *bound), {
                "snapshot": suspended.snapshot, "step": suspended.step}, ttl)
            return BackendKind.MODERN, Outcome(
                input_requests={suspended.step: {"method": "elicitation/create",
                                                 "params": suspended.question}},
                request_state=handle)
        except ValueError:
            raise InvalidRound("Invalid or expired requestState: the stored run cannot "
                               "be continued by this version") from None
        return BackendKind.MODERN, Outcome(result=result)

    async def _suspending(self, params: dict[str, Any], asked: Asked) -> dict[str, Any]:
        """A 2026-07-28 client is asked by the answer to its request, not in the middle."""
        if "elicitation" not in self._caller.capabilities:
            raise StepFailed(NO_ELICITATION)
        raise AwaitingAnswer


def _checked_param_headers(view: View, tool: str, params: Mapping[str, Any],
                           headers: Headers) -> dict[str, str]:
    """Refuse ``Mcp-Param-*`` headers that disagree with the arguments; the headers to
    send on (to a backend of this revision, which checks them again)."""
    schemas = view.shaped.get("tool schemas")
    if schemas is None:
        schemas = {str(t.get("name")): t.get("inputSchema") for t in view.routing.tools}
        view.shaped["tool schemas"] = schemas
    arguments = params.get("arguments")
    rejection = validate_mcp_param_headers(
        schemas.get(tool), arguments if isinstance(arguments, dict) else {}, headers)
    if rejection is not None:
        raise RequestError(rejection.code, rejection.message, rejection.data)
    prefix = MCP_PARAM_HEADER_PREFIX.lower()
    return {k: v for k, v in headers.items() if k.startswith(prefix)}


async def _cannot_ask(method: str, params: dict[str, Any] | None) -> dict[str, Any]:
    return {"error": {"code": INVALID_PARAMS, "message": f"{method} is not expected here"}}


def _responses(params: Mapping[str, Any]) -> dict[str, Any] | None:
    responses = params.get("inputResponses")
    if responses is not None and not isinstance(responses, dict):
        raise InvalidRound("inputResponses must be an object")
    return responses


async def _drop(message: dict[str, Any]) -> None:
    """Where the notifications of a request that cannot receive any go."""
