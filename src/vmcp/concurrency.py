"""Sharing one run of slow work among the concurrent callers who need the same thing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import anyio

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Flight(Generic[V]):
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.value: tuple[V] | None = None  # boxed: a result may itself be None
        self.error: Exception | None = None


class SingleFlight(Generic[K, V]):
    """Concurrent ``run`` calls for one key share one run of the work.

    The first caller runs ``work`` in its own task; the others wait and get its value.
    If it fails, the waiters either share the error (``share_errors``: a refusal that
    would only be repeated, such as a token exchange the issuer declined) or each try
    again themselves (a failure they did not see may have been the leader's own, such as
    its cancellation). A cancelled leader never hands its cancellation to the others.
    """

    def __init__(self, *, share_errors: bool = False) -> None:
        self._share_errors = share_errors
        self._flights: dict[K, _Flight[V]] = {}

    def __contains__(self, key: K) -> bool:
        """True while a run for ``key`` is in flight."""
        return key in self._flights

    async def run(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        while (flight := self._flights.get(key)) is not None:
            await flight.done.wait()
            if flight.value is not None:
                return flight.value[0]
            if flight.error is not None and self._share_errors:
                raise flight.error
        flight = _Flight[V]()
        self._flights[key] = flight
        try:
            value = await work()
        except Exception as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[key]
            flight.done.set()
        flight.value = (value,)
        return value
