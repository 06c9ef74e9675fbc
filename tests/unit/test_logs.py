"""Log lines: JSON with context fields, and never a bearer token."""

from __future__ import annotations

import json
import logging

from vmcp.logs import ConsoleFormatter, JsonFormatter, request_id
from vmcp.tracing import session_tag


def record(message: str, **extra: object) -> logging.LogRecord:
    entry = logging.LogRecord("vmcp.test", logging.WARNING, __file__, 1, message, (), None)
    for key, value in extra.items():
        setattr(entry, key, value)
    return entry


def test_json_lines_carry_context_fields_and_the_request_id() -> None:
    token = request_id.set("abc123")
    try:
        line = JsonFormatter().format(record("hello %s", session_id="s1", backend="notes"))
    finally:
        request_id.reset(token)
    entry = json.loads(line)
    assert entry["level"] == "warning"
    assert entry["session_id"] == session_tag("s1")          # hashed: ids are credentials
    assert entry["backend"] == "notes"
    assert entry["request_id"] == "abc123"
    assert entry["ts"].endswith("Z")


def test_bearer_tokens_are_masked_in_both_formats() -> None:
    message = "upstream said: Authorization: Bearer eyJhbGciOi.secret-part.sig"
    for formatter in (JsonFormatter(), ConsoleFormatter()):
        line = formatter.format(record(message))
        assert "secret-part" not in line
        assert "Bearer ***" in line


def test_console_lines_keep_the_request_id_and_hash_session_ids() -> None:
    token = request_id.set("abc123")
    try:
        line = ConsoleFormatter().format(record("hello", session_id="raw-session-id"))
    finally:
        request_id.reset(token)
    assert "request_id=abc123" in line
    assert "raw-session-id" not in line
    assert f"session_id={session_tag('raw-session-id')}" in line


def test_debug_silences_the_http_client_libraries_unless_trace() -> None:
    from vmcp import logs

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        logs.configure("debug", "json")
        assert not logging.getLogger("httpcore2").isEnabledFor(logging.DEBUG)
        assert logging.getLogger("vmcp.session").isEnabledFor(logging.DEBUG)
        logs.configure("trace", "json")
        assert logging.getLogger("httpcore2").isEnabledFor(logging.DEBUG)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name in logs.CHATTY_LIBRARIES:
            logging.getLogger(name).setLevel(logging.NOTSET)
