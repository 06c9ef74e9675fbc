"""A gateway that records no spans (no ``telemetry.otlp_endpoint``) still passes the
client's trace context on to the backends, and starts no span for requests without one."""

from __future__ import annotations

from pathlib import Path

import httpx2

from tests.support.mcp_http import RawSession
from tests.support.processes import running_gateway
from tests.support.recording_backend import RecordingBackend

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def test_the_clients_trace_context_reaches_the_backend_without_tracing(tmp_path: Path) -> None:
    with RecordingBackend() as backend:
        config = {"backends": [{"name": "rec", "url": backend.url}],
                  "health": {"enabled": False}}
        with running_gateway(config, tmp_path) as gateway, httpx2.Client(timeout=10) as http:
            session = RawSession.open(http, gateway.url)
            for traceparent in (None, TRACEPARENT):
                extra = {"traceparent": traceparent} if traceparent else None
                _request_id, response = session.rpc(
                    "tools/call", {"name": "rec_echo", "arguments": {"text": "hi"}},
                    headers=extra)
                assert response.status_code == 200, response.text
        untraced, traced = backend.calls("tools/call")
        assert untraced.header("traceparent") is None
        sent = traced.header("traceparent")
        assert sent is not None
        assert sent.split("-")[1] == TRACE_ID
