"""The circuit breaker's states, driven by a manual clock."""

from __future__ import annotations

import pytest

from vmcp.backend.breaker import CircuitBreaker, CircuitState
from vmcp.errors import BackendUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_failures_open_the_circuit_then_one_trial_closes_it() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, open_seconds=10, clock=clock)
    for _ in range(2):
        breaker.before_call("b")
        breaker.after_call("b", failed=True)
    assert breaker.state("b") is CircuitState.CLOSED
    breaker.before_call("b")
    breaker.after_call("b", failed=True)
    assert breaker.state("b") is CircuitState.OPEN
    with pytest.raises(BackendUnavailable, match="circuit open"):
        breaker.before_call("b")
    clock.now = 10.5
    breaker.before_call("b")                          # the half-open trial
    assert breaker.state("b") is CircuitState.HALF_OPEN
    with pytest.raises(BackendUnavailable, match="trial"):
        breaker.before_call("b")                      # only one trial at a time
    breaker.after_call("b", failed=False)
    assert breaker.state("b") is CircuitState.CLOSED
    breaker.before_call("b")


def test_a_failed_trial_opens_again_and_successes_reset_the_count() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=2, open_seconds=5, clock=clock)
    breaker.after_call("b", failed=True)
    breaker.after_call("b", failed=False)
    breaker.after_call("b", failed=True)
    assert breaker.state("b") is CircuitState.CLOSED  # the success reset the count
    breaker.after_call("b", failed=True)
    assert breaker.state("b") is CircuitState.OPEN
    clock.now = 6
    breaker.before_call("b")
    breaker.after_call("b", failed=True)
    assert breaker.state("b") is CircuitState.OPEN
    with pytest.raises(BackendUnavailable):
        breaker.before_call("b")
    assert breaker.state("other") is CircuitState.CLOSED


@pytest.mark.parametrize(("threshold", "seconds"), [(0, 1), (1, 0)])
def test_bad_settings_are_refused(threshold: int, seconds: float) -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(failure_threshold=threshold, open_seconds=seconds)
