"""OpenTelemetry tracing: spans for requests, store calls, restores and backend calls.

Off by default. With ``telemetry.otlp_endpoint`` set, spans go to an OTLP/HTTP collector.
Off, no span is started at all (:func:`span`, :func:`server_span`): even the API's no-op
spans cost a context switch in and out per span, several per relayed call.
Trace context arriving from the client is continued, and passed on to backends in
``traceparent`` headers. Session ids are bearer capabilities, so spans carry only a
short hash of them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from vmcp import __version__

tracer = trace.get_tracer("vmcp", __version__)


@functools.lru_cache(maxsize=4096)
def session_tag(session_id: str) -> str:
    """A stable, non-reversible tag for a session id (ids are credentials)."""
    return hashlib.sha256(session_id.encode()).hexdigest()[:16]


_NO_SPAN = contextlib.nullcontext()
_TRACE_HEADERS = ("traceparent", "baggage")


def recording() -> bool:
    """Whether spans go anywhere: a tracer provider was installed (by :func:`configure`,
    or by an embedding application or a test).

    Asked several times per request, so the API's global is read directly: its
    ``get_tracer_provider`` looks ``OTEL_PYTHON_TRACER_PROVIDER`` up in ``os.environ``
    each time no provider is set, about 3% of a relayed call's CPU (bench profile). A
    provider that variable names is installed into the global at import, by the
    ``get_tracer`` call above."""
    provider = trace._TRACER_PROVIDER
    return provider is not None and not isinstance(provider, trace.ProxyTracerProvider)


def span(name: str, **options: Any) -> AbstractContextManager[Any]:
    """A span inside a request (store, restore, backend call); nothing when not recording."""
    if not recording():
        return _NO_SPAN
    return tracer.start_as_current_span(name, **options)


def server_span(name: str, headers: Mapping[str, str],
                attributes: Mapping[str, str]) -> AbstractContextManager[Any]:
    """The span of one client request, continuing the client's trace. Not recording, a
    span is still started when the client sent trace context: its non-recording span is
    what carries that context on to the backends (:func:`outgoing_headers`)."""
    if not recording() and not any(header in headers for header in _TRACE_HEADERS):
        return _NO_SPAN
    return tracer.start_as_current_span(name, context=incoming_context(headers),
                                        kind=SpanKind.SERVER, attributes=attributes)


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
