"""The dispatcher: what each routed or listed MCP method does, for any revision."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any, Final, Generic, TypeVar

from vmcp.aggregate import RoutingTable
from vmcp.audit import record as audit_record
from vmcp.authz import AllowAll, Authorizer
from vmcp.authz import Target as Subject
from vmcp.composite import CompositeRegistry
from vmcp.config import CompositeToolConfig
from vmcp.dispatch.authorization import arguments_of, listed_subject, routed_subject
from vmcp.dispatch.seam import Target, Upstream
from vmcp.dispatch.workflows import WorkflowCall, WorkflowUpstream
from vmcp.errors import INVALID_PARAMS_CODE, NotPermitted, RequestError
from vmcp.identity import ANONYMOUS, Principal

ResultT = TypeVar("ResultT")

COMPOSITE_BACKEND: Final = "vmcp:composite"
"""The backend a composite tool is authorized as coming from (no backend can be named so:
backend names are lower-case letters, digits, ``_`` and ``-``)."""

LISTINGS: Final = {
    "tools/list": "tools",
    "prompts/list": "prompts",
    "resources/list": "resources",
    "resources/templates/list": "resourceTemplates",
}
"""Listing methods and the key of their result's list."""

ROUTED_METHODS: Final = frozenset({
    "tools/call", "prompts/get", "resources/read", "resources/subscribe",
    "resources/unsubscribe", "completion/complete",
})
"""Methods answered by one backend, chosen by the name or URI the request names."""


class Dispatcher(Generic[ResultT]):
    """Serves listings and routed requests over an :class:`Upstream`; one per revision.

    ``resource_not_found_code`` is what the revision answers for a URI no backend serves
    (the handshake revisions have a code of their own; 2026-07-28 uses invalid params).

    ``authorizer`` decides what each caller may use: listings show only that, and a
    routed request is authorized (:meth:`authorize`) before any backend is touched. With
    authorization on, a name that does not exist is refused exactly like a denied one
    (:class:`~vmcp.errors.NotPermitted`), so refusals tell nothing about hidden names.

    ``composites`` are served next to the backends' tools (a composite tool shadows a
    backend tool of the same name) and authorized as themselves; each of their tool steps
    takes the client's own path again (authorized for the caller); the tools they hide are
    neither listed nor callable by clients.
    """

    def __init__(self, *, resource_not_found_code: int,
                 authorizer: Authorizer | None = None,
                 composites: CompositeRegistry | None = None) -> None:
        self._resource_not_found = resource_not_found_code
        self._authorizer: Authorizer = authorizer if authorizer is not None else AllowAll()
        self._composites = composites if composites is not None else CompositeRegistry(())

    @property
    def authorizing(self) -> bool:
        """Whether requests are authorized (else everyone may use everything)."""
        return self._authorizer.enabled

    async def listing(self, upstream: Upstream[ResultT], method: str,
                      params: Mapping[str, Any], principal: Principal = ANONYMOUS
                      ) -> dict[str, Any]:
        """A listing's result, as far as ``principal`` may see it; one page."""
        if params.get("cursor"):
            # No cursor of ours exists to resume.
            raise RequestError(INVALID_PARAMS_CODE, "Invalid cursor")
        routing = await upstream.routing()
        return {LISTINGS[method]: self.visible(principal, routing, method,
                                               self.listed(routing, method))}

    def listed(self, routing: RoutingTable, method: str) -> list[dict[str, Any]]:
        """Everything ``method`` lists, before authorization: the backends' items, and for
        tools the composite tools in place of those they hide or shadow."""
        items = items_of(routing, method)
        if method == "tools/list" and self._composites:
            own = self._composites.definitions()
            unlisted = self._composites.hidden | {t["name"] for t in own}
            items = [t for t in items if t.get("name") not in unlisted] + own
        return items

    def visible(self, principal: Principal, routing: RoutingTable, method: str,
                items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The listed ``items`` (of ``routing``'s ``method`` list, in its order, possibly
        reshaped) that ``principal`` may use; decided in one batch, cached per catalog."""
        if not self._authorizer.enabled:
            return items
        return self._authorizer.filter_listing(
            principal, items, lambda item: self._listed_subject(routing, method, item),
            catalog=routing, listing=f"{method}#{self._composites.generation}")

    def _listed_subject(self, routing: RoutingTable, method: str,
                        item: Mapping[str, Any]) -> Subject | None:
        name = item.get("name")
        if method == "tools/list" and isinstance(name, str) and self._composites.get(name):
            return _composite_subject(name)
        return listed_subject(routing, method, item)

    async def call(self, upstream: Upstream[ResultT], method: str,
                   params: Mapping[str, Any], principal: Principal = ANONYMOUS, *,
                   target: Target | None = None) -> ResultT:
        """Route one request to its backend and return what the backend answers, or run
        the composite tool it names; ``target`` is one :meth:`authorize` already gave (else
        it is authorized here)."""
        if target is None:
            target = await self.authorize(upstream, method, params, principal)
        if target.composite:
            return await self._run_composite(upstream, target.exposed, params, principal)
        return await upstream.call(target)

    async def _step_call(self, principal: Principal, upstream: Upstream[ResultT],
                         method: str, params: Mapping[str, Any]) -> ResultT:
        """A composite tool step's call: the client's own path (authorized again for the
        caller), except that it may reach hidden tools and no composite tool."""
        target = await self.authorize(upstream, method, params, principal, from_step=True)
        return await upstream.call(target)

    async def _run_composite(self, upstream: Upstream[ResultT], name: str,
                             params: Mapping[str, Any], principal: Principal) -> ResultT:
        if not isinstance(upstream, WorkflowUpstream):
            raise RequestError(INVALID_PARAMS_CODE, f"Composite tool {name} cannot be "
                               "served on this path")
        arguments = params.get("arguments")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, Mapping):
            raise RequestError(INVALID_PARAMS_CODE, "arguments must be an object")
        meta = params.get("_meta")
        token = meta.get("progressToken") if isinstance(meta, Mapping) else None
        tool = self._composites.get(name)
        assert tool is not None
        work = self.workflow_call(upstream, tool, arguments, token, principal)
        asks = any(step.type == "elicitation" for step in tool.steps)
        done: ResultT = await upstream.run_workflow(name, params, work, asks=asks)
        return done

    def workflow_call(self, upstream: WorkflowUpstream[ResultT], tool: CompositeToolConfig,
                      arguments: Mapping[str, Any], progress_token: Any,
                      principal: Principal) -> WorkflowCall:
        """A call of ``tool`` whose steps take ``principal``'s own path over ``upstream``
        (also for a run continued from a snapshot: ``tool`` is then the definition the run
        started with)."""
        return WorkflowCall(tool, arguments, upstream.for_steps(),
                            partial(self._step_call, principal), progress_token,
                            self._composites.observer,
                            self._composites.step_observer(tool.name, principal))

    async def authorize(self, upstream: Upstream[ResultT], method: str,
                        params: Mapping[str, Any], principal: Principal, *,
                        from_step: bool = False) -> Target:
        """The target of a routed request, once ``principal`` may use it.

        Raises ``NotPermitted`` (authorization on: denied or unknown) or ``RequestError``
        (authorization off: unknown). The audit record learns the target and the
        policies that decided.
        """
        # A step's call is the composite call's, audited as its step (not as the call).
        record = None if from_step else audit_record.current()
        try:
            target, routing = await self._resolve(upstream, method, params,
                                                  from_step=from_step)
        except RequestError:
            if not self._authorizer.enabled:
                raise
            if record is not None:
                record.denied = True
            raise NotPermitted(f"no {method} target for the request") from None
        subject = _composite_subject(target.exposed) if target.composite else routed_subject(
            routing, method, target.exposed, target.backend, target.params)
        arguments = arguments_of(method, params)
        if record is not None:
            record.target_type, record.name = subject.kind, subject.name
            record.backend, record.original_name = subject.backend, subject.original_name
            record.arguments = arguments
        if self._authorizer.enabled:
            decision = self._authorizer.check(principal, subject, arguments)
            if record is not None:
                record.policy_ids = decision.policy_ids
                record.denied = not decision.allowed
            if not decision.allowed:
                raise NotPermitted(f"{subject.kind} {subject.name!r} denied")
        return target

    async def resolve(self, upstream: Upstream[ResultT], method: str,
                      params: Mapping[str, Any]) -> Target:
        """The target of a routed request; an unknown name re-lists once before it is
        refused."""
        return (await self._resolve(upstream, method, params))[0]

    async def _resolve(self, upstream: Upstream[ResultT], method: str,
                       params: Mapping[str, Any], *, from_step: bool = False
                       ) -> tuple[Target, RoutingTable]:
        """A client's request may name a composite tool but no hidden tool; a step's, any
        backend tool."""
        name = params.get("name")
        if (method == "tools/call" and not from_step and isinstance(name, str)
                and self._composites.get(name) is not None):
            return (Target("", method, name, dict(params), composite=True),
                    await upstream.routing())
        for refresh in (False, True):
            routing = await upstream.routing(refresh=refresh)
            target = _lookup(routing, method, params)
            if target is not None and (from_step or not self._hidden(target)):
                return target, routing
        raise self._not_found(method, params)

    def _hidden(self, target: Target) -> bool:
        return target.hidden or (target.method == "tools/call"
                                 and target.exposed in self._composites.hidden)

    def _not_found(self, method: str, params: Mapping[str, Any]) -> RequestError:
        if method == "tools/call":
            return RequestError(INVALID_PARAMS_CODE, f"Unknown tool: {params.get('name')}")
        if method == "prompts/get":
            return RequestError(INVALID_PARAMS_CODE, f"Unknown prompt: {params.get('name')}")
        if method == "completion/complete":
            ref = params.get("ref")
            ref = ref if isinstance(ref, Mapping) else {}
            if ref.get("type") == "ref/prompt":
                return RequestError(INVALID_PARAMS_CODE, f"Unknown prompt: {ref.get('name')}")
            uri = ref.get("uri")
        else:
            uri = params.get("uri")
        return RequestError(self._resource_not_found, f"Resource not found: {uri}",
                            {"uri": uri})


def items_of(routing: RoutingTable, method: str) -> list[dict[str, Any]]:
    """The aggregated list a listing method answers with."""
    if method == "tools/list":
        return routing.tools
    if method == "prompts/list":
        return routing.prompts
    if method == "resources/list":
        return routing.resources
    return routing.resource_templates


def _lookup(routing: RoutingTable, method: str, params: Mapping[str, Any]) -> Target | None:
    if method in ("tools/call", "prompts/get"):
        name = str(params.get("name"))
        route = routing.route_tool(name) if method == "tools/call" else routing.route_prompt(name)
        if route is None:
            return None
        return Target(route.backend, method, name, {**params, "name": route.name},
                      hidden=not route.visible)
    if method == "completion/complete":
        ref = params.get("ref")
        ref = ref if isinstance(ref, Mapping) else {}
        if ref.get("type") == "ref/prompt":
            name = str(ref.get("name"))
            route = routing.route_prompt(name)
            if route is None:
                return None
            return Target(route.backend, method, name,
                          {**params, "ref": {**ref, "name": route.name}})
        uri = str(ref.get("uri"))
    else:
        uri = str(params.get("uri"))
    backend = routing.route_resource(uri)
    return None if backend is None else Target(backend, method, uri, dict(params))


def _composite_subject(name: str) -> Subject:
    """A composite tool as a policy sees it: a tool of its own (pseudo-)backend."""
    return Subject("tool", name, COMPOSITE_BACKEND, name)
