"""The deployment view: identities labelled without subjects, every replica rendered, the
heartbeat riding out a store that cannot answer."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest

from vmcp.config import AggregationConfig, StatusConfig
from vmcp.server.activity import ActivitySampler
from vmcp.server.overview import OperatorView, identity_label
from vmcp.server.overview_page import render_sections
from vmcp.store import MemoryStore, RedisStore
from vmcp.store.census import MemoryCensus
from vmcp.store.replicas import MemoryReplicaRegistry, RedisReplicaRegistry, ReplicaRegistry
from vmcp.telemetry import Metrics


def test_identities_are_shown_by_issuer_and_hash_never_by_subject() -> None:
    label = identity_label("https://idp.example.com\x00alice@example.com")
    assert label.startswith("https://idp.example.com #")
    assert "alice" not in label
    assert label == identity_label("https://idp.example.com\x00alice@example.com")
    assert label != identity_label("https://idp.example.com\x00bob@example.com")
    assert identity_label("unauthenticated") == "anonymous"


def sample(t: float, requests: int) -> dict[str, Any]:
    return {"t": t, "seconds": 5.0, "requests": requests, "errors": {"http 503": 1},
            "p50": 0.002, "p99": 0.01, "backends": {"notes": [requests, 0]}}


def replica(name: str, state: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
    entry: dict[str, Any] = {"replica_id": name, "state": state, "this": name == "r1",
                             "last_beat": 100.0, "seconds_since_beat": 1.0}
    if state == "up":
        entry.update(version="1", started=0.0, live_sessions=2, backends={"notes": "healthy"},
                     requests_per_second=1.0, errors_per_second=0.2, samples=samples)
    return entry


STATUS = {
    "heartbeat_seconds": 5.0, "expiry_seconds": 15.0, "replicas_error": None,
    "replicas": [replica("r1", "up", [sample(100, 10), sample(105, 20)]),
                 replica("r2", "up", [sample(101, 5), sample(106, 5)]),
                 replica("r3", "gone", [])],
    "identities": {"sessions": [{"identity": "ci #abc", "sessions": 4}], "scanned": 4,
                   "complete": True},
    "catalog": {"backends": {}, "warnings": []},
}


def test_every_replica_has_a_row_and_up_ones_a_chart() -> None:
    page = render_sections(STATUS)
    assert dict(re.findall(r'data-replica="([^"]+)" data-state="([^"]+)"', page)) == {
        "r1": "up", "r2": "up", "r3": "gone"}
    charts = re.findall(r'data-chart="([^"]+)"', page)
    assert sorted(charts) == sorted(["replica-r1", "replica-r2", "requests", "latency",
                                     "errors", "backend-calls", "backend-errors"])
    assert "2 up, 1 gone" in page
    requests = page[page.index('data-chart="requests"'):]
    requests = requests[:requests.index("</svg>")]
    assert sorted(re.findall(r'data-series="([^"]+)"', requests)) == ["all", "r1", "r2"]
    assert '<tr data-identity="ci #abc"><td>ci #abc</td><td>4</td></tr>' in page


def test_a_store_that_cannot_list_replicas_is_said_so() -> None:
    page = render_sections({**STATUS, "replicas": None, "replicas_error": "redis: refused"})
    assert "cannot list the replicas: redis: refused" in page
    assert render_sections({}) == ""


def view_on(registry: ReplicaRegistry) -> OperatorView:
    """Replica r1's view on ``registry``, with a memory census and fixed local figures."""
    return OperatorView(StatusConfig(), replica_id="r1", store_kind="test",
                        registry=registry, sampler=ActivitySampler(Metrics(), capacity=5),
                        census=MemoryCensus(MemoryStore(ttl_seconds=60), field_name="identity"),
                        local=lambda: {"live_sessions": 3, "backends": {"notes": "healthy"}},
                        catalogs=lambda: (AggregationConfig(), {}))


@pytest.mark.anyio
async def test_the_heartbeat_logs_a_store_outage_once_and_keeps_going(
        caplog: pytest.LogCaptureFixture) -> None:
    store = RedisStore.from_url("redis://127.0.0.1:1/0", key_prefix="x:", ttl_seconds=60,
                                timeout_seconds=0.5)
    registry = RedisReplicaRegistry(store.client, key_prefix="x:", expiry_seconds=15,
                                    forget_seconds=60, timeout_seconds=0.5)
    view = view_on(registry)
    try:
        with caplog.at_level(logging.INFO, logger="vmcp.server.overview"):
            for _ in range(3):
                await view.beat()
            await view.withdraw()
        warnings = [r.getMessage() for r in caplog.records
                    if "could not announce" in r.getMessage()]
        assert len(warnings) == 1
        document = await view.document()
        assert document["replicas"] is None
        assert "redis" in document["replicas_error"]
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_a_beat_publishes_this_replica_until_it_withdraws() -> None:
    registry = MemoryReplicaRegistry(expiry_seconds=15, forget_seconds=60)
    view = view_on(registry)
    await view.beat()
    await view.beat()
    (entry,) = await registry.replicas()
    assert entry.record is not None
    assert entry.record["live_sessions"] == 3
    assert len(entry.record["samples"]) == 2
    document = await view.document()
    assert [(r["replica_id"], r["state"], r["this"]) for r in document["replicas"]] == [
        ("r1", "up", True)]
    await view.withdraw()
    assert (await view.document())["replicas"][0]["state"] == "gone"
    await view.beat()  # once withdrawn, no beat announces the replica again
    assert [(e.replica_id, e.up) for e in await registry.replicas()] == [("r1", False)]


@pytest.mark.anyio
async def test_a_record_of_another_shape_is_shown_without_breaking_the_page() -> None:
    registry = MemoryReplicaRegistry(expiry_seconds=15, forget_seconds=60)
    await registry.announce("other", {
        "version": "9", "started": "yesterday", "live_sessions": "<b>many</b>",
        "backends": ["notes"], "state": "up-ish",
        "samples": [{"t": 1.0, "seconds": 0, "requests": 1, "errors": {}, "backends": {}},
                    {"t": "x"}, 7, {"t": 2.0, "seconds": 5, "requests": 5, "errors": {},
                                    "p50": None, "p99": 0.1, "backends": {"n": [1, 0]}}]})
    view = view_on(registry)
    await view.beat()
    document = await view.document()
    other = next(r for r in document["replicas"] if r["replica_id"] == "other")
    assert other["state"] == "up"
    assert other["version"] == "9"
    assert "started" not in other
    assert "live_sessions" not in other
    assert [s["t"] for s in other["samples"]] == [2.0]
    page = render_sections(document)
    assert '<tr data-replica="other" data-state="up"' in page
    assert "<b>many</b>" not in page
