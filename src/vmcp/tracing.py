"""OpenTelemetry tracing: spans for requests, store calls, restores and backend calls.

Off by default: without a configured exporter the API's no-op tracer costs next to
nothing. With ``telemetry.otlp_endpoint`` set, spans go to an OTLP/HTTP collector.
Trace context arriving from the client is continued, and passed on to backends in
``traceparent`` headers. Session ids are bearer capabilities, so spans carry only a
short hash of them.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context

from vmcp import __version__

tracer = trace.get_tracer("vmcp", __version__)


@functools.lru_cache(maxsize=4096)
def session_tag(session_id: str) -> str:
    """A stable, non-reversible tag for a session id (ids are credentials)."""
    return hashlib.sha256(session_id.encode()).hexdigest()[:16]


def incoming_context(headers: Mapping[str, str]) -> Context:
    """The trace context a client sent (``traceparent``), if any."""
    return propagate.extract(headers)


def outgoing_headers() -> dict[str, str]:
    """Headers that continue the current trace on a backend."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def configure(endpoint: str, *, service_name: str, sample_ratio: float) -> None:
    """Install the SDK with an OTLP/HTTP exporter (only called when an endpoint is set)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name,
                                  "service.version": __version__}),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
