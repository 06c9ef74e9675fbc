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
from vmcp.dispatch import Target, Work
from vmcp.errors import (
    InvalidRound,
    RequestError,
)
from vmcp.stateless.backends import Caller, StatelessBackends, View
from vmcp.stateless.input_rounds import Ask, Outcome, is_round_token
from vmcp.stateless.pool import BackendKind

logger = logging.getLogger(__name__)

Notify = Callable[[dict[str, Any]], Awaitable[None]]
"""Where a request's notifications go (its response stream)."""


class CallerUpstream:
    """One stateless request's view of the backends (the dispatcher's ``Upstream``)."""

    def __init__(self, backends: StatelessBackends, caller: Caller, *,
                 headers: Headers | None = None, notify: Notify | None = None) -> None:
        self._backends = backends
        self._caller = caller
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
        return CallerUpstream(self._backends, self._caller, notify=self._notify)

    def tool_result(self, result: tuple[BackendKind, Outcome]) -> dict[str, Any]:
        _, outcome = result
        if outcome.result is None:
            raise RequestError(INVALID_PARAMS, "the tool asked for input (input_required), "
                               "which a composite tool's step cannot pass on")
        return outcome.result

    def step_meta(self) -> dict[str, Any]:
        return {k: v for k, v in self._caller.meta.items() if k != "progressToken"}

    async def run_workflow(self, exposed: str, params: Mapping[str, Any], work: Work, *,
                           asks: bool) -> tuple[BackendKind, Outcome]:
        """A workflow that asks the user runs as an ``input_required`` round: the call is
        parked on this replica while the client answers, and its retry (``requestState``,
        one use, bound to the identity and this tool) resumes it, here or - forwarded over
        the relay - from any replica."""
        rounds = self._backends.rounds
        binding, target = self._caller.binding, ("tools/call", exposed)
        state = params.get("requestState")
        if state is not None:
            if not is_round_token(state):
                raise InvalidRound("Invalid or expired requestState")
            return BackendKind.MODERN, await rounds.resume(
                state, binding, target, _responses(params), self._notify)
        if not asks:
            return BackendKind.MODERN, Outcome(result=await work(_cannot_ask, self._notify))
        capabilities = self._caller.capabilities

        async def parked(ask: Ask, notify: Notify) -> dict[str, Any]:
            async def elicit(method: str, question: dict[str, Any] | None
                             ) -> dict[str, Any]:
                if "elicitation" not in capabilities:
                    return {"error": {"code": INVALID_PARAMS, "message": "the client did "
                                      "not declare the elicitation capability"}}
                return await ask(method, question)
            return await work(elicit, notify)

        return BackendKind.MODERN, await rounds.start(binding, target, parked, self._notify)


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
