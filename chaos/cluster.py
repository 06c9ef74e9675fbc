"""The system under test: Redis, three backends, three ``vmcp serve`` replicas, nginx.

Built from the test suite's own helpers (``tests/support``), so the harness and the tests
start real processes the same way. Redis and the slow backend sit behind loopback TCP
proxies the fault schedule can delay or cut. Each replica sends an ``X-Replica`` header
(``replica2.3``: the third process started as replica2) to every backend, and each backend
writes down the sessions it opens and ends, so leaks are counted by the backends' own logs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from chaos.history import UpstreamSession
from tests.support.nginx import running_nginx
from tests.support.processes import (
    CONFORMANCE_MODULE,
    NOTES_MODULE,
    WEATHER_MODULE,
    ManagedProcess,
    restart_backend,
    restart_gateway,
    start_backends,
    start_gateways,
)
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import TcpProxy

KEY_PREFIX = "vmcp:chaos:"
REPLICAS = ("replica1", "replica2", "replica3")

# weather: slow and streaming calls (progress), a sampling question; it speaks only the
# session-based revisions, so stateless clients reach it through input_required rounds.
# fixture: asks the client (sampling, elicitation) mid-call, and input_required rounds of
# its own at 2026-07-28. notes: a stateless 2026-07-28 server.
BACKENDS = {
    "weather": f"{WEATHER_MODULE} --handshake-only",
    "fixture": CONFORMANCE_MODULE,
    "notes": f"{NOTES_MODULE} --stateless",
}
PROXIED_BACKEND = "weather"

RESTART_TIMEOUT_SECONDS = 120.0
"""A started or restarted process gets this long to answer: on a shared, loaded machine a Python
process can take tens of seconds to start."""

CALL_TIMEOUT_SECONDS = 15.0
"""Below the clients' bound: a call the backend never finishes is answered in time."""

IDENTITIES = ("alice", "bob", "carol")
ISSUER = "chaos"
UPSTREAM_IDLE_SECONDS = 4.0
"""Upstream sessions held for stateless clients end this long after their last use, so
the end of a run can wait for them to be ended."""


def token_of(identity: str) -> str:
    return f"chaos-token-{identity}"


@dataclass
class Cluster:
    """Handles on every running part, and how each was started (to restart it)."""

    workdir: Path
    url: str
    redis: RedisServer
    redis_proxy: TcpProxy
    backend_proxy: TcpProxy
    backends: dict[str, ManagedProcess]
    replicas: dict[str, ManagedProcess]
    generations: dict[str, int] = field(default_factory=dict)
    killed: set[str] = field(default_factory=set)

    def replica_tag(self, name: str) -> str:
        return f"{name}.{self.generations.get(name, 0)}"

    def replica_of_port(self, port: int) -> str | None:
        return next((name for name, r in self.replicas.items() if r.port == port), None)

    def replica_config(self, name: str) -> dict[str, Any]:
        tag = self.replica_tag(name)
        backends = []
        for backend, managed in self.backends.items():
            port = self.backend_proxy.port if backend == PROXIED_BACKEND else managed.port
            backends.append({"name": backend, "url": f"http://127.0.0.1:{port}/mcp",
                             "headers": {"X-Replica": tag},
                             "call_timeout_seconds": CALL_TIMEOUT_SECONDS})
        tokens = [{"token_sha256": hashlib.sha256(token_of(i).encode()).hexdigest(),
                   "issuer": ISSUER, "subject": i} for i in IDENTITIES]
        return {
            "backends": backends,
            "server": {"replica_id": tag},
            "session": {"store": f"redis://127.0.0.1:{self.redis_proxy.port}/0",
                        "key_prefix": KEY_PREFIX, "store_timeout_seconds": 1.0},
            "auth": {"incoming": {"type": "static", "tokens": tokens}},
            "health": {"interval_seconds": 5.0, "timeout_seconds": 2.0},
            "stateless": {"upstream_idle_seconds": UPSTREAM_IDLE_SECONDS,
                          "answer_timeout_seconds": CALL_TIMEOUT_SECONDS},
        }

    async def restart_replica(self, name: str) -> None:
        """Start a stopped replica again (a new process, a new generation)."""
        self.generations[name] = self.generations.get(name, 0) + 1
        await anyio.to_thread.run_sync(restart_gateway, self.replicas[name],
                                       self.replica_config(name), self.workdir,
                                       RESTART_TIMEOUT_SECONDS)

    async def restart_backend(self, name: str) -> None:
        self.generations[name] = self.generations.get(name, 0) + 1
        module = _backend_module(name, self.generations[name], self.workdir)
        await anyio.to_thread.run_sync(restart_backend, self.backends[name], module,
                                       RESTART_TIMEOUT_SECONDS)

    def upstream_sessions(self, origin: float = 0.0) -> list[UpstreamSession]:
        """Every session each backend process logged, with whether it logged its end;
        ``origin`` is the run clock's zero on the monotonic clock."""
        found: list[UpstreamSession] = []
        for backend in self.backends:
            for generation in range(self.generations.get(backend, 0) + 1):
                path = _session_log(backend, generation, self.workdir)
                lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
                entries = [json.loads(line) for line in lines]
                ended = {e["session"] for e in entries if e["event"] == "ended"}
                found.extend(UpstreamSession(backend, generation, e["session"], e["by"],
                                             e["session"] in ended, e["at"] - origin)
                             for e in entries if e["event"] == "opened")
        return found

    def last_backend_generations(self) -> dict[str, int]:
        return {backend: self.generations.get(backend, 0) for backend in self.backends}


def _session_log(backend: str, generation: int, workdir: Path) -> Path:
    """One file per backend process: a restarted backend starts a log of its own."""
    return workdir / "backends" / f"sessions-{backend}.{generation}.jsonl"


def _backend_module(name: str, generation: int, workdir: Path) -> str:
    return f"{BACKENDS[name]} --session-log {_session_log(name, generation, workdir)}"


@contextlib.asynccontextmanager
async def running_cluster(workdir: Path) -> AsyncIterator[Cluster]:
    """Everything started, in order; stopped in reverse on the way out."""
    redis = RedisServer(workdir / "redis", appendonly=True)
    await anyio.to_thread.run_sync(redis.start)
    backends: Mapping[str, ManagedProcess] = {}
    replicas: Mapping[str, ManagedProcess] = {}
    try:
        modules = {name: _backend_module(name, 0, workdir) for name in BACKENDS}
        backends = await anyio.to_thread.run_sync(start_backends, modules, workdir / "backends",
                                                  RESTART_TIMEOUT_SECONDS)
        async with TcpProxy(redis.port) as redis_proxy, \
                TcpProxy(backends[PROXIED_BACKEND].port) as backend_proxy:
            cluster = Cluster(workdir, "", redis, redis_proxy, backend_proxy, dict(backends), {})
            configs = {name: cluster.replica_config(name) for name in REPLICAS}
            replicas = await anyio.to_thread.run_sync(start_gateways, configs, workdir,
                                                      RESTART_TIMEOUT_SECONDS)
            cluster.replicas = dict(replicas)
            nginx = running_nginx([replicas[n].port for n in REPLICAS], workdir / "nginx",
                                  extra="        add_header X-Upstream $upstream_addr always;\n")
            cluster.url = await anyio.to_thread.run_sync(nginx.__enter__)
            try:
                yield cluster
            finally:
                await anyio.to_thread.run_sync(nginx.__exit__, None, None, None)
                for managed in replicas.values():
                    await anyio.to_thread.run_sync(managed.stop)
    finally:
        for managed in [*replicas.values(), *backends.values()]:
            await anyio.to_thread.run_sync(managed.stop)
        await anyio.to_thread.run_sync(redis.stop)


__all__ = ["BACKENDS", "IDENTITIES", "ISSUER", "KEY_PREFIX", "REPLICAS", "Cluster",
           "running_cluster", "token_of"]
