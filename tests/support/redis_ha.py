"""Redis Sentinel and Redis Cluster on loopback, owned by the test run.

``SentinelSetup``: a master, one replica and three sentinels (quorum 2, a master is
judged down after 1 s). ``ClusterSetup``: six nodes, three masters each with a replica
(node timeout 1.5 s). Both give the store URL the gateway takes, can SIGKILL the current
master and wait until the store has promoted another, and ``heal`` restarts the killed
process so that the topology is whole again (it rejoins as a replica).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from redis.cluster import RedisCluster

from tests.support.redis_server import RedisServer, free_port

SERVICE = "vmcp"
WAIT_SECONDS = 30.0
# A replica's first sync starts at once (the default waits 5 s for more replicas).
SYNC_AT_ONCE = ["--repl-diskless-sync-delay", "0"]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {timeout:g}s: {what}")
        time.sleep(0.05)


def acknowledged(master: RedisServer) -> None:
    """Wait until the master's replica has every write so far (WAIT). Replication is
    asynchronous: a write the replica never received dies with the master; the tests
    are about what the gateway does, not about that."""
    with _client(master.port) as client:
        if int(client.execute_command("WAIT", 1, 5000)) < 1:
            raise RuntimeError(f"no replica acknowledged the writes of port {master.port}")


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True)


def info_field(port: int, section: str, field: str) -> str:
    with _client(port) as client:
        return str(client.info(section).get(field, ""))


class SentinelSetup:
    """A master, a replica and three sentinels; the URL names all three sentinels."""

    def __init__(self, workdir: Path) -> None:
        self.master = RedisServer(workdir / "master", extra_args=SYNC_AT_ONCE)
        self.replica = RedisServer(workdir / "replica", extra_args=[
            *SYNC_AT_ONCE, "--replicaof", "127.0.0.1", str(self.master.port)])
        monitor = (f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2\n"
                   f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                   f"sentinel failover-timeout {SERVICE} 5000\n")
        self.sentinels = [RedisServer(workdir / f"sentinel{n}", sentinel=monitor)
                          for n in range(3)]
        self.kind = "sentinel"

    @property
    def servers(self) -> list[RedisServer]:
        return [self.master, self.replica]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        wait_for(lambda: info_field(self.replica.port, "replication",
                                    "master_link_status") == "up", "the replica in sync")
        for sentinel in self.sentinels:
            sentinel.start()
        wait_for(lambda: self._sentinels_agree(others=0), "the sentinels see the replica")

    def _sentinels_agree(self, *, others: int) -> bool:
        """Every sentinel sees the master's replica and at least ``others`` sentinels
        (they find each other through hello messages every 2 s: only a failover needs
        them to, so ``start`` does not wait for it)."""
        for sentinel in self.sentinels:
            with _client(sentinel.port) as client:
                fields: Any = client.sentinel_master(SERVICE)
                if (int(fields["num-other-sentinels"]) < others
                        or int(fields["num-slaves"]) != 1):
                    return False
        return True

    def master_port(self) -> int:
        with _client(self.sentinels[0].port) as client:
            _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(port)

    def current_master(self) -> RedisServer:
        port = self.master_port()
        return next(s for s in self.servers if s.port == port)

    def kill_master(self) -> RedisServer:
        wait_for(lambda: self._sentinels_agree(others=len(self.sentinels) - 1),
                 "the sentinels know each other")
        killed = self.current_master()
        acknowledged(killed)
        killed.kill()
        return killed

    def wait_failover(self, killed: RedisServer) -> None:
        """Until a sentinel names another master and that master takes writes."""
        def promoted() -> bool:
            port = self.master_port()
            return port != killed.port and info_field(port, "replication", "role") == "master"
        wait_for(promoted, "a new master")

    def heal(self, killed: RedisServer) -> None:
        """Restart the killed server; the sentinels make it a replica of the new master."""
        if killed.process is None:
            killed.start()
        wait_for(lambda: info_field(killed.port, "replication", "role") == "slave"
                 and info_field(killed.port, "replication", "master_link_status") == "up",
                 "the old master back as a replica")
        wait_for(lambda: self._sentinels_agree(others=0), "the sentinels see the replica")

    def command(self, *args: str) -> Any:
        with _client(self.master_port()) as client:
            return client.execute_command(*args)

    def command_value(self, *args: str) -> str:
        return str(self.command(*args))

    def stop(self) -> None:
        for server in [*self.sentinels, *self.servers]:
            server.stop()


class ClusterSetup:
    """Six nodes, three masters with a replica each; the URL names three seed nodes."""

    def __init__(self, workdir: Path) -> None:
        self.nodes = [
            RedisServer(workdir / f"node{n}", extra_args=[
                *SYNC_AT_ONCE, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "1500",
                # A replica may take over however long its link was down.
                "--cluster-replica-validity-factor", "0",
                # The bus port, given: the default (port + 10000) may not exist.
                "--cluster-port", str(free_port())])
            for n in range(6)]
        self.kind = "cluster"

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create",
             *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=60)
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        def healthy() -> bool:
            for node in self.nodes:
                if node.process is None:
                    continue
                if info_cluster(node.port).get("cluster_state") != "ok":
                    return False
                if len(self._view(node.port)) != len(self.nodes):
                    return False
                if info_field(node.port, "replication", "role") == "slave" and info_field(
                        node.port, "replication", "master_link_status") != "up":
                    return False
            return all(not ("fail" in flags or "handshake" in flags)
                       for flags, _ in self._view(self._live().port).values())
        wait_for(healthy, "cluster_state:ok on every node, every node known, replicas in sync")

    def _live(self) -> RedisServer:
        return next(n for n in self.nodes if n.process is not None)

    def _view(self, port: int) -> dict[int, tuple[str, str]]:
        """Node port -> (flags, id of its master or '-') as one node sees the cluster."""
        with _client(port) as client:
            text = client.execute_command("CLUSTER", "NODES")
        view = {}
        for line in str(text).splitlines():
            fields = line.split()
            address = fields[1].split("@")[0]
            view[int(address.rsplit(":", 1)[1])] = (fields[2], fields[3])
        return view

    def masters(self) -> list[RedisServer]:
        view = self._view(self._live().port)
        return [n for n in self.nodes
                if n.process is not None and "master" in view[n.port][0]
                and "fail" not in view[n.port][0]]

    def kill_master(self, *, seed: bool = False, port: int | None = None) -> RedisServer:
        """SIGKILL a master: the one on ``port``, else the first seed of the URL if it is
        one and ``seed``, else any."""
        masters = self.masters()
        seeds = [n for n in masters if n in self.nodes[:3]]
        if port is not None:
            killed = next(n for n in masters if n.port == port)
        else:
            killed = seeds[0] if seed and seeds else masters[-1]
        acknowledged(killed)
        killed.kill()
        return killed

    def wait_failover(self, killed: RedisServer) -> None:
        """Until the killed master's replica has taken over and the cluster is ok."""
        def promoted() -> bool:
            port = self._live().port
            view = self._view(port)
            return ("fail" in view[killed.port][0]
                    and len(self.masters()) == 3
                    and info_cluster(port).get("cluster_state") == "ok")
        wait_for(promoted, "the killed master's replica promoted")

    def heal(self, killed: RedisServer) -> None:
        """Restart the killed node: it rejoins with its nodes.conf as a replica."""
        if killed.process is None:
            killed.start()
        self._wait_healthy()

    def command(self, *args: str) -> Any:
        client = RedisCluster(host="127.0.0.1", port=self._live().port, socket_timeout=2,
                              decode_responses=True)
        try:
            return client.execute_command(*args)
        finally:
            client.close()

    def command_value(self, *args: str) -> str:
        return str(self.command(*args))

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def info_cluster(port: int) -> dict[str, str]:
    with _client(port) as client:
        text = client.execute_command("CLUSTER", "INFO")
    return dict(line.split(":", 1) for line in str(text).splitlines() if ":" in line)


StoreServer = RedisServer | SentinelSetup | ClusterSetup
Setup = TypeVar("Setup", SentinelSetup, ClusterSetup)


@contextlib.contextmanager
def running(setup: Setup) -> Iterator[Setup]:
    """``setup`` started, and stopped however the block ends."""
    try:
        setup.start()
        yield setup
    finally:
        setup.stop()


# The kinds of store scale-out behaviours run on, and the session fixture of each (in
# tests/conftest.py). Sentinel and Cluster cost a few seconds of processes: ``slow``, and
# CI runs them.
STORE_KINDS = ["standalone", pytest.param("sentinel", marks=pytest.mark.slow),
               pytest.param("cluster", marks=pytest.mark.slow)]
STORE_FIXTURES = {"standalone": "redis_server", "sentinel": "redis_sentinel",
                  "cluster": "redis_cluster"}

__all__ = ["STORE_FIXTURES", "STORE_KINDS", "ClusterSetup", "SentinelSetup", "StoreServer",
           "info_cluster", "running", "wait_for"]
