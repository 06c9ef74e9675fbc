"""Log lines: JSON with context fields, and never a bearer token."""

from __future__ import annotations

import json
import logging

from vmcp.logs import ConsoleFormatter, JsonFormatter, request_id


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
    assert entry["session_id"] == "s1"
    assert entry["backend"] == "notes"
    assert entry["request_id"] == "abc123"
    assert entry["ts"].endswith("Z")


def test_bearer_tokens_are_masked_in_both_formats() -> None:
    message = "upstream said: Authorization: Bearer eyJhbGciOi.secret-part.sig"
    for formatter in (JsonFormatter(), ConsoleFormatter()):
        line = formatter.format(record(message))
        assert "secret-part" not in line
        assert "Bearer ***" in line
