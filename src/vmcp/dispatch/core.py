"""The dispatcher: what each routed or listed MCP method does, for any revision."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Generic, TypeVar

from vmcp.aggregate import RoutingTable
from vmcp.composite import CompositeRegistry
from vmcp.dispatch.seam import Target, Upstream
from vmcp.dispatch.workflows import Ask, Notify, WorkflowHost, WorkflowUpstream
from vmcp.errors import INVALID_PARAMS_CODE, RequestError

ResultT = TypeVar("ResultT")

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
    ``composites`` are served next to the backends' tools (a composite tool shadows a
    backend tool of the same name); the tools they hide are neither listed nor callable
    by clients.
    """

    def __init__(self, *, resource_not_found_code: int,
                 composites: CompositeRegistry | None = None) -> None:
        self._resource_not_found = resource_not_found_code
        self._composites = composites if composites is not None else CompositeRegistry(())

    async def listing(self, upstream: Upstream[ResultT], method: str,
                      params: Mapping[str, Any]) -> dict[str, Any]:
        """A listing's result; the aggregated lists come in one page."""
        if params.get("cursor"):
            # No cursor of ours exists to resume.
            raise RequestError(INVALID_PARAMS_CODE, "Invalid cursor")
        routing = await upstream.routing()
        items = items_of(routing, method)
        if method == "tools/list" and self._composites:
            own = self._composites.definitions()
            unlisted = self._composites.hidden | {t["name"] for t in own}
            items = [t for t in items if t.get("name") not in unlisted] + own
        return {LISTINGS[method]: items}

    async def call(self, upstream: Upstream[ResultT], method: str,
                   params: Mapping[str, Any]) -> ResultT:
        """Route one request to its backend and return what the backend answers, or run
        the composite tool it names."""
        return await self._call(upstream, method, params, from_step=False)

    async def _step_call(self, upstream: Upstream[ResultT], method: str,
                         params: Mapping[str, Any]) -> ResultT:
        """A composite tool step's call: the client's path, hidden tools included."""
        return await self._call(upstream, method, params, from_step=True)

    async def _call(self, upstream: Upstream[ResultT], method: str,
                    params: Mapping[str, Any], *, from_step: bool) -> ResultT:
        """The one path of a routed request, a client's or a step's: a rule added here
        (authorization) applies to both. Steps reach backend tools only, listed or not."""
        if method == "tools/call" and self._composites and not from_step:
            name = params.get("name")
            if isinstance(name, str) and self._composites.get(name) is not None:
                return await self._run_composite(upstream, name, params)
        target = await self.resolve(upstream, method, params)
        if not from_step and (target.hidden or (
                method == "tools/call" and target.exposed in self._composites.hidden)):
            raise self._not_found(method, params)
        return await upstream.call(target)

    async def _run_composite(self, upstream: Upstream[ResultT], name: str,
                             params: Mapping[str, Any]) -> ResultT:
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
        steps = upstream.for_steps()
        tool = self._composites.get(name)
        assert tool is not None

        async def work(ask: Ask, notify: Notify) -> dict[str, Any]:
            host = WorkflowHost(steps, self._step_call, ask, notify, token)
            return await self._composites.start(name, arguments, host).run()

        asks = any(step.type == "elicitation" for step in tool.steps)
        done: ResultT = await upstream.run_workflow(name, params, work, asks=asks)
        return done

    async def resolve(self, upstream: Upstream[ResultT], method: str,
                      params: Mapping[str, Any]) -> Target:
        """The target of a routed request; an unknown name re-lists once before it is
        refused."""
        for refresh in (False, True):
            target = _lookup(await upstream.routing(refresh=refresh), method, params)
            if target is not None:
                return target
        raise self._not_found(method, params)

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
