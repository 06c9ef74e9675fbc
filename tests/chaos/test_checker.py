"""The chaos checker catches each kind of violation it names, and passes a clean history.

Each test builds a small history by hand with one defect in it; the checker must report
that defect (and nothing else), so a 0 from a real run means something.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from chaos.checker import KINDS, Violation, by_kind, check
from chaos.history import (
    BACKEND_DELAY,
    BACKEND_RESET,
    BACKEND_RESTART,
    CALL,
    CLEANUP,
    DELETE,
    INITIALIZE,
    REDIS_RESTART,
    REPLICA_DRAIN,
    REPLICA_KILL,
    STRANGER,
    STREAM,
    EndState,
    Fault,
    Record,
    UpstreamSession,
)

SID = "a" * 32
OTHER = "b" * 32


def rec(seq: int, kind: str, start: float, end: float, status: int | None = 200, **more: object
        ) -> Record:
    fields: dict[str, object] = {"seq": seq, "client": "c1", "identity": "alice", "kind": kind,
                                 "method": kind, "start": start, "end": end, "bound": 10.0,
                                 "status": status, "session": SID}
    fields.update(more)
    return Record(**fields)  # type: ignore[arg-type]


def clean_history() -> list[Record]:
    return [
        rec(1, INITIALIZE, 0.0, 0.1),
        rec(2, CALL, 0.2, 0.3),
        rec(3, CALL, 0.4, 0.9, status=503),  # during the store fault below
        rec(4, STRANGER, 1.0, 1.1, status=404, identity="bob", session_owner="alice"),
        rec(5, DELETE, 2.0, 2.1),
        rec(6, CALL, 2.2, 2.3, status=404, error_code=-32001),
    ]


FAULTS = [Fault(REDIS_RESTART, "redis", 0.35, 0.5)]


def kinds(records: list[Record], faults: list[Fault] | None = None,
          end: EndState | None = None) -> list[str]:
    violations = check(records, FAULTS if faults is None else faults, end or EndState())
    return [v.kind for v in violations]


def test_a_clean_history_has_no_violation() -> None:
    assert kinds(clean_history()) == []


def test_a_request_without_an_answer_is_unanswered() -> None:
    history = [*clean_history(), rec(7, CALL, 3.0, 13.0, status=None, session=OTHER)]
    assert kinds(history) == ["unanswered"]


def test_an_answer_later_than_its_bound_is_unanswered() -> None:
    history = clean_history()
    history[1] = rec(2, CALL, 0.2, 10.5)
    assert kinds(history) == ["unanswered"]


def test_a_broken_connection_is_excused_only_while_a_replica_is_killed() -> None:
    broken = rec(7, CALL, 3.0, 3.5, status=None, session=OTHER, transport_error="reset")
    history = [*clean_history(), broken]
    assert kinds(history) == ["unanswered"]
    assert kinds(history, [*FAULTS, Fault(REPLICA_KILL, "replica1", 3.2, 4.0)]) == []


def test_a_stream_cut_before_its_reply_is_a_violation_unless_a_replica_was_killed() -> None:
    history = clean_history()
    history[1] = rec(2, CALL, 0.2, 0.3, final=False)
    assert kinds(history) == ["no_final_answer"]
    assert kinds(history, [*FAULTS, Fault(REPLICA_KILL, "replica2", 0.25, 1.0)]) == []
    assert kinds(history, [*FAULTS, Fault(REPLICA_DRAIN, "replica2", 0.25, 1.0)]) == [
        "no_final_answer"]


def test_a_500_is_a_server_error() -> None:
    history = clean_history()
    history[1] = rec(2, CALL, 0.2, 0.3, status=500)
    assert kinds(history) == ["server_error"]


def test_a_502_without_a_replica_fault_is_a_gateway_error() -> None:
    history = clean_history()
    history[1] = rec(2, CALL, 0.2, 0.3, status=502)
    assert kinds(history) == ["gateway_error"]
    assert kinds(history, [*FAULTS, Fault(REPLICA_DRAIN, "replica3", 0.0, 0.1)]) == []


def test_a_503_without_a_store_fault_is_a_violation() -> None:
    history = clean_history()
    history[1] = rec(2, CALL, 10.2, 10.3, status=503)
    assert kinds(history) == ["unavailable"]


def test_a_2xx_after_the_acknowledged_delete_is_a_resurrection() -> None:
    history = clean_history()
    history[5] = rec(6, CALL, 2.2, 2.3)
    assert kinds(history) == ["resurrection"]


def test_a_2xx_for_a_request_sent_before_the_delete_was_acknowledged_is_no_resurrection(
) -> None:
    history = [*clean_history(), rec(7, CALL, 1.9, 2.4)]
    assert kinds(history) == []


@pytest.mark.parametrize("answer", [
    pytest.param({"status": 404}, id="http-404"),
    pytest.param({"status": 200, "error_code": -32001}, id="session-closed-in-a-stream"),
])
def test_not_found_for_a_live_session_is_a_lost_session(answer: dict[str, object]) -> None:
    history = clean_history()
    history[1] = rec(2, CALL, 0.2, 0.3, **answer)
    assert kinds(history) == ["lost_session"]


def test_a_404_during_a_store_outage_is_a_lost_session_too() -> None:
    history = clean_history()
    history[2] = rec(3, CALL, 0.4, 0.9, status=404)
    assert kinds(history) == ["lost_session"]


def test_the_first_delete_of_a_live_session_answered_404_is_a_lost_session() -> None:
    history = clean_history()
    history[4] = rec(5, DELETE, 2.0, 2.1, status=404)
    assert kinds(history) == ["lost_session"]


def test_a_404_while_a_backend_restarts_is_excused() -> None:
    history = clean_history()
    history[1] = rec(2, CALL, 0.2, 0.3, status=404)
    assert kinds(history, [*FAULTS, Fault(BACKEND_RESTART, "slow", 0.1, 0.25)]) == []


def test_not_found_for_a_call_racing_its_own_delete_is_allowed() -> None:
    history = [*clean_history(), rec(7, CALL, 1.9, 2.2, error_code=-32001)]
    assert kinds(history) == []


def test_a_stranger_served_is_a_cross_identity_answer() -> None:
    history = clean_history()
    history[3] = replace(history[3], status=200)
    assert kinds(history) == ["cross_identity"]


def test_an_answer_naming_another_identity_is_a_cross_identity_answer() -> None:
    history = clean_history()
    history[1] = rec(2, CALL, 0.2, 0.3, answer_identity="bob")
    assert kinds(history) == ["cross_identity"]


def upstream(session: str, *, ended: bool, generation: int = 0,
             opened_by: str = "replica1.0", opened_at: float | None = None) -> UpstreamSession:
    return UpstreamSession("slow", generation, session, opened_by, ended, opened_at)


def test_an_upstream_session_never_ended_is_a_leak() -> None:
    end = EndState(upstream=(upstream("u1", ended=True), upstream("u2", ended=False)),
                   last_backend_generation={"slow": 0})
    assert kinds(clean_history(), end=end) == ["upstream_leak"]


def test_upstream_sessions_lost_to_a_backend_restart_or_a_killed_replica_are_excused() -> None:
    end = EndState(upstream=(upstream("u1", ended=False, generation=0),
                             upstream("u2", ended=False, generation=1,
                                      opened_by="replica2.3")),
                   last_backend_generation={"slow": 1},
                   killed_replicas=frozenset({"replica2.3"}))
    assert kinds(clean_history(), end=end) == []


def test_a_known_session_still_in_redis_is_a_leftover() -> None:
    end = EndState(redis_sessions=(SID,), known_sessions=frozenset({SID}))
    assert kinds(clean_history(), end=end) == ["redis_leftover"]


def test_unknown_records_beyond_the_failed_initializes_are_leftovers() -> None:
    history = [*clean_history(), rec(7, INITIALIZE, 0.36, 0.4, status=503, session=None)]
    one = EndState(redis_sessions=("c" * 32,))
    two = EndState(redis_sessions=("c" * 32, "d" * 32))
    assert kinds(history, end=one) == []
    assert kinds(history, end=two) == ["redis_leftover"]


def test_cleanup_deletes_mark_the_end_of_a_session_like_deletes() -> None:
    history = clean_history()
    history[4] = rec(5, CLEANUP, 2.0, 2.1)
    assert kinds(history) == []


def test_a_get_stream_that_outlives_its_session_is_fine() -> None:
    history = [*clean_history(), rec(7, STREAM, 1.5, 2.15)]
    assert kinds(history) == []


def test_every_kind_is_named_and_counted() -> None:
    violations = [Violation("unanswered", "x"), Violation("unanswered", "y"),
                  Violation("server_error", "z")]
    assert by_kind(violations) == {"unanswered": 2, "server_error": 1}
    assert len(set(KINDS)) == len(KINDS) == 10


def test_an_upstream_session_opened_while_its_backend_was_stalled_is_excused_only_then(
) -> None:
    """Its id travels only in the initialize answer the stall held up or the cut lost."""
    end = EndState(upstream=(upstream("u1", ended=False, opened_at=5.5),),
                   last_backend_generation={"slow": 0})
    stalled = [*FAULTS, Fault(BACKEND_DELAY, "slow 1.5 s", 5.0, 6.5)]
    elsewhere = [*FAULTS, Fault(BACKEND_DELAY, "other 1.5 s", 5.0, 6.5)]
    later = [*FAULTS, Fault(BACKEND_RESET, "slow", 20.0, 20.0)]
    assert kinds(clean_history(), stalled, end) == []
    assert kinds(clean_history(), elsewhere, end) == ["upstream_leak"]
    assert kinds(clean_history(), later, end) == ["upstream_leak"]
