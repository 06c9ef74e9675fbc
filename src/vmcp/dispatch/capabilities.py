"""What the gateway announces it can do, from what its backends announced."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def aggregate_capabilities(offered: Iterable[Mapping[str, Any]], *, list_changed: bool,
                           logging_always: bool,
                           resource_subscriptions: bool = True) -> dict[str, Any]:
    """The gateway's server capabilities over backends offering ``offered``.

    Listings are always announced (an empty list is a fine answer). ``list_changed`` is
    announced only where the revision has a stream to deliver it on; completions and
    resource subscriptions only if some backend can serve them; logging always where the
    gateway answers ``logging/setLevel`` itself (``logging_always``), else if some backend
    logs. ``resource_subscriptions`` is False where the revision's stream does not carry
    a backend's resource updates.
    """
    offered = [c for c in offered if isinstance(c, Mapping)]
    flag = {"listChanged": True} if list_changed else {}
    capabilities: dict[str, Any] = {"tools": dict(flag), "resources": dict(flag),
                                    "prompts": dict(flag)}
    if logging_always or any("logging" in c for c in offered):
        capabilities["logging"] = {}
    if any("completions" in c for c in offered):
        capabilities["completions"] = {}
    if list_changed and resource_subscriptions and any(
            (c.get("resources") or {}).get("subscribe") for c in offered):
        capabilities["resources"]["subscribe"] = True
    return capabilities
