"""What became of each item a backend offers: exposed as is, renamed, filtered out, or
lost to a conflict. The aggregation itself (``vmcp.aggregate``) only builds the exposed
table; this replays it on the catalogs the replica last listed and explains every item,
for the operator's view."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vmcp.aggregate import BackendCatalog, build_routing_table
from vmcp.config import AggregationConfig, BackendToolsConfig
from vmcp.errors import ConfigError

EXPOSED, RENAMED, FILTERED, LOST = "exposed", "renamed", "filtered", "lost"


@dataclass(frozen=True)
class CatalogItem:
    """One item as the backend named it and what the gateway made of it."""

    kind: str  # tool, prompt, resource, resource template
    name: str  # the backend's own name (a URI or template for resources)
    exposed: str | None  # what clients see, None if they do not see it
    outcome: str  # EXPOSED, RENAMED, FILTERED or LOST
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "exposed": self.exposed,
                "outcome": self.outcome, "note": self.note}


def explain_catalog(catalogs: Mapping[str, BackendCatalog], config: AggregationConfig
                    ) -> tuple[dict[str, list[CatalogItem]], list[str]]:
    """Every backend's items (backends in name order, items in their own order), and the
    aggregation's warnings. A ``manual`` clash that stops the aggregation is returned as
    the only warning, every item then lost."""
    warnings: list[str] = []
    try:
        table = build_routing_table(catalogs, config, on_warning=warnings.append)
    except ConfigError as exc:
        return ({b: [CatalogItem(k, n, None, LOST, "aggregation failed")
                     for k, n in _items(catalogs[b])] for b in sorted(catalogs)}, [str(exc)])
    tools = {(r.backend, r.name): t["name"] for t in table.tools
             if (r := table.route_tool(t["name"])) is not None}
    prompts = {(r.backend, r.name): p["name"] for p in table.prompts
               if (r := table.route_prompt(p["name"])) is not None}
    template_owner: dict[str, str] = {}
    for backend in sorted(catalogs):
        for template in catalogs[backend].resource_templates:
            template_owner.setdefault(str(template.get("uriTemplate")), backend)
    explained: dict[str, list[CatalogItem]] = {}
    for backend in sorted(catalogs):
        catalog = catalogs[backend]
        rules = config.tools.get(backend, BackendToolsConfig())
        items = [_named("tool", backend, str(t.get("name")), tools, rules, warnings)
                 for t in catalog.tools]
        items += [_named("prompt", backend, str(p.get("name")), prompts, None, warnings)
                  for p in catalog.prompts]
        for resource in catalog.resources:
            uri = str(resource.get("uri"))
            owner = table.route_resource(uri)
            items.append(CatalogItem("resource", uri, uri, EXPOSED) if owner == backend else
                         CatalogItem("resource", uri, None, LOST, f"offered by {owner} too"))
        for template in catalog.resource_templates:
            uri = str(template.get("uriTemplate"))
            owner = template_owner[uri]
            items.append(CatalogItem("resource template", uri, uri, EXPOSED)
                         if owner == backend else CatalogItem(
                             "resource template", uri, None, LOST, f"offered by {owner} too"))
        explained[backend] = items
    return explained, warnings


def _named(kind: str, backend: str, name: str, exposed: Mapping[tuple[str, str], str],
           rules: BackendToolsConfig | None, warnings: list[str]) -> CatalogItem:
    if rules is not None and ((rules.include and name not in rules.include)
                              or name in rules.exclude):
        return CatalogItem(kind, name, None, FILTERED,
                           "excluded" if name in rules.exclude else "not included")
    shown = exposed.get((backend, name))
    if shown is None:
        label = f"{kind} {name!r} of backend {backend!r}"
        reason = next((w for w in warnings if label in w), "name conflict")
        return CatalogItem(kind, name, None, LOST, reason)
    if shown == name:
        return CatalogItem(kind, name, shown, EXPOSED)
    override = rules.overrides.get(name) if rules is not None else None
    how = "override" if override is not None and override.name == shown else "prefix"
    return CatalogItem(kind, name, shown, RENAMED, how)


def _items(catalog: BackendCatalog) -> list[tuple[str, str]]:
    return ([("tool", str(t.get("name"))) for t in catalog.tools]
            + [("prompt", str(p.get("name"))) for p in catalog.prompts]
            + [("resource", str(r.get("uri"))) for r in catalog.resources]
            + [("resource template", str(t.get("uriTemplate")))
               for t in catalog.resource_templates])
