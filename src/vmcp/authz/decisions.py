"""What the request path asks of authorization, and what it gets back.

The request path knows routes and items; authorization knows policies. They meet in
:class:`Target` (what is being used, as a policy sees it) and :class:`Decision`. An
:class:`Authorizer` answers one question per call (``check``) and one batch per listing
(``filter_listing``); :class:`AllowAll` is the implementation when no authorization is
configured, so the request path never branches on whether there is one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from vmcp.identity import Principal

Kind = Literal["tool", "prompt", "resource"]
Action = Literal["call_tool", "get_prompt", "read_resource"]

ACTION_OF: Mapping[Kind, Action] = {
    "tool": "call_tool", "prompt": "get_prompt", "resource": "read_resource",
}
ENTITY_TYPE_OF: Mapping[Kind, str] = {"tool": "Tool", "prompt": "Prompt", "resource": "Resource"}

Item = TypeVar("Item")


@dataclass(frozen=True)
class Target:
    """A tool, prompt or resource as a policy sees it.

    ``name`` is what clients see (the exposed tool or prompt name, the resource URI or
    template); ``original_name`` is the backend's own. ``annotations`` are the tool's
    MCP annotations (``readOnlyHint``...), empty for prompts and resources.
    """

    kind: Kind
    name: str
    backend: str
    original_name: str
    annotations: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """Whether a use is allowed, and which policies decided it.

    ``policy_ids`` are the deciding policies (their ``@id`` annotation, else the
    position-based ``policyN``): the permits of an allowed request, the forbids of a
    denied one (empty when nothing permitted it). ``errors`` are evaluation errors, for
    the log only; any of them denies.
    """

    allowed: bool
    policy_ids: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


ALLOWED = Decision(True)


@dataclass(frozen=True)
class PolicyStatus:
    """What ``/status`` shows of the policy set in force."""

    sha256: str
    loaded_at: float
    policies: int
    files: tuple[str, ...]


class Authorizer(Protocol):
    """Decides what a principal may use. Implementations never raise on a request: an
    error while deciding denies (and is logged), so a broken policy cannot open a hole.
    Decisions are pure functions of the principal, the target, the arguments and the
    policy set in force, so every replica decides alike."""

    @property
    def enabled(self) -> bool:
        """False for :class:`AllowAll`: the request path keeps its unauthorized answers."""
        ...

    def check(self, principal: Principal, target: Target,
              arguments: Mapping[str, Any] | None = None) -> Decision:
        """May ``principal`` use ``target`` (with ``arguments``, for a call)?"""
        ...

    def filter_listing(self, principal: Principal, items: Sequence[Item],
                       target_of: Callable[[Item], Target | None], *,
                       catalog: object | None = None, listing: str = "") -> list[Item]:
        """The ``items`` the principal may use, in order, decided in one batch.

        ``target_of`` gives each item's target (None: the item is left out). When
        ``catalog`` is given, the result is cached for this principal, this policy set,
        that very catalog object (compared by identity) and the ``listing`` named (one
        catalog holds several), so an unchanged catalog is not decided again.
        """
        ...

    def status(self) -> PolicyStatus | None:
        """The policy set in force, or None without authorization."""
        ...


class AllowAll:
    """No authorization configured: everyone may use everything (and nothing is cached)."""

    enabled = False

    def check(self, principal: Principal, target: Target,
              arguments: Mapping[str, Any] | None = None) -> Decision:
        return ALLOWED

    def filter_listing(self, principal: Principal, items: Sequence[Item],
                       target_of: Callable[[Item], Target | None], *,
                       catalog: object | None = None, listing: str = "") -> list[Item]:
        return list(items)

    def status(self) -> PolicyStatus | None:
        return None
