"""The rules a chaos history must satisfy, as one pure function.

``check(records, faults, end)`` looks only at its arguments (no clock, no I/O), so the
tests in ``tests/chaos/test_checker.py`` feed it hand-built histories with each kind of
violation and see it caught. The rules, and the only excuses each one admits:

* ``unanswered``: every request gets an HTTP status within its bound. A connection that
  broke without one is excused only while a replica was being killed or drained.
* ``no_final_answer``: a 2xx stream ends with the reply it owes, unless a replica was
  SIGKILLed while it ran.
* ``server_error``: never a 500 (nor any 5xx but 502, 503, 504).
* ``gateway_error``: 502/504 come from the balancer when a replica is gone, so only
  while one is being killed, drained or restarted.
* ``unavailable``: 503 only while the store is faulty (stopped, paused, delayed, cut)
  and a short grace after it.
* ``resurrection``: no 2xx for a session once its DELETE was acknowledged.
* ``lost_session``: no "session not found" (404 or -32001) for a session that is live
  (initialized, not yet being deleted), unless a backend was being restarted meanwhile
  (its upstream session was lost and re-initialize may have failed). A 503 is the answer
  for a store outage, never a 404.
* ``cross_identity``: a stranger presenting a live session's id gets no 2xx, and no
  answer names another identity than the caller's.
* ``upstream_leak``: every upstream session a backend opened was ended (DELETE), by
  the backend's own log, unless the backend was restarted since (it forgot it), the
  replica that opened it was SIGKILLed, or the backend's traffic was stalled or cut as
  it answered (the id, only in that answer, never reached anyone who could end it).
* ``redis_leftover``: after every session was DELETEd, Redis holds no session record
  the clients knew, and no more unknown ones than there were failed initializes (a
  placeholder written before a failure the store could not record).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from chaos.history import (
    BACKEND_DELAY,
    BACKEND_RESET,
    BACKEND_RESTART,
    CLEANUP,
    DELETE,
    INITIALIZE,
    REPLICA_FAULTS,
    REPLICA_KILL,
    STORE_FAULTS,
    STRANGER,
    EndState,
    Fault,
    Record,
    UpstreamSession,
)

STORE_GRACE_SECONDS = 3.0
"""How long after a store fault a 503 is still excused (a store call's deadline and the
reconnect that follows)."""

REPLICA_GRACE_SECONDS = 2.0
"""How long after a replica is back a 502 is still excused (the balancer's retry)."""

HELD_UP_BEFORE_SECONDS = 3.0
"""An initialize answered this long before a backend stall can still be held in it past
the replica's deadline for it (a health probe waits 2 s)."""

KINDS = ("unanswered", "no_final_answer", "server_error", "gateway_error", "unavailable",
         "resurrection", "lost_session", "cross_identity", "upstream_leak", "redis_leftover")


@dataclass(frozen=True)
class Violation:
    """One broken rule; ``seq`` names the request, if the rule is about one."""

    kind: str
    detail: str
    seq: int | None = None


def _during(record: Record, faults: Iterable[Fault], kinds: Collection[str],
            grace: float = 0.0) -> bool:
    """Whether any fault of ``kinds`` (widened by ``grace`` after its end) overlaps it."""
    return any(f.kind in kinds and f.start <= record.end and record.start <= f.end + grace
               for f in faults)


def _describe(record: Record) -> str:
    session = f" session {record.session[:8]}" if record.session else ""
    return (f"#{record.seq} {record.client} {record.kind} {record.method}{session} "
            f"-> {record.status} {record.outcome} in {record.end - record.start:.2f}s "
            f"(bound {record.bound:g}s) {record.summary}").rstrip()


def _request_violations(record: Record, faults: Sequence[Fault]) -> list[str]:
    """The rules about one request taken alone (with the faults around it)."""
    found: list[str] = []
    replica_fault = _during(record, faults, REPLICA_FAULTS, REPLICA_GRACE_SECONDS)
    if record.status is None:
        if record.transport_error is None or not replica_fault:
            found.append("unanswered")
    elif record.end - record.start >= record.bound:
        found.append("unanswered")
    if record.status is None:
        return found
    if 200 <= record.status < 300 and not record.final and not _during(
            record, faults, {REPLICA_KILL}):
        found.append("no_final_answer")
    if record.status >= 500 and record.status not in (502, 503, 504):
        found.append("server_error")
    if record.status in (502, 504) and not replica_fault:
        found.append("gateway_error")
    if record.status == 503 and not _during(record, faults, STORE_FAULTS, STORE_GRACE_SECONDS):
        found.append("unavailable")
    served_stranger = 200 <= record.status < 300 and record.kind == STRANGER
    answered_other = (record.answer_identity is not None
                      and record.answer_identity != record.identity)
    if served_stranger or answered_other:
        found.append("cross_identity")
    return found


def _session_violations(records: Sequence[Record], faults: Sequence[Fault]
                        ) -> list[Violation]:
    """Resurrection and lost sessions: each request against its session's life."""
    born: dict[str, float] = {}
    deleting: dict[str, float] = {}
    acknowledged: dict[str, float] = {}
    for record in records:
        if record.session is None or record.kind == STRANGER:
            continue
        if record.kind == INITIALIZE and record.outcome == "ok":
            born[record.session] = min(born.get(record.session, record.end), record.end)
        elif record.kind in (DELETE, CLEANUP):
            deleting[record.session] = min(deleting.get(record.session, record.start),
                                           record.start)
            if record.status == 200:
                acknowledged[record.session] = min(
                    acknowledged.get(record.session, record.end), record.end)
    found: list[Violation] = []
    for record in records:
        session = record.session
        if session is None or record.status is None:
            continue
        gone_at = acknowledged.get(session)
        if gone_at is not None and record.start > gone_at and 200 <= record.status < 300 \
                and record.outcome != "not_found":
            found.append(Violation("resurrection", _describe(record), record.seq))
        if record.kind == STRANGER or record.outcome != "not_found":
            continue
        start = born.get(session)
        ends = deleting.get(session, float("inf"))
        first_delete = record.kind in (DELETE, CLEANUP) and record.start == ends
        live = start is not None and record.start > start and (record.end < ends
                                                                or first_delete)
        if live and not _during(record, faults, {BACKEND_RESTART}):
            found.append(Violation("lost_session", _describe(record), record.seq))
    return found


def _answer_held_up(upstream: UpstreamSession, faults: Sequence[Fault]) -> bool:
    """Whether the backend opened the session while its traffic was stalled or cut.

    The session id travels only in the ``initialize`` answer; an answer held in a stalled
    proxy past the replica's deadline, or cut before its headers, names a session nobody
    but the backend knows."""
    if upstream.opened_at is None:
        return False
    return any(f.kind in (BACKEND_DELAY, BACKEND_RESET)
               and f.target.split()[0] == upstream.backend
               and f.start - HELD_UP_BEFORE_SECONDS <= upstream.opened_at
               <= f.end + REPLICA_GRACE_SECONDS
               for f in faults)


def _end_violations(records: Sequence[Record], faults: Sequence[Fault], end: EndState
                    ) -> list[Violation]:
    found: list[Violation] = []
    for upstream in end.upstream:
        if upstream.ended:
            continue
        if upstream.backend_generation < end.last_backend_generation.get(upstream.backend, 0):
            continue  # the backend was restarted since and forgot it
        if upstream.opened_by in end.killed_replicas:
            continue  # opened by a replica SIGKILLed before it could record or end it
        if _answer_held_up(upstream, faults):
            continue  # the answer naming it never reached the replica
        found.append(Violation("upstream_leak", f"{upstream.backend} session "
                               f"{upstream.session_id[:8]} opened by {upstream.opened_by} "
                               f"was never ended"))
    unknown = [s for s in end.redis_sessions if s not in end.known_sessions]
    for session in end.redis_sessions:
        if session in end.known_sessions:
            found.append(Violation("redis_leftover", f"session {session[:8]} is still stored "
                                   "after its DELETE"))
    failed_initializes = sum(1 for r in records if r.kind == INITIALIZE and r.outcome != "ok")
    if len(unknown) > failed_initializes:
        found.append(Violation("redis_leftover", f"{len(unknown)} unknown session records "
                               f"left, but only {failed_initializes} initializes failed"))
    return found


def check(records: Sequence[Record], faults: Sequence[Fault], end: EndState
          ) -> list[Violation]:
    """Every violation of the rules above, in request order, then the end-state ones."""
    found: list[Violation] = []
    for record in records:
        found.extend(Violation(kind, _describe(record), record.seq)
                     for kind in _request_violations(record, faults))
    found.extend(_session_violations(records, faults))
    found.sort(key=lambda v: v.seq if v.seq is not None else -1)
    found.extend(_end_violations(records, faults, end))
    return found


def by_kind(violations: Iterable[Violation]) -> Counter[str]:
    return Counter(v.kind for v in violations)


__all__ = ["KINDS", "REPLICA_GRACE_SECONDS", "STORE_GRACE_SECONDS", "Violation", "by_kind",
           "check"]
