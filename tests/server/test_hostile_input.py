"""Inputs the HTTP fuzz tests found answered with 500: each is a refusal now."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from vmcp.config import ServerConfig
from vmcp.errors import PARSE_ERROR_CODE, MessageError
from vmcp.server.jsonrpc import parse_message
from vmcp.server.security import RequestGuard
from vmcp.session.streams import parse_event_id


@pytest.mark.parametrize("body", [
    b"[" * 10_000 + b"]" * 10_000,
    b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":'
    + b"[" * 5_000 + b"]" * 5_000 + b"}}",
])
def test_json_nested_too_deeply_is_a_parse_error(body: bytes) -> None:
    with pytest.raises(MessageError) as refused:
        parse_message(body)
    assert (refused.value.code, refused.value.status) == (PARSE_ERROR_CODE, 400)
    assert refused.value.message == "Parse error: JSON nested too deeply"


@pytest.mark.parametrize("origin", ["http://[::1", "http://[", "https://[zz]:1"])
def test_an_origin_that_is_no_url_is_refused(origin: str) -> None:
    guard = RequestGuard(ServerConfig())
    assert guard.check(Headers({"host": "127.0.0.1:4483", "origin": origin})) == (
        403, "Invalid Origin header")


@pytest.mark.parametrize("value", ["a.\u00b2", "a.\u0663", "s." + "9" * 5000, "s.", ".1", "x"])
def test_last_event_ids_that_are_not_ours_are_ignored(value: str) -> None:
    assert parse_event_id(value) is None


def test_our_own_event_ids_still_parse() -> None:
    assert parse_event_id("r1-abc.42") == ("r1-abc", 42)
