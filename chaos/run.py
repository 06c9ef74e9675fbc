"""One chaos run: start everything, let clients and faults loose, clean up, check.

The run ends every session the clients know (DELETE, retried through what the last
faults left), waits a bounded time for the replicas to end the upstream sessions they
owe (idle stateless ones included), then reads the end state: each backend's own log of
sessions, and the session records left in Redis.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import httpx2
import redis

from chaos.checker import Violation, check
from chaos.clients import BOUND_SECONDS, Client, Registry
from chaos.cluster import (
    IDENTITIES,
    KEY_PREFIX,
    UPSTREAM_IDLE_SECONDS,
    Cluster,
    running_cluster,
    token_of,
)
from chaos.faults import Injector, RunClock
from chaos.history import EndState, Fault, Record
from chaos.wire import Wire

SETTLE_SECONDS = 30.0
"""Bound on waiting, after the clean-up, for upstream sessions to be ended."""
_SETTLE_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Settings:
    seconds: float
    seed: int
    clients: int
    workdir: Path
    fault_gap: tuple[float, float] = (2.0, 6.0)


@dataclass(frozen=True)
class Result:
    settings: Settings
    records: list[Record]
    faults: list[Fault]
    end: EndState
    violations: list[Violation]
    wall_seconds: float


def redis_sessions(cluster: Cluster) -> tuple[str, ...]:
    """The session records in Redis: keys ``prefix + id``, not the event logs or indexes."""
    client = redis.Redis(host="127.0.0.1", port=cluster.redis.port, socket_timeout=5)
    try:
        keys = [key.decode() for key in client.scan_iter(match=f"{KEY_PREFIX}*", count=1000)]
    finally:
        client.close()
    return tuple(sorted(k[len(KEY_PREFIX):] for k in keys if ":" not in k[len(KEY_PREFIX):]))


def end_state(cluster: Cluster, registry: Registry, clock: RunClock) -> EndState:
    return EndState(
        upstream=tuple(cluster.upstream_sessions(clock.origin)),
        last_backend_generation=cluster.last_backend_generations(),
        killed_replicas=frozenset(cluster.killed),
        redis_sessions=redis_sessions(cluster),
        known_sessions=frozenset(registry.known),
    )


async def settle(cluster: Cluster, registry: Registry, records: list[Record],
                 faults: list[Fault], clock: RunClock) -> EndState:
    """The end state once nothing is left to end, or as it is after ``SETTLE_SECONDS``."""
    await anyio.sleep(UPSTREAM_IDLE_SECONDS)
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        end = await anyio.to_thread.run_sync(end_state, cluster, registry, clock)
        owed = [v for v in check(records, faults, end)
                if v.kind in ("upstream_leak", "redis_leftover")]
        if not owed or time.monotonic() > deadline:
            return end
        await anyio.sleep(_SETTLE_POLL_SECONDS)


async def run(settings: Settings) -> Result:
    began = time.monotonic()
    async with running_cluster(settings.workdir) as cluster:
        clock = RunClock()
        registry = Registry()
        limits = httpx2.Limits(max_connections=400, max_keepalive_connections=100)
        async with httpx2.AsyncClient(timeout=httpx2.Timeout(BOUND_SECONDS * 3),
                                      limits=limits) as http:
            wire = Wire(http, cluster.url, clock, cluster.replica_of_port)
            clients = [Client(f"c{i}", IDENTITIES[i % len(IDENTITIES)],
                              token_of(IDENTITIES[i % len(IDENTITIES)]),
                              random.Random(f"{settings.seed}:client:{i}"), wire, registry,
                              clock)
                       for i in range(settings.clients)]
            injector = Injector(cluster, clock, random.Random(f"{settings.seed}:faults"))
            until = clock() + settings.seconds

            def loading() -> bool:
                """The load lasts its time, and until every kind of fault has hit it."""
                return clock() < until or not injector.met_every_kind

            async with anyio.create_task_group() as tg:
                for client in clients:
                    tg.start_soon(client.run, loading)
                tg.start_soon(injector.run, loading, settings.fault_gap)
            async with anyio.create_task_group() as tg:
                for client in clients:
                    tg.start_soon(client.cleanup)
            end = await settle(cluster, registry, wire.records, injector.done, clock)
        violations = check(wire.records, injector.done, end)
        return Result(settings, list(wire.records), list(injector.done), end, violations,
                      time.monotonic() - began)


__all__ = ["Result", "Settings", "end_state", "redis_sessions", "run"]
