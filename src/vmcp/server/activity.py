"""The last few minutes of one replica's traffic, as a ring buffer of per-interval samples.

Nothing is added to the request path: each sample is the difference between two
readings of the Prometheus metrics the transport already keeps (requests by method,
status and outcome; the request-duration histogram; backend calls by outcome). p50 and
p99 are estimated from the histogram's bucket counts, the way Prometheus'
``histogram_quantile`` does, so they are as precise as the buckets. Listening streams
(``GET``) are left out of the latency: they last as long as the client keeps them open.

Samples are plain JSON, published with the replica's heartbeat, so any replica can chart
every other one or their sum.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram

from vmcp.telemetry import Metrics

STREAM_METHOD = "stream"
"""The transport's method label for a GET stream (see ``transport._VERB_LABELS``)."""


@dataclass(frozen=True)
class _Reading:
    """Cumulative totals at one moment."""

    requests: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    buckets: Counter[float] = field(default_factory=Counter)
    backend_calls: Counter[tuple[str, str]] = field(default_factory=Counter)


def error_kind(status: str, outcome: str) -> str | None:
    """How a request failed, for the errors chart: its HTTP status when that is an error,
    ``json-rpc`` for an error answered in a 200, ``cancelled``; None if it did not."""
    if outcome == "cancelled":
        return "cancelled"
    if status.isdigit() and int(status) >= 400:
        return f"http {status}"
    if outcome == "error":
        return "json-rpc" if status.isdigit() and int(status) else "no answer"
    return None


def quantile(q: float, buckets: Mapping[float, int]) -> float | None:
    """The ``q`` quantile of observations counted in cumulative ``buckets`` (upper bound
    → count at or below it, ``inf`` included), interpolating linearly inside a bucket;
    None without observations. Beyond the last finite bound, that bound is returned."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank and count > below:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = (bound if not math.isinf(bound) else lower), count
    return lower


def _read(metrics: Metrics) -> _Reading:
    reading = _Reading()
    for sample in _samples(metrics.requests, "_total"):
        labels = sample.labels
        reading.requests[(labels["method"], labels["status"], labels["outcome"])] += int(
            sample.value)
    for sample in _samples(metrics.request_seconds, "_bucket"):
        if sample.labels["method"] != STREAM_METHOD:
            reading.buckets[float(sample.labels["le"])] += int(sample.value)
    for sample in _samples(metrics.backend_calls, "_total"):
        reading.backend_calls[(sample.labels["backend"], sample.labels["outcome"])] += int(
            sample.value)
    return reading


def _samples(metric: PromCounter | Histogram, suffix: str) -> Iterable[Any]:
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(suffix):
                yield sample


class ActivitySampler:
    """Takes one sample per call of :meth:`sample` (the heartbeat's), keeps the last
    ``capacity``."""

    def __init__(self, metrics: Metrics, *, capacity: int,
                 wall_clock: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._metrics = metrics
        self._wall = wall_clock
        self._clock = clock
        self._ring: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._last = _read(metrics)
        self._last_at = clock()

    def sample(self) -> dict[str, Any]:
        """Close the interval since the previous sample and keep it: ``t`` (wall-clock
        end), ``seconds``, ``requests``, ``errors`` by kind, ``p50``/``p99`` (seconds or
        None), and ``backends``: name → ``[calls, errors]``."""
        now, reading = self._clock(), _read(self._metrics)
        previous, started = self._last, self._last_at
        self._last, self._last_at = reading, now
        requests = reading.requests - previous.requests
        errors: Counter[str] = Counter()
        for (_, status, outcome), count in requests.items():
            kind = error_kind(status, outcome)
            if kind is not None:
                errors[kind] += count
        buckets = {bound: reading.buckets[bound] - previous.buckets.get(bound, 0)
                   for bound in reading.buckets}
        backends: dict[str, list[int]] = {}
        for (backend, outcome), count in (reading.backend_calls
                                          - previous.backend_calls).items():
            figures = backends.setdefault(backend, [0, 0])
            figures[0] += count
            if outcome != "ok":
                figures[1] += count
        p50, p99 = quantile(0.5, buckets), quantile(0.99, buckets)
        sample = {
            "t": round(self._wall(), 3),
            "seconds": round(max(now - started, 0.001), 3),
            "requests": sum(requests.values()),
            "errors": dict(sorted(errors.items())),
            "p50": None if p50 is None else round(p50, 6),
            "p99": None if p99 is None else round(p99, 6),
            "backends": dict(sorted(backends.items())),
        }
        self._ring.append(sample)
        return sample

    def samples(self) -> list[dict[str, Any]]:
        """The kept samples, oldest first."""
        return list(self._ring)
