"""Is each backend fit to join new sessions? Periodic probes decide.

Statuses: ``unknown`` until the first probe; ``healthy``; ``degraded`` (answered, but
slower than the threshold, or failed fewer times in a row than the threshold);
``unhealthy`` (failed ``unhealthy_threshold`` times in a row); ``unauthenticated`` (the
backend refused our credentials: 401/403). New sessions skip ``unhealthy`` and
``unauthenticated`` backends; ``degraded`` and ``unknown`` ones are tried. Restores are
never filtered: a session keeps the backends it was promised.

A backend that is sent each caller's own credentials (outgoing auth ``forward`` or
``token_exchange``) refuses a probe, which has no caller: for it a 401/403 only shows
that it answers, and counts as healthy.

A ``stdio`` backend is not probed over the wire: its health is its process's state,
read live (``unhealthy`` with the supervisor's last error while it is down, ``healthy``
while it runs), so it turns unhealthy the moment its process stops.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import anyio
import httpx2

from vmcp import __version__
from vmcp.backend.contract import BackendTarget
from vmcp.backend.stdio import StdioProcesses
from vmcp.config import HealthConfig

logger = logging.getLogger(__name__)

PROBE_CLIENT = {"name": "vmcp-health", "version": __version__}


class HealthStatus(enum.StrEnum):
    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    UNAUTHENTICATED = "unauthenticated"


@dataclass(frozen=True)
class BackendHealth:
    status: HealthStatus = HealthStatus.UNKNOWN
    latency_seconds: float | None = None
    consecutive_failures: int = 0
    last_error: str | None = None
    checked_at: float | None = None


class HealthMonitor:
    """Probes every backend on an interval; ``usable_for_new_sessions`` reads the result."""

    def __init__(
        self,
        targets: Sequence[BackendTarget],
        http: httpx2.AsyncClient,
        policy: HealthConfig,
        *,
        needs_caller: Callable[[str], bool] | None = None,
        stdio: StdioProcesses | None = None,
    ) -> None:
        """``policy`` gives the interval, the probe's bound and the thresholds (its
        ``enabled`` and breaker settings are for the caller)."""
        self._targets = {t.name: t for t in targets}
        self._stdio = stdio
        if stdio is not None:
            stdio.on_change = self._stdio_changed
        self._needs_caller = needs_caller
        self._http = http
        self._policy = policy
        self._health: dict[str, BackendHealth] = {name: BackendHealth() for name in self._targets}
        self._probed = anyio.Event()
        # Told the name of a backend that answers again after failing, so that live
        # sessions which left it out (it was down when they were created) take it in.
        self.on_recovered: Callable[[str], None] | None = None
        self.on_usability_change: Callable[[str], None] | None = None
        """Told a backend's name when it turns usable or unusable (what clients can list
        changes with it)."""

    def set_targets(self, targets: Sequence[BackendTarget]) -> None:
        """Follow a reloaded configuration: keep what is known of kept backends."""
        self._targets = {t.name: t for t in targets}
        self._health = {name: self._health.get(name, BackendHealth()) for name in self._targets}

    def usable_for_new_sessions(self, backend: str) -> bool:
        return _usable(self._current(backend).status)

    def snapshot(self) -> Mapping[str, BackendHealth]:
        return {name: self._current(name) for name in self._health}

    def _stdio_changed(self, name: str, running: bool) -> None:
        """A stdio process started or stopped: its health changed at that moment (no
        probe sees it), so say so as a probe would."""
        if running and self.on_recovered is not None:
            self.on_recovered(name)
        if self.on_usability_change is not None:
            self.on_usability_change(name)

    def _current(self, name: str) -> BackendHealth:
        recorded = self._health.get(name, BackendHealth())
        target = self._targets.get(name)
        if target is None or target.transport != "stdio":
            return recorded
        process = self._stdio.get(name) if self._stdio is not None else None
        if process is None:
            return recorded
        if process.running:
            return BackendHealth(HealthStatus.HEALTHY, recorded.latency_seconds, 0, None,
                                 time.time())
        if process.supervisor.last_error is None:  # still starting for the first time
            return BackendHealth()
        return BackendHealth(HealthStatus.UNHEALTHY, None,
                             max(recorded.consecutive_failures, 1),
                             process.supervisor.last_error, time.time())

    async def first_round(self) -> None:
        """Wait until every backend has been probed once."""
        await self._probed.wait()

    @property
    def probed(self) -> bool:
        """Every backend has been probed at least once (readiness)."""
        return self._probed.is_set()

    async def run(self) -> None:
        """Probe all backends, then again every interval; a lifespan task."""
        while True:
            await self.probe_all()
            self._probed.set()
            await anyio.sleep(self._policy.interval_seconds)

    async def probe_all(self) -> None:
        async with anyio.create_task_group() as tg:
            for target in self._targets.values():
                tg.start_soon(self._probe_and_record, target)

    async def _probe_and_record(self, target: BackendTarget) -> None:
        previous = self._health[target.name]
        started = time.perf_counter()
        try:
            with anyio.fail_after(self._policy.timeout_seconds):
                status_code = await self._probe(target)
        except (TimeoutError, httpx2.HTTPError, ValueError) as exc:
            failures = previous.consecutive_failures + 1
            status = (HealthStatus.UNHEALTHY if failures >= self._policy.unhealthy_threshold
                      else HealthStatus.DEGRADED)
            # The last good probe's latency says nothing about a backend that stopped
            # answering: the status page shows none rather than a stale figure.
            health = replace(previous, status=status, latency_seconds=None,
                             consecutive_failures=failures,
                             last_error=f"{type(exc).__name__}: {exc}".rstrip(": "),
                             checked_at=time.time())
        else:
            latency = time.perf_counter() - started
            refused = status_code in (401, 403)
            if refused and not (self._needs_caller and self._needs_caller(target.name)):
                health = BackendHealth(HealthStatus.UNAUTHENTICATED, latency, 0,
                                       f"HTTP {status_code}", time.time())
            else:
                slow = latency > self._policy.degraded_latency_seconds
                health = BackendHealth(HealthStatus.DEGRADED if slow else HealthStatus.HEALTHY,
                                       latency, 0, None, time.time())
        self._health[target.name] = health
        self._log_change(target.name, previous, health)
        recovered = (health.consecutive_failures == 0 and _usable(health.status)
                     and (previous.consecutive_failures > 0 or not _usable(previous.status)))
        if recovered and self.on_recovered is not None:
            self.on_recovered(target.name)
        if _usable(health.status) != _usable(previous.status) and (
                self.on_usability_change is not None):
            self.on_usability_change(target.name)

    def _log_change(self, name: str, previous: BackendHealth, health: BackendHealth) -> None:
        """A failed probe is a WARNING from the first one on, not only once the backend
        turns unhealthy: by then new sessions have been leaving it out for a while."""
        extra = {"backend": name, "error": health.last_error}
        if health.consecutive_failures == 1:
            logger.warning("backend %s probe failed (%d of %d before unhealthy): %s", name,
                           1, self._policy.unhealthy_threshold, health.last_error, extra=extra)
        if health.status == previous.status:
            return
        bad = (health.status in (HealthStatus.UNHEALTHY, HealthStatus.UNAUTHENTICATED)
               or health.consecutive_failures > 1)
        if bad or health.consecutive_failures == 0:
            logger.log(logging.WARNING if bad else logging.INFO, "backend %s is now %s", name,
                       health.status.value, extra=extra)

    async def _probe(self, target: BackendTarget) -> int:
        """Open and end one backend session; the HTTP status of the ``initialize``.

        Raises ``ValueError`` for an answer that shows the backend is broken (5xx, or a
        success without a session it can end).
        """
        if target.transport == "stdio":
            process = self._stdio.get(target.name) if self._stdio is not None else None
            last = process.supervisor.last_error if process is not None else "not started"
            if last is not None and not (process is not None and process.running):
                raise ValueError(f"stdio process not running: {last}")
            return 200  # running, or starting for the first time (not a failure yet)
        if target.transport == "sse":
            async with self._http.stream("GET", target.url, headers={
                    "Accept": "text/event-stream", **target.headers}) as stream:
                if stream.status_code >= 300 and stream.status_code not in (401, 403):
                    raise ValueError(f"SSE endpoint answered HTTP {stream.status_code}")
                return stream.status_code
        headers = {"Accept": "application/json, text/event-stream",
                   "Content-Type": "application/json", **target.headers}
        body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": PROBE_CLIENT}}
        response = await self._http.post(target.url, json=body, headers=headers)
        if response.status_code in (401, 403):
            return response.status_code
        if response.status_code >= 300:
            raise ValueError(f"initialize answered HTTP {response.status_code}")
        session_id = response.headers.get("mcp-session-id")
        if session_id:
            await self._http.delete(target.url, headers={**headers, "Mcp-Session-Id": session_id})
        return response.status_code


def _usable(status: HealthStatus) -> bool:
    return status not in (HealthStatus.UNHEALTHY, HealthStatus.UNAUTHENTICATED)
