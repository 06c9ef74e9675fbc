"""The seam between the dispatcher and each revision: where a routed request goes
(:class:`Target`) and the backends as one request sees them (:class:`Upstream`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from vmcp.aggregate import RoutingTable

ResultT_co = TypeVar("ResultT_co", covariant=True)


@dataclass(frozen=True)
class Target:
    """Where a routed request goes: ``backend``, with ``params`` naming things the way the
    backend does; ``exposed`` is the name or URI the client used (what a multi-round
    request stays bound to)."""

    backend: str
    method: str
    exposed: str
    params: dict[str, Any]
    hidden: bool = False
    """A tool left out of listings: only composite tools' steps may call it."""
    composite: bool = False
    """A composite tool the dispatcher runs itself (``backend`` is empty)."""


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
