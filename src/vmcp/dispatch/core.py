"""The dispatcher: what each routed or listed MCP method does, for any revision."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

from vmcp.aggregate import RoutingTable
from vmcp.audit import record as audit_record
from vmcp.authz import AllowAll, Authorizer
from vmcp.dispatch.authorization import arguments_of, listed_subject, routed_subject
from vmcp.errors import INVALID_PARAMS_CODE, NotPermitted, RequestError
from vmcp.identity import ANONYMOUS, Principal

ResultT_co = TypeVar("ResultT_co", covariant=True)
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


@dataclass(frozen=True)
class Target:
    """Where a routed request goes: ``backend``, with ``params`` naming things the way the
    backend does; ``exposed`` is the name or URI the client used (what a multi-round
    request stays bound to)."""

    backend: str
    method: str
    exposed: str
    params: dict[str, Any]


class Upstream(Protocol[ResultT_co]):
    """The backends as one request sees them.

    The session-based revisions implement it over the client session's live backend
    connections; the stateless revision over the caller's view of every backend.
    """

    async def routing(self, *, refresh: bool = False) -> RoutingTable:
        """The routing table; ``refresh`` re-lists the backends first (an unknown name may
        be new: its ``list_changed`` may have gone elsewhere). May return the same table
        when a re-listing is not due."""
        ...

    async def call(self, target: Target) -> ResultT_co:
        """Send one routed request to its backend. Raises ``BackendRpcError`` for the
        backend's own error, other ``BackendError`` kinds for failures."""
        ...


class Dispatcher(Generic[ResultT]):
    """Serves listings and routed requests over an :class:`Upstream`; one per revision.

    ``resource_not_found_code`` is what the revision answers for a URI no backend serves
    (the handshake revisions have a code of their own; 2026-07-28 uses invalid params).

    ``authorizer`` decides what each caller may use: listings show only that, and a
    routed request is authorized (:meth:`authorize`) before any backend is touched. With
    authorization on, a name that does not exist is refused exactly like a denied one
    (:class:`~vmcp.errors.NotPermitted`), so refusals tell nothing about hidden names.
    """

    def __init__(self, *, resource_not_found_code: int,
                 authorizer: Authorizer | None = None) -> None:
        self._resource_not_found = resource_not_found_code
        self._authorizer: Authorizer = authorizer if authorizer is not None else AllowAll()

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
                                               items_of(routing, method))}

    def visible(self, principal: Principal, routing: RoutingTable, method: str,
                items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The listed ``items`` (of ``routing``'s ``method`` list, in its order, possibly
        reshaped) that ``principal`` may use; decided in one batch, cached per catalog."""
        if not self._authorizer.enabled:
            return items
        return self._authorizer.filter_listing(
            principal, items, lambda item: listed_subject(routing, method, item),
            catalog=routing, listing=method)

    async def call(self, upstream: Upstream[ResultT], method: str,
                   params: Mapping[str, Any], principal: Principal = ANONYMOUS, *,
                   target: Target | None = None) -> ResultT:
        """Route one request to its backend and return what the backend answers;
        ``target`` is one :meth:`authorize` already gave (else it is authorized here)."""
        if target is None:
            target = await self.authorize(upstream, method, params, principal)
        return await upstream.call(target)

    async def authorize(self, upstream: Upstream[ResultT], method: str,
                        params: Mapping[str, Any], principal: Principal) -> Target:
        """The target of a routed request, once ``principal`` may use it.

        Raises ``NotPermitted`` (authorization on: denied or unknown) or ``RequestError``
        (authorization off: unknown). The audit record learns the target and the
        policies that decided.
        """
        record = audit_record.current()
        try:
            target, routing = await self._resolve(upstream, method, params)
        except RequestError:
            if not self._authorizer.enabled:
                raise
            if record is not None:
                record.denied = True
            raise NotPermitted(f"no {method} target for the request") from None
        subject = routed_subject(routing, method, target.exposed, target.backend, target.params)
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
                       params: Mapping[str, Any]) -> tuple[Target, RoutingTable]:
        for refresh in (False, True):
            routing = await upstream.routing(refresh=refresh)
            target = _lookup(routing, method, params)
            if target is not None:
                return target, routing
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
        return Target(route.backend, method, name, {**params, "name": route.name})
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
