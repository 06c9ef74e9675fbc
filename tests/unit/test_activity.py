"""Per-interval samples from the process's own metrics: rates, errors by kind, quantiles."""

from __future__ import annotations

import json

import pytest

from vmcp.server.activity import ActivitySampler, error_kind, quantile
from vmcp.telemetry import Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_sample_holds_only_what_happened_since_the_previous_one() -> None:
    metrics, clock = Metrics(), Clock()
    sampler = ActivitySampler(metrics, capacity=10, wall_clock=clock, clock=clock)
    for _ in range(8):
        metrics.observe_request("tools/call", 200, "ok", 0.004)
    metrics.observe_request("tools/call", 200, "error", 0.004)
    metrics.observe_request("initialize", 503, "error", 0.001)
    metrics.observe_request("stream", 200, "ok", 30.0)  # a listening stream: no latency
    metrics.observe_backend_call("notes", "ok", 0.002)
    metrics.observe_backend_call("notes", "error", 0.002)
    metrics.observe_backend_call("weather", "rpc_error", 0.002)
    clock.now += 5
    first = sampler.sample()
    assert first["seconds"] == 5
    assert first["requests"] == 11
    assert first["errors"] == {"http 503": 1, "json-rpc": 1}
    assert 0.0025 <= first["p50"] <= 0.005
    assert first["p99"] <= 0.005
    assert first["backends"] == {"notes": [2, 1], "weather": [1, 1]}
    clock.now += 5
    second = sampler.sample()
    assert (second["requests"], second["errors"], second["backends"]) == (0, {}, {})
    assert second["p50"] is None
    assert sampler.samples() == [first, second]
    json.dumps(sampler.samples(), allow_nan=False)  # published as it is


def test_only_the_last_samples_are_kept() -> None:
    metrics, clock = Metrics(), Clock()
    sampler = ActivitySampler(metrics, capacity=3, wall_clock=clock, clock=clock)
    for n in range(5):
        metrics.observe_request("ping", 200, "ok", 0.001)
        clock.now += 1
        sampler.sample()
        assert len(sampler.samples()) == min(n + 1, 3)
    assert [s["t"] for s in sampler.samples()] == [103.0, 104.0, 105.0]
    with pytest.raises(ValueError, match="capacity"):
        ActivitySampler(metrics, capacity=0)


@pytest.mark.parametrize(("status", "outcome", "kind"), [
    ("200", "ok", None), ("202", "ok", None), ("200", "error", "json-rpc"),
    ("404", "error", "http 404"), ("503", "error", "http 503"), ("200", "cancelled", "cancelled"),
    ("0", "error", "no answer")])
def test_errors_are_told_apart_by_kind(status: str, outcome: str, kind: str | None) -> None:
    assert error_kind(status, outcome) == kind


def test_quantiles_interpolate_inside_the_bucket() -> None:
    buckets = {0.001: 0, 0.002: 50, 0.004: 100, float("inf"): 100}
    assert quantile(0.5, buckets) == pytest.approx(0.002)
    assert quantile(0.25, buckets) == pytest.approx(0.0015)
    assert quantile(0.99, buckets) == pytest.approx(0.00396)
    assert quantile(0.5, {0.001: 0, float("inf"): 4}) == 0.001  # beyond the last bound
    assert quantile(0.5, {0.001: 0, float("inf"): 0}) is None
    assert quantile(0.5, {}) is None
