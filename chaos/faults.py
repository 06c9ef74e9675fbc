"""A seeded schedule of faults, injected one at a time while the clients work.

Each fault is drawn from the seed (kind, target, how long), applied, and undone; what was
done is written down as a :class:`~chaos.history.Fault` whose window runs from the first
touch until the part answers again, which is what the checker's excuses are measured by.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Callable

import anyio
import anyio.to_thread

from chaos.cluster import PROXIED_BACKEND, REPLICAS, Cluster
from chaos.history import (
    BACKEND_DELAY,
    BACKEND_RESET,
    BACKEND_RESTART,
    REDIS_DELAY,
    REDIS_PAUSE,
    REDIS_RESET,
    REDIS_RESTART,
    REPLICA_DRAIN,
    REPLICA_KILL,
    Fault,
)
from tests.support.processes import RUNNING
from tests.support.tcp_proxy import TcpProxy

# Relative weights of the fault kinds in a schedule.
WEIGHTS = {
    REDIS_RESTART: 2, REDIS_PAUSE: 2, REDIS_DELAY: 2, REDIS_RESET: 2,
    REPLICA_KILL: 3, REPLICA_DRAIN: 2,
    BACKEND_RESTART: 2, BACKEND_DELAY: 2, BACKEND_RESET: 2,
}
RESTARTED_BACKENDS = ("weather", "fixture", "notes")
DRAIN_WAIT_SECONDS = 15.0
"""Longer than the replica's drain (10 s): a replica still running then is a failure."""


class Injector:
    """Applies faults to ``cluster`` and notes each one with the run's clock."""

    def __init__(self, cluster: Cluster, clock: Callable[[], float], rng: random.Random
                 ) -> None:
        self.cluster = cluster
        self.clock = clock
        self.rng = rng
        self.done: list[Fault] = []

    @property
    def met_every_kind(self) -> bool:
        return {f.kind for f in self.done} >= set(WEIGHTS)

    async def run(self, loading: Callable[[], bool], gap: tuple[float, float]) -> None:
        """Inject faults one after another, ``gap`` seconds apart, while ``loading()``.

        Every kind comes once first (in a seeded order), so even a short run meets them
        all; then kinds are drawn by weight.
        """
        kinds = list(WEIGHTS)
        weights = [WEIGHTS[k] for k in kinds]
        first_round = self.rng.sample(kinds, len(kinds))
        while True:
            await anyio.sleep(self.rng.uniform(*gap))
            if not loading():
                return
            kind = first_round.pop(0) if first_round else self.rng.choices(kinds, weights)[0]
            await self.inject(kind)

    async def inject(self, kind: str) -> None:
        start = self.clock()
        target = await getattr(self, f"_{kind}")()
        self.done.append(Fault(kind, target, start, self.clock()))

    # -- the store ------------------------------------------------------------------------

    async def _redis_restart(self) -> str:
        redis = self.cluster.redis
        await anyio.to_thread.run_sync(redis.stop)
        await anyio.sleep(self.rng.uniform(0.5, 3.0))
        await anyio.to_thread.run_sync(redis.start)
        return "redis"

    async def _redis_pause(self) -> str:
        millis = self.rng.randint(300, 2500)
        await anyio.to_thread.run_sync(self.cluster.redis.command, "CLIENT", "PAUSE",
                                       str(millis), "ALL")
        await anyio.sleep(millis / 1000)
        return f"redis {millis} ms"

    async def _stall(self, proxy: TcpProxy, name: str) -> str:
        """Hold all traffic through ``proxy`` for a while: a hung peer, then a slow one."""
        seconds = self.rng.uniform(0.3, 2.0)
        proxy.stall()
        await anyio.sleep(seconds)
        proxy.resume()
        return f"{name} {seconds:.1f} s"

    async def _redis_delay(self) -> str:
        return await self._stall(self.cluster.redis_proxy, "redis")

    async def _redis_reset(self) -> str:
        self.cluster.redis_proxy.cut()
        return "redis"

    # -- the replicas ---------------------------------------------------------------------

    async def _replica_kill(self) -> str:
        name = self.rng.choice(REPLICAS)
        managed = self.cluster.replicas[name]
        self.cluster.killed.add(self.cluster.replica_tag(name))
        managed.process.kill()
        await anyio.to_thread.run_sync(managed.process.wait)
        managed.stopped = True
        if managed in RUNNING:
            RUNNING.remove(managed)
        await anyio.sleep(self.rng.uniform(0.2, 2.0))
        await self.cluster.restart_replica(name)
        return name

    async def _replica_drain(self) -> str:
        name = self.rng.choice(REPLICAS)
        managed = self.cluster.replicas[name]
        managed.process.terminate()
        try:
            await anyio.to_thread.run_sync(managed.process.wait, DRAIN_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            # Not a fault we meant: note it as a kill, so its leftovers are excused, and
            # say so in the fault's target for the figures.
            self.cluster.killed.add(self.cluster.replica_tag(name))
            managed.process.kill()
            await anyio.to_thread.run_sync(managed.process.wait)
            name += " (drain overran, killed)"
        managed.stopped = True
        if managed in RUNNING:
            RUNNING.remove(managed)
        await self.cluster.restart_replica(name.split()[0])
        return name

    # -- the backends ---------------------------------------------------------------------

    async def _backend_restart(self) -> str:
        name = self.rng.choice(RESTARTED_BACKENDS)
        managed = self.cluster.backends[name]
        await anyio.to_thread.run_sync(managed.stop)
        await anyio.sleep(self.rng.uniform(0.2, 2.0))
        await self.cluster.restart_backend(name)
        return name

    async def _backend_delay(self) -> str:
        return await self._stall(self.cluster.backend_proxy, PROXIED_BACKEND)

    async def _backend_reset(self) -> str:
        self.cluster.backend_proxy.cut()
        return PROXIED_BACKEND


class RunClock:
    """The run's clock: seconds since ``origin`` on the (system-wide) monotonic clock."""

    def __init__(self) -> None:
        self.origin = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.origin


__all__ = ["WEIGHTS", "Injector", "RunClock"]
