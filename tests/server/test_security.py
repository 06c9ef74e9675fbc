"""A refused Host is answered 421 and logged, naming the Host and the key that admits it,
at most once a minute per name however many requests carry it."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from vmcp.config import ServerConfig
from vmcp.server.security import REFUSAL_LOG_NAMES, RequestGuard


def test_a_refused_host_is_logged_once_per_name(caplog: pytest.LogCaptureFixture) -> None:
    guard = RequestGuard(ServerConfig(host="127.0.0.1", allowed_hosts=("mcp.example.com",)))
    with caplog.at_level("WARNING", logger="vmcp.server.security"):
        for _ in range(1000):
            assert guard.check(Headers({"host": "lb.internal:8080"})) == (
                421, "Invalid Host header")
        assert guard.check(Headers({"host": "mcp.example.com"})) is None
        assert guard.check(Headers({"host": "other.internal"})) is not None
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "'lb.internal:8080'" in messages[0]
    assert "server.allowed_hosts" in messages[0]
    assert "'other.internal'" in messages[1]


def test_a_flood_of_distinct_names_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    guard = RequestGuard(ServerConfig(host="127.0.0.1"))
    with caplog.at_level("WARNING", logger="vmcp.server.security"):
        for index in range(REFUSAL_LOG_NAMES * 4):
            guard.check(Headers({"host": f"h{index}.example"}))
    assert len(caplog.records) == REFUSAL_LOG_NAMES
