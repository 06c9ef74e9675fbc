"""How the dispatcher's items and routes look to authorization (``vmcp.authz.Target``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmcp.aggregate import RoutingTable
from vmcp.authz import Target as Subject


def listed_subject(routing: RoutingTable, method: str, item: Mapping[str, Any]
                   ) -> Subject | None:
    """The subject of one listed item (None if the table no longer has it)."""
    if method in ("tools/list", "prompts/list"):
        name = str(item.get("name"))
        route = routing.route_tool(name) if method == "tools/list" else routing.route_prompt(name)
        if route is None:
            return None
        annotations = item.get("annotations") if method == "tools/list" else None
        return Subject("tool" if method == "tools/list" else "prompt", name, route.backend,
                       route.name, annotations if isinstance(annotations, Mapping) else {})
    if method == "resources/list":
        uri = str(item.get("uri"))
        backend = routing.route_resource(uri)
        return None if backend is None else Subject("resource", uri, backend, uri)
    template = str(item.get("uriTemplate"))
    backend = routing.template_backend(template)
    return None if backend is None else Subject("resource", template, backend, template)


def routed_subject(routing: RoutingTable, method: str, exposed: str, backend: str,
                   params: Mapping[str, Any]) -> Subject:
    """The subject of a routed request (``params`` as sent to ``backend``): the tool or
    prompt it names, or the resource it reads (a completion is authorized as a use of the
    prompt or resource it completes)."""
    if method == "tools/call":
        tool = routing.tool(exposed) or {}
        annotations = tool.get("annotations")
        return Subject("tool", exposed, backend, str(params.get("name")),
                       annotations if isinstance(annotations, Mapping) else {})
    if method == "prompts/get":
        return Subject("prompt", exposed, backend, str(params.get("name")))
    if method == "completion/complete":
        ref = params.get("ref")
        ref = ref if isinstance(ref, Mapping) else {}
        if ref.get("type") == "ref/prompt":
            return Subject("prompt", exposed, backend, str(ref.get("name")))
    return Subject("resource", exposed, backend, exposed)


def arguments_of(method: str, params: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The arguments a policy sees as ``arg_*``: a call's or a prompt's arguments."""
    if method in ("tools/call", "prompts/get"):
        arguments = params.get("arguments")
        return arguments if isinstance(arguments, Mapping) else None
    return None
