"""From what each backend advertised to the single namespace the gateway exposes.

Everything here is pure: no I/O, no clock, no logging. Problems that do not stop the table
from being built (a duplicate resource, a name too long to expose, a clash that a rule
resolves) are passed to ``on_warning`` as one-line messages; only an unresolved clash in
``manual`` mode is an error.

Names (see :class:`vmcp.config.AggregationConfig` for the modes):

* Filters first: a backend's ``include`` (empty = all) then ``exclude``, on its own names.
* Overrides next: an overridden tool takes the override's name and/or description.
* ``prefix``: every tool is ``prefix_format.format(backend=...)`` + its name, except an
  overridden one, whose name is used as given. With an empty prefix names pass through and a
  clash keeps the first backend in name order.
* ``priority``: bare names; a shared name goes to the first backend in ``priority_order``
  (unlisted backends follow in name order); the others get their prefix in front, or are
  dropped when the prefix is empty. Bare names are claimed before prefixed ones.
* ``manual``: bare names; every clash left after overrides raises :class:`ConfigError` naming
  each clashing name and its backends.
* Prompts follow the same mode without filters or overrides; in ``manual`` mode, where no
  override can resolve a prompt clash, it is resolved as in ``priority`` mode, with a warning.
* Any exposed name that would still be taken twice (``prefix`` mode can produce one: backend
  ``a`` tool ``b_c`` and backend ``a_b`` tool ``c`` are both ``a_b_c``) keeps its first claimant
  and the other is skipped with a warning; a name longer than 64 characters is skipped with a
  warning. So exposed names are always unique, and a route never needs to be parsed back out
  of a name.
* Resources are keyed by URI and resource templates by ``uriTemplate``: the first backend in
  name order wins and duplicates are warned about.

Output order is deterministic: backends in name order, then each backend's own order.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from vmcp.config import AggregationConfig, BackendToolsConfig
from vmcp.errors import ConfigError
from vmcp.uri_template import compile_uri_template

__all__ = [
    "MAX_NAME_LENGTH",
    "BackendCatalog",
    "Route",
    "RoutingTable",
    "build_routing_table",
    "compile_uri_template",
]

MAX_NAME_LENGTH = 64
"""The longest tool or prompt name MCP clients are required to accept."""

Warn = Callable[[str], None]
_Kind = Literal["tool", "prompt"]


@dataclass(frozen=True)
class BackendCatalog:
    """What one backend advertised, as the raw MCP JSON objects it sent."""

    tools: list[dict[str, Any]] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    resource_templates: list[dict[str, Any]] = field(default_factory=list)
    prompts: list[dict[str, Any]] = field(default_factory=list)


def listings_for(capabilities: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (list method, result field) pairs to ask a backend for, given what its
    capabilities announce."""
    wanted: list[tuple[str, str]] = []
    if "tools" in capabilities:
        wanted.append(("tools/list", "tools"))
    if "resources" in capabilities:
        wanted += [("resources/list", "resources"),
                   ("resources/templates/list", "resourceTemplates")]
    if "prompts" in capabilities:
        wanted.append(("prompts/list", "prompts"))
    return wanted


@dataclass(frozen=True)
class Route:
    """Where an exposed name leads: the backend and that backend's own name for the item.
    A tool that is not ``visible`` is left out of listings (composite tools' steps call it)."""

    backend: str
    name: str
    visible: bool = True


class RoutingTable:
    """The exposed catalog and the way back from each exposed name to its backend.

    Immutable: the list properties return new lists on each access. The dicts in them are
    the table's own copies and are shared between accesses, so callers must not mutate them.
    Exposed tool and prompt names must be unique (``ValueError`` otherwise).
    """

    __slots__ = (
        "_exact_resources",
        "_prompt_routes",
        "_prompts",
        "_resource_templates",
        "_resources",
        "_template_backends",
        "_template_patterns",
        "_tool_routes",
        "_tools",
        "_tools_by_name",
    )

    def __init__(
        self,
        *,
        tools: Iterable[tuple[dict[str, Any], Route]] = (),
        prompts: Iterable[tuple[dict[str, Any], Route]] = (),
        resources: Iterable[tuple[dict[str, Any], str]] = (),
        resource_templates: Iterable[tuple[dict[str, Any], str]] = (),
    ) -> None:
        """Each item is paired with its route (tools, prompts) or backend (resources).

        Tool and prompt dicts carry their exposed ``name``, resources their ``uri`` and
        templates their ``uriTemplate``.
        """
        every_tool, self._tool_routes = self._index_named(tools, "tool")
        self._tools = tuple(t for t in every_tool if self._tool_routes[t["name"]].visible)
        self._tools_by_name = {str(t["name"]): t for t in every_tool}
        self._prompts, self._prompt_routes = self._index_named(prompts, "prompt")
        resource_list: list[dict[str, Any]] = []
        self._exact_resources: dict[str, str] = {}
        for resource, backend in resources:
            self._exact_resources.setdefault(str(resource["uri"]), backend)
            resource_list.append(resource)
        self._resources = tuple(resource_list)
        template_list: list[dict[str, Any]] = []
        patterns: list[tuple[re.Pattern[str], str]] = []
        self._template_backends: dict[str, str] = {}
        for template, backend in resource_templates:
            template_list.append(template)
            self._template_backends.setdefault(str(template["uriTemplate"]), backend)
            pattern = compile_uri_template(str(template["uriTemplate"]))
            if pattern is not None:
                patterns.append((pattern, backend))
        self._resource_templates = tuple(template_list)
        self._template_patterns = tuple(patterns)

    @staticmethod
    def _index_named(
        items: Iterable[tuple[dict[str, Any], Route]], kind: str
    ) -> tuple[tuple[dict[str, Any], ...], dict[str, Route]]:
        exposed: list[dict[str, Any]] = []
        routes: dict[str, Route] = {}
        for item, route in items:
            name = item["name"]
            if name in routes:
                raise ValueError(f"{kind} name {name!r} exposed twice")
            routes[name] = route
            exposed.append(item)
        return tuple(exposed), routes

    @property
    def tools(self) -> list[dict[str, Any]]:
        """Exposed tools that are listed: the backends' JSON with ``name`` (and an
        overridden ``description``) replaced."""
        return list(self._tools)

    @property
    def prompts(self) -> list[dict[str, Any]]:
        """Exposed prompts: the backends' JSON with ``name`` replaced."""
        return list(self._prompts)

    @property
    def resources(self) -> list[dict[str, Any]]:
        """Exposed resources, one per URI."""
        return list(self._resources)

    @property
    def resource_templates(self) -> list[dict[str, Any]]:
        """Exposed resource templates, one per ``uriTemplate``."""
        return list(self._resource_templates)

    def tool(self, name: str) -> dict[str, Any] | None:
        """The exposed tool ``name``, listed or hidden (its annotations, schema...), or
        None."""
        return self._tools_by_name.get(name)

    def route_tool(self, name: str) -> Route | None:
        """Where the exposed tool ``name`` leads, or None if no such tool is exposed."""
        return self._tool_routes.get(name)

    def route_prompt(self, name: str) -> Route | None:
        """Where the exposed prompt ``name`` leads, or None if no such prompt is exposed."""
        return self._prompt_routes.get(name)

    def template_backend(self, uri_template: str) -> str | None:
        """The backend of the exposed resource template ``uri_template``, or None."""
        return self._template_backends.get(uri_template)

    def route_resource(self, uri: str) -> str | None:
        """The backend serving ``uri``: the one listing it as a resource, else the first (in
        backend name order) with a level-1 resource template matching it, else None."""
        backend = self._exact_resources.get(uri)
        if backend is not None:
            return backend
        for pattern, template_backend in self._template_patterns:
            if pattern.fullmatch(uri):
                return template_backend
        return None

    def __repr__(self) -> str:
        return (
            f"RoutingTable(tools={len(self._tools)}, prompts={len(self._prompts)}, "
            f"resources={len(self._resources)}, "
            f"resource_templates={len(self._resource_templates)})"
        )


@dataclass(frozen=True)
class _Candidate:
    """One tool or prompt that passed the filters, before its exposed name is settled."""

    backend: str
    own_name: str
    item: Mapping[str, Any]
    base_name: str  # the override's name, else the backend's own
    overridden: bool
    description: str | None  # the override's description, if any
    visible: bool = True


def build_routing_table(
    catalogs: Mapping[str, BackendCatalog],
    config: AggregationConfig,
    *,
    on_warning: Callable[[str], None] | None = None,
) -> RoutingTable:
    """Merge the catalogs of the backends that answered into one routing table.

    ``catalogs`` is keyed by backend name; configuration for backends missing from it is
    ignored (a backend that is down contributes nothing). Raises :class:`ConfigError` when
    ``config.conflict`` is ``manual`` and overrides leave tool names clashing.
    """
    warn: Warn = on_warning if on_warning is not None else _ignore
    backends = sorted(catalogs)
    tool_candidates: list[_Candidate] = []
    prompt_candidates: list[_Candidate] = []
    for backend in backends:
        catalog = catalogs[backend]
        rules = config.tools.get(backend, BackendToolsConfig())
        tool_candidates += _tool_candidates(backend, catalog.tools, rules, warn)
        prompt_candidates += _named_items(backend, catalog.prompts, "prompt", warn)

    tools = _settle_names(tool_candidates, config, backends, "tool", warn)
    prompts = _settle_names(prompt_candidates, config, backends, "prompt", warn)
    return RoutingTable(
        tools=[(_exposed(c, name), Route(c.backend, c.own_name, c.visible))
               for c, name in tools],
        prompts=[(_exposed(c, name), Route(c.backend, c.own_name)) for c, name in prompts],
        resources=_first_by_key(catalogs, backends, "resources", "uri", warn),
        resource_templates=_templates(catalogs, backends, warn),
    )


def _ignore(_message: str) -> None:
    """The default ``on_warning``: warnings are dropped."""


def _named_items(
    backend: str, items: Sequence[Mapping[str, Any]], kind: _Kind, warn: Warn
) -> list[_Candidate]:
    candidates = []
    for item in items:
        name = item.get("name") if isinstance(item, Mapping) else None
        if not isinstance(name, str) or not name:
            warn(f"backend {backend!r} advertised a {kind} without a name; skipped")
            continue
        candidates.append(_Candidate(backend, name, item, name, False, None))
    return candidates


def _tool_candidates(
    backend: str, tools: Sequence[Mapping[str, Any]], rules: BackendToolsConfig, warn: Warn
) -> list[_Candidate]:
    offered = _named_items(backend, tools, "tool", warn)
    own_names = {c.own_name for c in offered}
    for what, names in (("include", rules.include), ("overrides", rules.overrides)):
        for name in names:
            if name not in own_names:
                warn(
                    f"aggregation.tools.{backend}.{what} names tool {name!r}, "
                    f"which backend {backend!r} does not offer"
                )
    include, exclude = set(rules.include), set(rules.exclude)
    candidates = []
    for candidate in offered:
        if (include and candidate.own_name not in include) or candidate.own_name in exclude:
            continue
        override = rules.overrides.get(candidate.own_name)
        if override is not None:
            candidate = _Candidate(
                backend,
                candidate.own_name,
                candidate.item,
                override.name if override.name is not None else candidate.own_name,
                override.name is not None,
                override.description,
                override.visible,
            )
        candidates.append(candidate)
    return candidates


def _settle_names(
    candidates: list[_Candidate],
    config: AggregationConfig,
    backends: Sequence[str],
    kind: _Kind,
    warn: Warn,
) -> list[tuple[_Candidate, str]]:
    """Give each candidate its exposed name, or drop it; keeps the candidates' order."""
    mode = config.conflict
    if mode == "prefix":
        wanted = [
            (c, c.base_name if c.overridden else config.prefix_for(c.backend) + c.base_name)
            for c in candidates
        ]
        names = _claim(wanted, [], kind, warn)
    elif mode == "manual" and kind == "tool":
        _raise_on_clashes(candidates)
        names = _claim([(c, c.base_name) for c in candidates], [], kind, warn)
    else:
        if mode == "manual":
            for name, group in _clashes(candidates).items():
                warn(
                    f"prompt {name!r} is offered by backends {_backend_list(group)}; prompts "
                    "have no overrides, so the clash is resolved by priority"
                )
        names = _by_priority(candidates, config, backends, kind, warn)
    return [(c, names[id(c)]) for c in candidates if id(c) in names]


def _by_priority(
    candidates: list[_Candidate],
    config: AggregationConfig,
    backends: Sequence[str],
    kind: _Kind,
    warn: Warn,
) -> dict[int, str]:
    listed = {name: index for index, name in enumerate(config.priority_order)}
    rank = {b: (listed.get(b, len(listed)), b) for b in backends}
    winners: dict[str, _Candidate] = {}
    for candidate in candidates:
        best = winners.get(candidate.base_name)
        if best is None or rank[candidate.backend] < rank[best.backend]:
            winners[candidate.base_name] = candidate
    primary: list[tuple[_Candidate, str]] = []
    fallback: list[tuple[_Candidate, str]] = []
    for candidate in candidates:
        winner = winners[candidate.base_name]
        if candidate is winner:
            primary.append((candidate, candidate.base_name))
            continue
        prefix = config.prefix_for(candidate.backend)
        if not prefix:
            warn(
                f"{kind} {candidate.base_name!r} of backend {candidate.backend!r} is shadowed "
                f"by backend {winner.backend!r} and prefix_format is empty; skipped"
            )
            continue
        fallback.append((candidate, prefix + candidate.base_name))
    return _claim(primary, fallback, kind, warn)


def _claim(
    primary: list[tuple[_Candidate, str]],
    fallback: list[tuple[_Candidate, str]],
    kind: _Kind,
    warn: Warn,
) -> dict[int, str]:
    """First come, first served, primary names before fallback ones.

    Returns the exposed name of each candidate that got one, keyed by ``id(candidate)``.
    """
    owner: dict[str, _Candidate] = {}
    for candidate, name in [*primary, *fallback]:
        label = f"{kind} {candidate.own_name!r} of backend {candidate.backend!r}"
        if len(name) > MAX_NAME_LENGTH:
            warn(f"{label} would be exposed as {name!r}, longer than {MAX_NAME_LENGTH}; skipped")
            continue
        taken_by = owner.get(name)
        if taken_by is not None:
            warn(
                f"{label} would be exposed as {name!r}, already taken by {kind} "
                f"{taken_by.own_name!r} of backend {taken_by.backend!r}; skipped"
            )
            continue
        owner[name] = candidate
    return {id(candidate): name for name, candidate in owner.items()}


def _clashes(candidates: Iterable[_Candidate]) -> dict[str, list[_Candidate]]:
    """Names (no longer than the limit) wanted by more than one candidate."""
    groups: dict[str, list[_Candidate]] = {}
    for candidate in candidates:
        if len(candidate.base_name) <= MAX_NAME_LENGTH:
            groups.setdefault(candidate.base_name, []).append(candidate)
    return {name: group for name, group in groups.items() if len(group) > 1}


def _backend_list(group: Iterable[_Candidate]) -> str:
    return ", ".join(dict.fromkeys(repr(c.backend) for c in group))


def _raise_on_clashes(candidates: Iterable[_Candidate]) -> None:
    clashes = _clashes(candidates)
    if not clashes:
        return
    lines = []
    for name, group in sorted(clashes.items()):
        offered = ", ".join(
            f"{c.backend} (tool {c.own_name!r}{', renamed' if c.overridden else ''})" for c in group
        )
        lines.append(
            f"aggregation.tools: tool name {name!r} is exposed by more than one backend: "
            f"{offered}; add overrides under aggregation.tools.<backend>.overrides so that "
            "each exposed name is unique"
        )
    raise ConfigError("\n".join(lines))


def _exposed(candidate: _Candidate, name: str) -> dict[str, Any]:
    item = copy.deepcopy(dict(candidate.item))
    item["name"] = name
    if candidate.description is not None:
        item["description"] = candidate.description
    return item


def _first_by_key(
    catalogs: Mapping[str, BackendCatalog],
    backends: Sequence[str],
    attribute: Literal["resources", "resource_templates"],
    key: str,
    warn: Warn,
) -> list[tuple[dict[str, Any], str]]:
    kind = "resource" if attribute == "resources" else "resource template"
    owner: dict[str, str] = {}
    kept: list[tuple[dict[str, Any], str]] = []
    for backend in backends:
        for item in getattr(catalogs[backend], attribute):
            value = item.get(key) if isinstance(item, Mapping) else None
            if not isinstance(value, str) or not value:
                warn(f"backend {backend!r} advertised a {kind} without {key!r}; skipped")
                continue
            if value in owner:
                warn(
                    f"{kind} {value!r} of backend {backend!r} is already offered by backend "
                    f"{owner[value]!r}; skipped"
                )
                continue
            owner[value] = backend
            kept.append((copy.deepcopy(dict(item)), backend))
    return kept


def _templates(
    catalogs: Mapping[str, BackendCatalog], backends: Sequence[str], warn: Warn
) -> list[tuple[dict[str, Any], str]]:
    kept = _first_by_key(catalogs, backends, "resource_templates", "uriTemplate", warn)
    for template, backend in kept:
        if compile_uri_template(template["uriTemplate"]) is None:
            warn(
                f"resource template {template['uriTemplate']!r} of backend {backend!r} goes "
                "beyond RFC 6570 level 1 ({var}); URIs are routed by it only if they are "
                "listed as resources"
            )
    return kept
