"""How many GET streams a replica holds open, per session and in all.

Each GET stream holds a client connection and, while it listens, a stream from every
backend of its session: without a cap, one client opening streams by the hundred takes the
replica's descriptors and its backends' stream budgets. A stream beyond the session's cap
is refused 429 (that client is over its own limit); one beyond the replica's cap 503 (the
replica is full, another may not be), both with ``Retry-After`` and a JSON-RPC error. The
MCP transport lets a server refuse a GET stream with 405 when it offers none; here it does
offer them, so the refusal says what limit was hit instead.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class StreamRefused(Exception):
    """A GET stream over a limit; ``status`` and ``message`` are the answer's."""

    status: int
    message: str
    retry_after: int


class StreamLimits:
    """Counts the open GET streams of this replica (single event loop: no lock needed)."""

    def __init__(self, *, per_session: int, per_replica: int) -> None:
        if per_session < 1 or per_replica < 1:
            raise ValueError("stream limits must be at least 1")
        self._per_session = per_session
        self._per_replica = per_replica
        self._open: Counter[str] = Counter()
        self._total = 0

    @property
    def open_streams(self) -> int:
        return self._total

    def acquire(self, session_id: str) -> None:
        """Count one more stream of ``session_id`` (``release`` it when it ends); raises
        ``StreamRefused`` when the session or the replica is at its cap."""
        if self._open[session_id] >= self._per_session:
            raise StreamRefused(429, f"Too many GET streams on this session: at most "
                                f"{self._per_session} open at once; close one first", 1)
        if self._total >= self._per_replica:
            raise StreamRefused(503, f"This replica holds its maximum of {self._per_replica} "
                                "GET streams; retry later", 5)
        self._open[session_id] += 1
        self._total += 1

    def release(self, session_id: str) -> None:
        self._total -= 1
        self._open[session_id] -= 1
        if self._open[session_id] <= 0:
            del self._open[session_id]
