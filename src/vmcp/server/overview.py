"""The operator's view of the whole deployment, whichever replica serves the page.

Each replica runs a heartbeat (:meth:`OperatorView.run`): every
``status.heartbeat_seconds`` it samples its own traffic and announces itself in the store
(:mod:`vmcp.store.replicas`) with its version, start time, live sessions, backends'
health and its recent samples. ``/status`` and ``/ui`` then read every replica back, so
behind a round-robin balancer any replica shows all of them, a replica that stopped
beating shown as gone. Beside that: sessions per identity across the store (counts and
hashed labels only, never ids or tokens) and the aggregated catalog as this replica last
listed it. The page's sections are drawn from this document by
:mod:`vmcp.server.overview_page`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import anyio

from vmcp import __version__
from vmcp.aggregate import BackendCatalog
from vmcp.backend.health import HealthMonitor
from vmcp.config import AggregationConfig, StatusConfig, VmcpConfig
from vmcp.errors import StoreError
from vmcp.identity import SEPARATOR, UNAUTHENTICATED
from vmcp.server.activity import ActivitySampler
from vmcp.server.catalog_view import explain_catalog
from vmcp.session import SessionManager
from vmcp.session.connector import BackendConnector
from vmcp.session.metadata import IDENTITY
from vmcp.store import MemoryStore, RedisStore
from vmcp.store.census import Census, MemoryCensus, RedisCensus, SessionCensus
from vmcp.store.replicas import MemoryReplicaRegistry, RedisReplicaRegistry, ReplicaRegistry
from vmcp.telemetry import Metrics

logger = logging.getLogger(__name__)

CENSUS_LIMIT = 10_000
"""Session records read at most per count of sessions per identity."""

LocalState = Callable[[], dict[str, Any]]
"""This replica's own figures for its heartbeat: live sessions, backends' health."""


def identity_label(binding: str) -> str:
    """How an identity is shown: its issuer and a short hash of issuer and subject. The
    subject (often a person's e-mail) is never shown, and no token is ever at hand."""
    if binding == UNAUTHENTICATED:
        return "anonymous"
    issuer = binding.partition(SEPARATOR)[0]
    return f"{issuer} #{hashlib.sha256(binding.encode()).hexdigest()[:10]}"


def open_view(config: VmcpConfig, store: MemoryStore | RedisStore, metrics: Metrics, *,
              manager: SessionManager, monitor: HealthMonitor | None,
              connector: BackendConnector) -> OperatorView:
    """The view on the store the replica uses (its registry and census beside it)."""
    status, session = config.status, config.session
    registry: ReplicaRegistry
    census: SessionCensus
    if isinstance(store, RedisStore):
        registry = RedisReplicaRegistry(
            store.client, key_prefix=session.key_prefix, expiry_seconds=status.expiry_seconds,
            forget_seconds=status.forget_seconds, timeout_seconds=session.store_timeout_seconds)
        census = RedisCensus(store, field_name=IDENTITY,
                             timeout_seconds=session.store_timeout_seconds)
    else:
        registry = MemoryReplicaRegistry(expiry_seconds=status.expiry_seconds,
                                         forget_seconds=status.forget_seconds)
        census = MemoryCensus(store, field_name=IDENTITY)

    def local() -> dict[str, Any]:
        health = monitor.snapshot() if monitor is not None else {}
        return {"live_sessions": manager.statistics().cache.size,
                "backends": {b.name: (health[b.name].status.value if b.name in health
                                      else "unmonitored")
                             for b in connector.config.backends}}

    return OperatorView(
        status, replica_id=config.server.replica_id, store_kind=session.store_kind,
        registry=registry, census=census, local=local,
        sampler=ActivitySampler(metrics, capacity=status.history_samples),
        catalogs=lambda: (connector.config.aggregation, connector.catalogs_seen()))


class OperatorView:
    """This replica's heartbeat, and the deployment-wide part of ``/status``."""

    def __init__(self, config: StatusConfig, *, replica_id: str, store_kind: str,
                 registry: ReplicaRegistry, sampler: ActivitySampler,
                 census: SessionCensus, local: LocalState,
                 catalogs: Callable[[], tuple[AggregationConfig, dict[str, BackendCatalog]]],
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._replica_id = replica_id
        self._store_kind = store_kind
        self._registry = registry
        self._sampler = sampler
        self._census = census
        self._local = local
        self._catalogs = catalogs
        self._wall = wall_clock
        self._started = wall_clock()
        self._failing = False
        self._stopped = False
        self._beating: anyio.CancelScope | None = None
        self._census_at = -float("inf")
        self._census_doc: dict[str, Any] = {}
        self._census_lock = anyio.Lock()

    async def run(self) -> None:
        """Beat until cancelled or withdrawn: at once, then every ``heartbeat_seconds``."""
        with anyio.CancelScope() as self._beating:
            while not self._stopped:
                await self.beat()
                await anyio.sleep(self._config.heartbeat_seconds)

    async def beat(self) -> None:
        """Sample and announce; a store that cannot answer is logged once per outage (the
        replica goes on serving, and other replicas show it as gone meanwhile)."""
        if self._stopped:
            return
        sample = self._sampler.sample()
        record = {"version": __version__, "started": round(self._started, 3),
                  "store": self._store_kind, **self._local(),
                  "requests_per_second": round(sample["requests"] / sample["seconds"], 3),
                  "errors_per_second": round(sum(sample["errors"].values())
                                             / sample["seconds"], 3),
                  "samples": self._sampler.samples()}
        try:
            await self._registry.announce(self._replica_id, record)
        except StoreError as exc:
            if not self._failing:
                logger.warning("could not announce this replica in the store: %s", exc)
            self._failing = True
            return
        if self._failing:
            logger.info("announcing this replica in the store again")
        self._failing = False

    async def withdraw(self) -> None:
        """This replica stops: shown as gone from now on, not only once its beat lapses.
        The heartbeat stops first, so no beat can announce the replica again after this."""
        self._stopped = True
        if self._beating is not None:
            self._beating.cancel()
        try:
            await self._registry.withdraw(self._replica_id)
        except StoreError as exc:
            logger.warning("could not withdraw this replica from the store: %s", exc)

    async def document(self) -> dict[str, Any]:
        """``replicas``, ``identities`` and ``catalog`` for ``/status``."""
        now = self._wall()
        try:
            entries = await self._registry.replicas()
            replicas: list[dict[str, Any]] | None = [
                {**_readable(e.record or {}),
                 "replica_id": e.replica_id, "state": "up" if e.up else "gone",
                 "this": e.replica_id == self._replica_id, "last_beat": e.last_beat,
                 "seconds_since_beat": round(max(0.0, now - e.last_beat), 1)}
                for e in entries]
            registry_error = None
        except StoreError as exc:
            replicas, registry_error = None, str(exc)
        aggregation, seen = self._catalogs()
        explained, warnings = explain_catalog(seen, aggregation)
        return {
            "heartbeat_seconds": self._config.heartbeat_seconds,
            "expiry_seconds": self._config.expiry_seconds,
            "replicas": replicas, "replicas_error": registry_error,
            "identities": await self._identities(),
            "catalog": {"backends": {b: [i.as_json() for i in items]
                                     for b, items in explained.items()},
                        "warnings": warnings},
        }

    async def _identities(self) -> dict[str, Any]:
        """Sessions per identity, counted at most once per heartbeat interval."""
        async with self._census_lock:
            if time.monotonic() - self._census_at >= self._config.heartbeat_seconds:
                try:
                    census = await self._census.count(CENSUS_LIMIT)
                    self._census_doc = _census_document(census)
                except StoreError as exc:
                    self._census_doc = {"error": str(exc)}
                self._census_at = time.monotonic()
            return self._census_doc


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _readable_sample(sample: object) -> bool:
    """Whether a published sample has the shape this version charts (a replica of another
    version, or a corrupt record, must not break the page)."""
    if not isinstance(sample, dict):
        return False
    errors, backends = sample.get("errors"), sample.get("backends")
    return (all(_number(sample.get(k)) for k in ("t", "seconds", "requests"))
            and sample["seconds"] > 0
            and all(sample.get(q) is None or _number(sample.get(q)) for q in ("p50", "p99"))
            and isinstance(errors, dict) and all(_number(n) for n in errors.values())
            and isinstance(backends, dict) and all(
                isinstance(f, list) and len(f) == 2 and all(_number(n) for n in f)
                for f in backends.values()))


def _readable(record: Mapping[str, Any]) -> dict[str, Any]:
    """A replica's record with only the fields of the shapes the page uses."""
    kept: dict[str, Any] = {k: v for k, v in record.items()
                            if k in ("version", "store") and isinstance(v, str)}
    kept.update({k: v for k, v in record.items()
                 if k in ("started", "live_sessions", "requests_per_second",
                          "errors_per_second") and _number(v)})
    backends = record.get("backends")
    if isinstance(backends, dict):
        kept["backends"] = {str(k): str(v) for k, v in backends.items()}
    samples = record.get("samples")
    kept["samples"] = [s for s in samples if _readable_sample(s)] if isinstance(
        samples, list) else []
    return kept


def _census_document(census: Census) -> dict[str, Any]:
    labelled: dict[str, int] = defaultdict(int)
    for binding, count in census.counts.items():
        labelled[identity_label(binding)] += count
    return {"sessions": [{"identity": label, "sessions": count} for label, count in
                         sorted(labelled.items(), key=lambda item: (-item[1], item[0]))],
            "scanned": census.scanned, "complete": census.complete}
