"""Who may open another session: the per-identity cap and the per-replica bound on
``initialize`` requests under way.

Both refuse rather than queue or make room: a refusal tells the client what to do
(``TooManySessions``, 429: end a session or let one expire; ``ReplicaBusy``, 503 with
``Retry-After``: try again, maybe on another replica) and costs nothing, while ending an
identity's oldest session would break work in progress and a queue would hold backend
connections while it waits.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from vmcp.errors import ReplicaBusy, StoreError, TooManySessions
from vmcp.identity import UNAUTHENTICATED
from vmcp.store.identity_index import IdentityIndex

logger = logging.getLogger(__name__)


class Admission:
    """The caps of one replica's session manager (0: no cap)."""

    def __init__(self, identities: IdentityIndex | None, *, max_per_identity: int,
                 max_in_flight: int) -> None:
        self._identities = identities if max_per_identity > 0 else None
        self._max_per_identity = max_per_identity
        self._max_in_flight = max_in_flight
        self._in_flight = 0

    @contextlib.contextmanager
    def initializing(self) -> Iterator[None]:
        """One ``initialize`` under way; raises ``ReplicaBusy`` beyond the bound."""
        if self._max_in_flight and self._in_flight >= self._max_in_flight:
            raise ReplicaBusy(f"{self._in_flight} initializes under way on this replica")
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1

    def counts(self, binding: str) -> bool:
        """Whether ``binding``'s sessions are capped. Anonymous callers all share one
        binding: a per-identity cap would be a cap on everyone together, which the
        per-replica bounds already are."""
        return self._identities is not None and binding != UNAUTHENTICATED

    async def reserve(self, binding: str, session_id: str) -> None:
        """Take a slot for ``session_id`` (its placeholder exists); ``TooManySessions``
        when the identity holds its maximum. Raises ``StoreError``."""
        if self._identities is None or not self.counts(binding):
            return
        if not await self._identities.admit(binding, session_id, self._max_per_identity):
            raise TooManySessions(
                f"Too many sessions: at most {self._max_per_identity} live sessions per "
                "identity; end one (HTTP DELETE) or let one expire, then initialize again")

    async def release(self, binding: str, session_id: str) -> None:
        """Give ``session_id``'s slot back (it ended, or its creation failed)."""
        if self._identities is None:
            return
        try:
            await self._identities.remove(binding, session_id)
        except StoreError:
            logger.warning("could not release a session's slot in the identity index",
                           extra={"session_id": session_id}, exc_info=True)
