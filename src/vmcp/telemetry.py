"""Prometheus metrics of one vmcp process.

Counters that the code already keeps (cache statistics, the upstream ledger, security
events) are read at scrape time by a collector, so they cost nothing per request. Only
request and store timings are observed on the hot path. Each process has its own
registry (``uvicorn --workers`` gives one per worker, each scraped on its own port).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

from opentelemetry.trace import SpanKind
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from vmcp.audit.trail import AuditTrail
from vmcp.backend.health import HealthMonitor
from vmcp.errors import SessionNotFound, StoreError, StoreTimeout
from vmcp.session.manager import SessionManager
from vmcp.stateless.subscriptions import ChangeHub
from vmcp.store.base import Merged, SessionStore
from vmcp.store.pubsub import RedisSessionRelay
from vmcp.tracing import span
from vmcp.upstream.ledger import UpstreamLedger

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The metric objects, registered in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # CPU, memory, file descriptors, GC and the Python version of this process.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        self.requests = Counter(
            "vmcp_requests", "MCP HTTP requests by MCP method, HTTP status and outcome "
            "(ok, error: an HTTP error or a JSON-RPC error, cancelled).",
            ["method", "status", "outcome"], registry=self.registry)
        self.request_seconds = Histogram(
            "vmcp_request_duration_seconds", "Time to answer an MCP HTTP request.",
            ["method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.store_operations = Counter(
            "vmcp_store_operations", "Session store calls by operation and outcome.",
            ["op", "outcome"], registry=self.registry)
        self.store_seconds = Histogram(
            "vmcp_store_operation_duration_seconds", "Session store call latency.",
            ["op"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.backend_calls = Counter(
            "vmcp_backend_calls", "Calls forwarded to backends, by backend and outcome.",
            ["backend", "outcome"], registry=self.registry)
        self.backend_call_seconds = Histogram(
            "vmcp_backend_call_duration_seconds", "Backend call latency, as vmcp sees it.",
            ["backend"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.composite_calls = Counter(
            "vmcp_composite_calls", "Composite tool calls by tool and outcome (ok, failed, "
            "cancelled).", ["tool", "outcome"], registry=self.registry)
        self.composite_call_seconds = Histogram(
            "vmcp_composite_call_duration_seconds", "Time a composite tool's workflow ran.",
            ["tool"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.composite_steps = Counter(
            "vmcp_composite_steps", "Composite tool steps by tool and how they ended "
            "(completed, failed, skipped).", ["tool", "outcome"], registry=self.registry)
        self._backend_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._request_children: dict[tuple[str, int, str], tuple[Any, Any]] = {}
        self._store_children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def watch(self, manager: SessionManager, ledger: UpstreamLedger,
              relay: RedisSessionRelay | None = None,
              monitor: HealthMonitor | None = None) -> None:
        """Expose the manager's, the ledger's, the relay's and the health monitor's own
        figures at scrape time, and take the ledger's per-call figures."""
        self.registry.register(_StateCollector(manager, ledger, relay, monitor))
        ledger.call_observer = self.observe_backend_call

    def watch_audit(self, trail: AuditTrail) -> None:
        """Expose the audit trail's written and dropped counts at scrape time."""
        self.registry.register(_AuditCollector(trail))

    def watch_changes(self, hub: ChangeHub) -> None:
        """Expose the listen streams' figures at scrape time."""
        self.registry.register(_ChangesCollector(hub))

    def observe_request(self, method: str, status: int, outcome: str, seconds: float) -> None:
        # Label lookups cost more than the observation; the label sets are few and fixed
        # (methods are MCP's own names, see the transport), so keep the children.
        _observe(self._request_children, (method, status, outcome), seconds,
                 self.requests, self.request_seconds)

    def observe_backend_call(self, backend: str, outcome: str, seconds: float) -> None:
        _observe(self._backend_children, (backend, outcome), seconds,
                 self.backend_calls, self.backend_call_seconds)

    def observe_composite(self, tool: str, outcome: str, seconds: float,
                          steps: Mapping[str, int]) -> None:
        """One composite tool call: its outcome and time, and how its steps ended."""
        self.composite_calls.labels(tool, outcome).inc()
        self.composite_call_seconds.labels(tool).observe(seconds)
        for step_outcome, count in steps.items():
            self.composite_steps.labels(tool, step_outcome).inc(count)

    def observe_store(self, op: str, outcome: str, started: float) -> None:
        _observe(self._store_children, (op, outcome), time.perf_counter() - started,
                 self.store_operations, self.store_seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    def __init__(self, manager: SessionManager, ledger: UpstreamLedger,
                 relay: RedisSessionRelay | None, monitor: HealthMonitor | None) -> None:
        self._manager = manager
        self._ledger = ledger
        self._relay = relay
        self._monitor = monitor

    def collect(self) -> Iterator[Any]:
        stats = self._manager.statistics()
        cache = stats.cache
        yield GaugeMetricFamily("vmcp_live_sessions", "Live sessions cached on this replica.",
                                value=cache.size)
        for name, value, doc in (
            ("vmcp_cache_hits", cache.hits, "Cache hits checked alive."),
            ("vmcp_cache_misses", cache.misses, "Cache misses (restores attempted)."),
            ("vmcp_cache_restores", cache.loads, "Sessions restored from stored metadata."),
            ("vmcp_cache_restore_failures", cache.load_failures, "Restores that failed."),
            ("vmcp_cache_expirations", cache.expirations, "Cached sessions found ended."),
            ("vmcp_cache_evictions", cache.evictions,
             "Live sessions closed for capacity (least recently used)."),
            ("vmcp_cache_removals", cache.removals,
             "Live sessions closed because they ended (client DELETE, ended elsewhere)."),
            ("vmcp_security_events", stats.security_events,
             "Requests refused because the caller is not the session's identity."),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        opened = CounterMetricFamily("vmcp_upstream_sessions_opened",
                                     "Backend sessions opened or re-attached.", labels=["backend"])
        ended = CounterMetricFamily("vmcp_upstream_sessions_ended",
                                    "Backend sessions ended.", labels=["backend"])
        for backend, counts in self._ledger.snapshot().items():
            opened.add_metric([backend], counts.opened)
            ended.add_metric([backend], counts.ended)
        yield opened
        yield ended
        if self._monitor is not None:
            up = GaugeMetricFamily("vmcp_backend_up", "1 while a backend's probes find it fit "
                                   "for new sessions, else 0.", labels=["backend"])
            for backend in self._monitor.snapshot():
                up.add_metric([backend], float(self._monitor.usable_for_new_sessions(backend)))
            yield up
        if self._relay is not None:
            relayed = CounterMetricFamily(
                "vmcp_relay_messages", "Messages between replicas over Redis pub/sub.",
                labels=["direction"])
            relayed.add_metric(["published"], self._relay.published)
            relayed.add_metric(["delivered"], self._relay.delivered)
            yield relayed


class _AuditCollector(Collector):
    def __init__(self, trail: AuditTrail) -> None:
        self._trail = trail

    def collect(self) -> Iterator[Any]:
        for name, value, doc in (
            ("vmcp_audit_events_written", self._trail.written, "Audit events written."),
            ("vmcp_audit_events_dropped", self._trail.dropped,
             "Audit events dropped because the writer's queue was full."),
            ("vmcp_audit_write_errors", self._trail.write_errors,
             "Audit events the sink refused (disk full, closed output)."),
        ):
            yield CounterMetricFamily(name, doc, value=value)

class _ChangesCollector(Collector):
    def __init__(self, hub: ChangeHub) -> None:
        self._hub = hub

    def collect(self) -> Iterator[Any]:
        yield GaugeMetricFamily("vmcp_listen_streams",
                                "subscriptions/listen streams open on this replica.",
                                value=self._hub.listeners)
        yield CounterMetricFamily("vmcp_list_changes_delivered",
                                  "List changes sent to this replica's listen streams "
                                  "(after coalescing).", value=self._hub.delivered)
        yield CounterMetricFamily("vmcp_listen_streams_ended_slow",
                                  "Listen streams ended because their client stopped reading.",
                                  value=self._hub.ended_slow)


class InstrumentedStore:
    """A ``SessionStore`` that counts and times every call of the store it wraps."""

    def __init__(self, store: SessionStore, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics

    async def _timed(self, op: str, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        outcome = "ok"
        try:
            with span(f"store {op}", kind=SpanKind.CLIENT):
                return await call()
        except SessionNotFound:
            outcome = "not_found"
            raise
        except StoreTimeout:
            outcome = "timeout"
            raise
        except StoreError:
            outcome = "unavailable"
            raise
        finally:
            self._metrics.observe_store(op, outcome, started)

    async def create(self, session_id: str, metadata: Mapping[str, str]) -> bool:
        result: bool = await self._timed("create", lambda: self._store.create(session_id,
                                                                             metadata))
        return result

    async def update(self, session_id: str, metadata: Mapping[str, str]) -> bool:
        result: bool = await self._timed("update", lambda: self._store.update(session_id,
                                                                             metadata))
        return result

    async def merge(self, session_id: str, fields: Mapping[str, str], *,
                    remove: Collection[str] = (),
                    expect: Mapping[str, str | None] | None = None) -> Merged:
        result: Merged = await self._timed("merge", lambda: self._store.merge(
            session_id, fields, remove=remove, expect=expect))
        return result

    async def load(self, session_id: str) -> dict[str, str]:
        result: dict[str, str] = await self._timed("load", lambda: self._store.load(session_id))
        return result

    async def delete(self, session_id: str) -> None:
        await self._timed("delete", lambda: self._store.delete(session_id))

    async def ping(self) -> None:
        await self._timed("ping", self._store.ping)

    async def aclose(self) -> None:
        await self._store.aclose()


def _observe(children: dict[Any, tuple[Any, Any]], key: tuple[Any, ...], seconds: float,
             counter: Counter, histogram: Histogram) -> None:
    """Count one event and observe its duration: ``counter`` labelled by all of ``key``,
    ``histogram`` by its first part. The labelled children are looked up once per key and
    kept (label lookups cost more than the observation); nothing is allocated on a hit."""
    pair = children.get(key)
    if pair is None:
        pair = children[key] = (counter.labels(*map(str, key)), histogram.labels(str(key[0])))
    pair[0].inc()
    pair[1].observe(seconds)
