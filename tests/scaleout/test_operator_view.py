"""The operator's view in a real headless Chromium, against three replicas on one real
Redis: any replica's page shows all three with charts of their traffic, sessions per
identity (counts only) and the catalog; a SIGKILLed replica is marked gone once its
heartbeat lapses. Screenshots go to artifacts/."""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.integration.test_status_page import ARTIFACTS, run_chromium
from tests.support.mcp_http import RawSession
from tests.support.processes import ManagedProcess, gateway_config, running_gateways
from tests.support.redis_server import RedisServer, free_port

HEARTBEAT, EXPIRY = 0.3, 1.5
TOKENS = {"alpha-token-0123456789": "alice@example.com", "beta-token-0123456789": "bob"}
AUTH = {"incoming": {"type": "static", "tokens": [
    {"token_sha256": hashlib.sha256(token.encode()).hexdigest(), "issuer": "staff",
     "subject": subject} for token, subject in TOKENS.items()]}}
CHARTS = {"requests", "latency", "errors", "backend-calls", "backend-errors"}


def admin_url(replica: ManagedProcess, admin_ports: dict[str, int]) -> str:
    return f"http://127.0.0.1:{admin_ports[replica.name]}"


def replica_states(url: str) -> dict[str, str]:
    replicas = httpx2.get(f"{url}/status", timeout=5).json()["replicas"]
    return {r["replica_id"]: r["state"] for r in replicas}


def wait_for_states(url: str, wanted: dict[str, str], within: float) -> None:
    """Poll ``/status`` until the replicas' states are ``wanted``."""
    began = time.monotonic()
    while (states := replica_states(url)) != wanted:
        assert time.monotonic() - began < within, states
        time.sleep(0.05)


def shown(dom: str) -> dict[str, str]:
    return dict(re.findall(r'<tr data-replica="([^"]+)" data-state="([^"]+)"', dom))


@pytest.fixture
def three_replicas(scaleout_backends: dict[str, ManagedProcess], redis_server: RedisServer,
                   tmp_path: Path) -> Iterator[tuple[dict[str, ManagedProcess], dict[str, int]]]:
    prefix = f"vmcp:{uuid.uuid4().hex[:8]}:"
    admin_ports = {f"replica{i}": free_port() for i in (1, 2, 3)}
    configs: dict[str, dict[str, Any]] = {
        name: gateway_config(
            scaleout_backends, auth=AUTH,
            server={"replica_id": name, "admin": {"port": port}},
            session={"store": redis_server.url, "key_prefix": prefix,
                     "store_timeout_seconds": 1.0},
            status={"heartbeat_seconds": HEARTBEAT, "expiry_seconds": EXPIRY},
            health={"interval_seconds": 0.5},
            aggregation={"tools": {"weather": {"exclude": ["slow_count"]}}})
        for name, port in admin_ports.items()}
    with running_gateways(configs, tmp_path) as replicas:
        yield replicas, admin_ports


@pytest.mark.slow
def test_any_replica_shows_every_replica_and_a_killed_one_goes(
        three_replicas: tuple[dict[str, ManagedProcess], dict[str, int]], tmp_path: Path) -> None:
    replicas, admin_ports = three_replicas
    first = admin_url(replicas["replica1"], admin_ports)
    everyone_up = {name: "up" for name in replicas}
    wait_for_states(first, everyone_up, within=10)

    # Traffic on every replica: 3 sessions of one identity, 2 of another, calls on each.
    for count, token in zip((3, 2), TOKENS, strict=True):
        with httpx2.Client(headers={"authorization": f"Bearer {token}"}, timeout=10) as http:
            for n in range(count):
                replica = replicas[f"replica{n % 3 + 1}"]
                session = RawSession.open(http, replica.url)
                session.result("tools/call", {"name": "weather_forecast",
                                              "arguments": {"city": "Paris", "days": 1}})
                session.result("tools/list")
    # Every replica has beaten since the traffic, so its samples carry it.
    began = time.monotonic()
    while not all(r.get("samples") and any(s["requests"] for s in r["samples"])
                  for r in httpx2.get(f"{first}/status").json()["replicas"]):
        assert time.monotonic() - began < 10
        time.sleep(0.05)

    ARTIFACTS.mkdir(exist_ok=True)
    dom = run_chromium(["--virtual-time-budget=2000", "--dump-dom", f"{first}/ui"],
                       tmp_path / "profile").stdout
    assert shown(dom) == everyone_up, dom
    charts = set(re.findall(r'<svg class="chart" data-chart="([^"]+)"', dom))
    assert CHARTS | {f"replica-{name}" for name in replicas} <= charts, charts
    assert "<polyline" in dom
    identities = dict(re.findall(r'<tr data-identity="([^"]+)"><td>[^<]*</td><td>(\d+)</td>',
                                 dom))
    assert sorted(identities.values()) == ["2", "3"], identities
    assert all(label.startswith("staff #") for label in identities), identities
    for secret in [*TOKENS, *TOKENS.values()]:
        assert secret not in dom
    catalog = re.findall(r'data-outcome="([^"]+)"><td>tool</td><td>([^<]+)</td>'
                         r'<td>([^<]*)</td>', dom)
    assert ("renamed", "forecast", "weather_forecast") in catalog
    assert ("filtered", "slow_count", "") in catalog
    screenshot(first, ARTIFACTS / "operator-view-three-replicas.png", tmp_path)

    replicas["replica3"].process.kill()  # no withdrawal: only the lapsed heartbeat tells
    replicas["replica3"].process.wait(timeout=10)
    second = admin_url(replicas["replica2"], admin_ports)
    # Its record expires EXPIRY after its last beat (Redis' clock); the bound leaves room
    # for a loaded machine.
    wait_for_states(second, {**everyone_up, "replica3": "gone"}, within=EXPIRY + 10)
    dom = run_chromium(["--virtual-time-budget=2000", "--dump-dom", f"{second}/ui"],
                       tmp_path / "profile-gone").stdout
    assert shown(dom) == {**everyone_up, "replica3": "gone"}, dom
    assert "2 up, 1 gone" in dom
    assert replica_states(first) == {**everyone_up, "replica3": "gone"}
    screenshot(second, ARTIFACTS / "operator-view-replica-gone.png", tmp_path)


def screenshot(url: str, path: Path, tmp_path: Path) -> None:
    path.unlink(missing_ok=True)
    run_chromium(["--window-size=1400,1800", f"--screenshot={path}", f"{url}/ui"],
                 tmp_path / f"profile-{path.stem}")
    assert path.stat().st_size > 10_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
