"""Replicas of vmcp on one real Redis behind a real nginx (round robin, no stickiness)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support.nginx import running_nginx
from tests.support.processes import (
    CONFORMANCE_MODULE,
    NOTES_MODULE,
    WEATHER_MODULE,
    ManagedProcess,
    gateway_config,
    running_backends,
    running_gateways,
)
from tests.support.redis_ha import STORE_FIXTURES, STORE_KINDS, StoreServer
from tests.support.redis_server import RedisServer


@dataclass
class Cluster:
    """N ``vmcp serve`` replicas sharing one Redis, and nginx in front of them."""

    url: str
    replicas: list[ManagedProcess]
    redis: StoreServer
    key_prefix: str

    def status(self, replica: ManagedProcess) -> dict[str, Any]:
        response = httpx2.get(f"{replica.base_url}/status", timeout=5)
        response.raise_for_status()
        body = response.json()
        assert isinstance(body, dict)
        return body

    def open_upstream(self, replica: ManagedProcess) -> int:
        upstream = self.status(replica)["upstream_sessions"]
        return sum(int(counts["open"]) for counts in upstream.values())


@contextlib.contextmanager
def running_cluster(backends: dict[str, ManagedProcess], redis: StoreServer, workdir: Path,
                    *, replicas: int = 3, **sections: Any) -> Iterator[Cluster]:
    prefix = f"vmcp:{uuid.uuid4().hex[:8]}:"
    session = {"store": redis.url, "key_prefix": prefix, "store_timeout_seconds": 1.0,
               **sections.pop("session", {})}
    config = gateway_config(backends, session=session, **sections)
    configs = {f"replica{i + 1}": config for i in range(replicas)}
    with running_gateways(configs, workdir) as gateways:
        ordered = [gateways[name] for name in sorted(gateways)]
        with running_nginx([g.port for g in ordered], workdir / "nginx") as url:
            yield Cluster(url, ordered, redis, prefix)


@pytest.fixture(scope="session")
def scaleout_backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        dict[str, ManagedProcess]]:
    modules = {"notes": NOTES_MODULE, "weather": WEATHER_MODULE}
    with running_backends(modules, tmp_path_factory.mktemp("scaleout-backends")) as backends:
        yield backends


@pytest.fixture(scope="session")
def cluster(scaleout_backends: dict[str, ManagedProcess], redis_server: RedisServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three replicas in front of the demo backends, shared by the non-destructive tests."""
    with running_cluster(scaleout_backends, redis_server,
                         tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.fixture(scope="session", params=STORE_KINDS)
def any_cluster(request: pytest.FixtureRequest,
                          scaleout_backends: dict[str, ManagedProcess],
                          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """``cluster``, then the same three replicas on Sentinel and on Cluster."""
    if request.param == "standalone":
        yield request.getfixturevalue("cluster")
        return
    store: StoreServer = request.getfixturevalue(STORE_FIXTURES[request.param])
    with running_cluster(scaleout_backends, store,
                         tmp_path_factory.mktemp(f"cluster-{request.param}")) as running:
        yield running


@pytest.fixture(scope="session")
def conformance_cluster(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
                        ) -> Iterator[Cluster]:
    """Three replicas in front of the conformance fixture, names passed through."""
    workdir = tmp_path_factory.mktemp("conformance-cluster")
    with running_backends({"everything": CONFORMANCE_MODULE}, workdir) as backends, \
            running_cluster(backends, redis_server, workdir,
                            aggregation={"prefix_format": ""}) as running:
        yield running
