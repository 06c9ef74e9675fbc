"""What the session manager needs of a live session and of whatever builds one.

The real implementation (backend connections, routing table) lives with the gateway;
the manager depends only on these two protocols, so it can be tested with a small
recording factory and never imports HTTP or backend code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from vmcp.identity import Principal


class LiveSession(Protocol):
    """Process-local state of one MCP session: open backend connections and routes."""

    @property
    def session_id(self) -> str: ...

    client_capabilities: frozenset[str] | None
    """What the client declared at ``initialize`` (kept in the session's record); None
    when unknown (a record from before they were kept)."""

    def backend_names(self) -> list[str]:
        """The backends this session is connected to (stored as the backend-id list)."""
        ...

    def backend_states(self) -> dict[str, str]:
        """Per-backend state to store so another replica can re-attach (by backend name)."""
        ...

    def announce(self, method: str) -> None:
        """Send the client the notification ``method`` (no params) on its GET stream."""
        ...

    async def wait_calls(self) -> None:
        """Return once no call is running on this session (later ones may start)."""
        ...

    async def aclose(self, *, end_upstream: bool = True) -> None:
        """End every upstream session, answering the calls still running; idempotent,
        never raises.

        With ``end_upstream`` False only this replica's connections close: the client
        session lives on, and its next copy re-attaches to the same upstream sessions."""
        ...


class SessionFactory(Protocol):
    """Builds live sessions; the only place that talks to backends."""

    async def open(self, session_id: str, principal: Principal) -> LiveSession:
        """Connect the backends a new session should have (healthy ones) in parallel."""
        ...

    async def restore(
        self,
        session_id: str,
        principal: Principal,
        backends: Sequence[str],
        states: Mapping[str, str],
    ) -> LiveSession:
        """Re-attach to the stored ``backends`` (using ``states``, by backend name).

        Never filtered by health: the session was promised these backends. A backend that
        cannot be reached is left out, giving a valid partial session.
        """
        ...

    async def end(self, session_id: str, backends: Sequence[str],
                  states: Mapping[str, str]) -> None:
        """End the upstream sessions of an ended client session that has no live copy
        here (every copy was dropped for capacity). Failures are logged, never raised."""
        ...
