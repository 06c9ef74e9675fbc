"""Backends as a stateless client sees them: which revision each speaks, and upstream
sessions held on the client's behalf where a backend needs one.

A client of the stateless revision (2026-07-28) has no session with the gateway, so any
replica serves any of its requests. Backends come in two kinds:

* **modern** - the backend speaks the stateless revision too. A call is one POST with the
  client's own envelope; nothing is kept between calls.
* **session** - the backend speaks only the handshake revisions (or is an SSE backend).
  Calls need an upstream session. :class:`UpstreamPool` keeps one per (identity binding,
  backend) on each replica, reused by that identity's requests, never by another's, and
  ended (HTTP DELETE upstream) once it has been idle for the configured time.

:class:`BackendKinds` classifies each backend once per process by probing
``server/discover``: modern only if its ``supportedVersions`` include a stateless revision
this gateway speaks; any other answer means session-based. A call that shows the
classification wrong corrects it (:meth:`BackendKinds.correct`).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from vmcp.backend import BackendConnection
from vmcp.backend.modern import speaks_modern
from vmcp.concurrency import SingleFlight
from vmcp.errors import BackendError, BackendTimeout, BackendUnavailable
from vmcp.upstream.ledger import UpstreamLedger

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


class BackendKind(enum.StrEnum):
    MODERN = "modern"
    SESSION = "session"


Probe = Callable[[str], Awaitable[Mapping[str, Any] | None]]
"""Sends ``server/discover`` to the named backend: its result, or None for an SSE backend
(never probed). Raises a ``BackendError`` for a refusal (a JSON-RPC error, an HTTP 4xx)
and ``BackendUnavailable``/``BackendTimeout`` when the backend cannot be reached."""


class BackendKinds:
    """The per-process classification of every backend, probed on first use.

    Concurrent first uses share one probe. A backend that cannot be reached is not
    classified (the next use probes again) and the error propagates, so the caller
    treats it as down for now rather than as session-based forever.
    """

    def __init__(self, probe: Probe) -> None:
        self._probe = probe
        self._kinds: dict[str, BackendKind] = {}
        self._probing: SingleFlight[str, BackendKind] = SingleFlight()

    def known(self, backend: str) -> BackendKind | None:
        return self._kinds.get(backend)

    async def kind(self, backend: str) -> BackendKind:
        found = self._kinds.get(backend)
        if found is not None:
            return found
        # A failed probe is not shared: each caller probes itself rather than share an
        # error it did not see.
        return await self._probing.run(backend, lambda: self._classify_and_keep(backend))

    async def _classify_and_keep(self, backend: str) -> BackendKind:
        kind = self._kinds[backend] = await self._classify(backend)
        return kind

    def correct(self, backend: str, kind: BackendKind) -> None:
        """A call showed the backend to be of ``kind``; later calls go that way."""
        previous = self._kinds.get(backend)
        if previous is not kind:
            logger.info("backend %s is %s-based after all (was %s)", backend, kind.value,
                        previous.value if previous else "unclassified",
                        extra={"backend": backend})
            self._kinds[backend] = kind

    def forget(self, backend: str) -> None:
        """Classify ``backend`` again on its next use (its configuration changed)."""
        self._kinds.pop(backend, None)

    def snapshot(self) -> dict[str, BackendKind]:
        return dict(self._kinds)

    async def _classify(self, backend: str) -> BackendKind:
        try:
            result = await self._probe(backend)
        except (BackendUnavailable, BackendTimeout):
            raise
        except BackendError as exc:
            # A refusal (HTTP 4xx, a JSON-RPC error, garbage) is the answer of a server
            # that does not know server/discover: one of the handshake era.
            logger.info("server/discover refused (%s): %s is session-based", exc, backend,
                        extra={"backend": backend})
            return BackendKind.SESSION
        if result is None or not speaks_modern(result):
            return BackendKind.SESSION
        return BackendKind.MODERN


# -- upstream sessions for session-based backends -----------------------------------


@dataclass(frozen=True)
class PoolStatistics:
    open: int
    in_use: int
    opened: int
    ended: int


class _Entry:
    __slots__ = ("connection", "in_use", "last_used")

    def __init__(self, connection: BackendConnection, now: float) -> None:
        self.connection = connection
        self.in_use = 0
        self.last_used = now


Connect = Callable[[str], Awaitable[BackendConnection]]
"""Opens a new upstream session with the named backend (``initialize``)."""


class UpstreamPool:
    """Upstream sessions with session-based backends, one per (identity binding, backend).

    An identity's concurrent calls share its session (Streamable HTTP sessions take
    concurrent requests); two identities never share one, because a backend may tie
    what a session can see to who opened it. A session unused for ``idle_seconds`` is
    ended by :meth:`sweep` (the lifespan runs :meth:`run`), never while a call uses it.
    Opening is singleflight per key. Every session opened or ended is counted in the
    ``ledger`` beside those of the session-based clients.
    """

    def __init__(self, connect: Connect, *, idle_seconds: float,
                 ledger: UpstreamLedger | None = None, clock: Clock = time.monotonic) -> None:
        if idle_seconds <= 0:
            raise ValueError("idle_seconds must be positive")
        self._connect = connect
        self._idle = idle_seconds
        self._ledger = ledger
        self._clock = clock
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._opening: SingleFlight[tuple[str, str], _Entry | None] = SingleFlight()
        self._opened = 0
        self._ended = 0
        self._closed = False

    @contextlib.asynccontextmanager
    async def session(self, binding: str, backend: str) -> AsyncIterator[BackendConnection]:
        """The identity's session with ``backend``, held for the duration of the block.

        Raises the ``BackendError`` of a failed ``initialize``; a failure inside the
        block is the caller's to report with :meth:`discard` if the session is broken.
        """
        key = (binding, backend)
        entry = await self._entry(key)
        entry.in_use += 1
        try:
            yield entry.connection
        finally:
            entry.in_use -= 1
            entry.last_used = self._clock()

    async def discard(self, binding: str, backend: str, connection: BackendConnection) -> None:
        """End ``connection`` if it is still the identity's pooled session (it is broken)."""
        key = (binding, backend)
        entry = self._entries.get(key)
        if entry is not None and entry.connection is connection:
            del self._entries[key]
            await self._end(backend, connection)

    async def sweep(self) -> int:
        """End every session idle for longer than the limit; how many were ended."""
        deadline = self._clock() - self._idle
        idle = [(key, entry) for key, entry in self._entries.items()
                if entry.in_use == 0 and entry.last_used <= deadline]
        for key, _ in idle:
            del self._entries[key]
        async with anyio.create_task_group() as tg:
            for (_, backend), entry in idle:
                tg.start_soon(self._end, backend, entry.connection)
        return len(idle)

    async def run(self, interval_seconds: float | None = None) -> None:
        """Sweep until cancelled (a lifespan task); by default four times per idle limit."""
        interval = self._idle / 4 if interval_seconds is None else interval_seconds
        while True:
            await anyio.sleep(interval)
            try:
                await self.sweep()
            except Exception:
                logger.exception("sweeping idle upstream sessions failed")

    async def aclose(self) -> None:
        """End every pooled session (shutdown); later requests for one are refused."""
        self._closed = True
        entries, self._entries = self._entries, {}
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for (_, backend), entry in entries.items():
                    tg.start_soon(self._end, backend, entry.connection)

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(open=len(self._entries),
                              in_use=sum(1 for e in self._entries.values() if e.in_use),
                              opened=self._opened, ended=self._ended)

    async def _entry(self, key: tuple[str, str]) -> _Entry:
        while True:
            if self._closed:
                raise BackendUnavailable(key[1], "the gateway is shutting down")
            entry = self._entries.get(key)
            if entry is not None:
                return entry
            entry = await self._opening.run(key, lambda: self._open(key))
            if entry is not None:
                return entry

    async def _open(self, key: tuple[str, str]) -> _Entry | None:
        """A new pooled upstream session; None if the pool closed meanwhile (try again)."""
        connection = await self._connect(key[1])
        self._opened += 1
        if self._ledger is not None:
            self._ledger.record_opened(key[1])
        if self._closed:
            await self._end(key[1], connection)
            return None
        entry = self._entries[key] = _Entry(connection, self._clock())
        return entry

    async def _end(self, backend: str, connection: BackendConnection) -> None:
        try:
            await connection.aclose()
        except Exception:
            logger.warning("ending an upstream session with %s failed", backend, exc_info=True,
                           extra={"backend": backend})
        finally:
            self._ended += 1
            if self._ledger is not None:
                self._ledger.record_ended(backend)
