"""Counts of upstream (backend) sessions this replica holds, for leak checks and metrics."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

# (backend, outcome, seconds): where per-call figures go (the process's metrics).
CallObserver = Callable[[str, str, float], None]


@dataclass(frozen=True)
class UpstreamCounts:
    opened: int
    ended: int

    @property
    def open(self) -> int:
        return self.opened - self.ended


class UpstreamLedger:
    """Per backend: connections opened or re-attached here, and connections ended here.

    ``open`` must return to 0 once every client session is gone; anything else is a leak
    of backend sessions (or of this replica's connections to them).
    """

    def __init__(self) -> None:
        self._opened: Counter[str] = Counter()
        self._ended: Counter[str] = Counter()
        self.call_observer: CallObserver | None = None

    def record_call(self, backend: str, outcome: str, seconds: float) -> None:
        """One backend call ended: ``ok``, ``rpc_error`` (the backend said no) or ``error``."""
        if self.call_observer is not None:
            self.call_observer(backend, outcome, seconds)

    def record_opened(self, backend: str) -> None:
        self._opened[backend] += 1

    def record_ended(self, backend: str) -> None:
        self._ended[backend] += 1

    def snapshot(self) -> dict[str, UpstreamCounts]:
        return {name: UpstreamCounts(self._opened[name], self._ended[name])
                for name in sorted(set(self._opened) | set(self._ended))}
