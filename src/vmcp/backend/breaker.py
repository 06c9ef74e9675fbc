"""A circuit breaker per backend: stop sending calls to a backend that keeps failing.

Closed: calls go through; ``failure_threshold`` transport failures in a row open it.
Open: calls fail at once (``BackendUnavailable``) for ``open_seconds``, sparing the
backend and the clients' time. Half-open: one trial call goes through; success closes
the circuit, failure opens it again. A backend's JSON-RPC error is an answer, not a
failure. One breaker per replica, shared by all sessions.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

from vmcp.errors import BackendUnavailable


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class _Circuit:
    state: CircuitState = CircuitState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    trial_running: bool = False


class CircuitBreaker:
    def __init__(self, *, failure_threshold: int, open_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failure_threshold < 1 or open_seconds <= 0:
            raise ValueError("failure_threshold must be >= 1 and open_seconds > 0")
        self._threshold = failure_threshold
        self._open_seconds = open_seconds
        self._clock = clock
        self._circuits: dict[str, _Circuit] = {}

    def state(self, backend: str) -> CircuitState:
        return self._circuits.get(backend, _Circuit()).state

    def before_call(self, backend: str) -> None:
        """Raise ``BackendUnavailable`` if the circuit does not let this call through."""
        circuit = self._circuits.setdefault(backend, _Circuit())
        if circuit.state is CircuitState.CLOSED:
            return
        if circuit.state is CircuitState.OPEN:
            if self._clock() - circuit.opened_at < self._open_seconds:
                raise BackendUnavailable(backend, "circuit open: recent calls failed")
            circuit.state = CircuitState.HALF_OPEN
        if circuit.trial_running:
            raise BackendUnavailable(backend, "circuit half-open: a trial call is running")
        circuit.trial_running = True

    def after_call(self, backend: str, *, failed: bool) -> None:
        circuit = self._circuits.setdefault(backend, _Circuit())
        circuit.trial_running = False
        if not failed:
            circuit.state, circuit.failures = CircuitState.CLOSED, 0
            return
        circuit.failures += 1
        if circuit.state is CircuitState.HALF_OPEN or circuit.failures >= self._threshold:
            circuit.state, circuit.opened_at = CircuitState.OPEN, self._clock()
