"""What a chaos run writes down: every request, every fault, and the state left at the end.

These records are plain frozen values so the checker (:mod:`chaos.checker`) can be a pure
function of them and be tested on histories built by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# What a request was for; the checker applies its rules by kind.
INITIALIZE = "initialize"
CALL = "call"  # tools/call, tools/list and other requests on a session
STREAM = "stream"  # a GET stream that only listens
RESUME = "resume"  # a GET with Last-Event-ID, resuming an interrupted call
ANSWER = "answer"  # the client's answer to a sampling or elicitation request
DELETE = "delete"
STRANGER = "stranger"  # another identity presenting a live session's id
STATELESS = "stateless"  # a 2026-07-28 request (no session)
CLEANUP = "cleanup"  # the DELETEs that end every session after the run

SESSION_NOT_FOUND = -32001


@dataclass(frozen=True)
class Record:
    """One HTTP request and what came back.

    ``status`` is the HTTP status, or None if no status line arrived within ``bound``.
    ``final`` says whether the answer carried the JSON-RPC reply it was due (always True
    for requests that expect none: DELETE, notifications, client answers, GET streams);
    a stream cut before its reply has a status but ``final`` False. ``error_code`` is the
    reply's JSON-RPC error code, if it was an error. ``answer_identity`` is the identity
    named in the answer's content, for calls whose answer echoes who asked.
    """

    seq: int
    client: str
    identity: str
    kind: str
    method: str
    start: float
    end: float
    bound: float
    status: int | None
    final: bool = True
    session: str | None = None
    session_owner: str | None = None
    replica: str | None = None
    error_code: int | None = None
    answer_identity: str | None = None
    transport_error: str | None = None
    summary: str = ""

    @property
    def outcome(self) -> str:
        """One word for the figures: ok, rpc_error, not_found, unavailable, ..."""
        if self.status is None:
            return "transport_error" if self.transport_error else "unanswered"
        if self.status == 404 or self.error_code == SESSION_NOT_FOUND:
            return "not_found"
        if 200 <= self.status < 300:
            if not self.final:
                return "cut"
            return "rpc_error" if self.error_code is not None else "ok"
        return {503: "unavailable", 502: "bad_gateway", 504: "bad_gateway",
                500: "server_error", 429: "limited"}.get(self.status, f"http_{self.status}")


@dataclass(frozen=True)
class Fault:
    """One injected fault: what, on which part, from ``start`` until the part was back."""

    kind: str
    target: str
    start: float
    end: float


# Fault kinds.
REDIS_RESTART = "redis_restart"
REDIS_PAUSE = "redis_pause"
REDIS_DELAY = "redis_delay"
REDIS_RESET = "redis_reset"
REPLICA_KILL = "replica_kill"
REPLICA_DRAIN = "replica_drain"
BACKEND_RESTART = "backend_restart"
BACKEND_DELAY = "backend_delay"
BACKEND_RESET = "backend_reset"

STORE_FAULTS = frozenset({REDIS_RESTART, REDIS_PAUSE, REDIS_DELAY, REDIS_RESET})
REPLICA_FAULTS = frozenset({REPLICA_KILL, REPLICA_DRAIN})


@dataclass(frozen=True)
class UpstreamSession:
    """One session a backend opened, as the backend itself logged it.

    ``backend_generation`` counts the backend's restarts (a restarted backend forgets
    its sessions); ``opened_by`` is the replica process (``name.generation``) that asked.
    The run's faults carry the backend's name first in their ``target``.
    """

    backend: str
    backend_generation: int
    session_id: str
    opened_by: str
    ended: bool
    opened_at: float | None = None
    """On the run's clock: when the backend answered the ``initialize``."""


@dataclass(frozen=True)
class EndState:
    """What is left once every client session was DELETEd and the replicas went quiet."""

    upstream: tuple[UpstreamSession, ...] = ()
    last_backend_generation: dict[str, int] = field(default_factory=dict)
    killed_replicas: frozenset[str] = frozenset()
    redis_sessions: tuple[str, ...] = ()
    known_sessions: frozenset[str] = frozenset()


__all__ = [
    "ANSWER", "BACKEND_DELAY", "BACKEND_RESET", "BACKEND_RESTART", "CALL", "CLEANUP",
    "DELETE", "INITIALIZE", "REDIS_DELAY", "REDIS_PAUSE", "REDIS_RESET", "REDIS_RESTART",
    "REPLICA_DRAIN", "REPLICA_FAULTS", "REPLICA_KILL", "RESUME", "SESSION_NOT_FOUND",
    "STATELESS", "STORE_FAULTS", "STRANGER", "STREAM", "EndState", "Fault", "Record",
    "UpstreamSession",
]
