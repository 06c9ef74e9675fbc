"""The plain types of the backend contract and the JSON-RPC helpers beside them."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmcp.backend import BackendRpcError, BackendState, BackendTarget
from vmcp.backend.wire import (
    answer,
    decode,
    is_response_to,
    result_of,
    rpc_error_for,
    transport_error,
)
from vmcp.errors import BackendProtocolError, BackendTimeout, BackendUnavailable

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(), children, max_size=3)
    ),
    max_leaves=10,
)


@given(
    session_id=st.none() | st.text(min_size=1),
    protocol_version=st.text(min_size=1),
    initialize_result=st.dictionaries(st.text(), json_values, max_size=4),
)
def test_state_survives_its_json_form(
    session_id: str | None, protocol_version: str, initialize_result: dict[str, Any]
) -> None:
    state = BackendState(session_id, protocol_version, initialize_result)
    assert BackendState.from_json(state.to_json()) == state
    assert BackendState.from_json(state.to_json().encode()) == state


def test_state_json_is_compact() -> None:
    text = BackendState("abc", "2025-11-25", {"serverInfo": {"name": "x"}}).to_json()
    assert " " not in text
    assert json.loads(text)["session_id"] == "abc"


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "not json",
        b"\xff\xfe",
        "[]",
        "null",
        "{}",
        '{"session_id": 1, "protocol_version": "v", "initialize_result": {}}',
        '{"session_id": "", "protocol_version": "v", "initialize_result": {}}',
        '{"session_id": null, "protocol_version": "", "initialize_result": {}}',
        '{"session_id": null, "protocol_version": "v", "initialize_result": []}',
        '{"session_id": null, "protocol_version": "v"}',
    ],
)
def test_state_from_garbage_is_a_protocol_error(garbage: str | bytes) -> None:
    with pytest.raises(BackendProtocolError) as caught:
        BackendState.from_json(garbage, backend="b1")
    assert caught.value.backend == "b1"


def test_target_headers_are_a_frozen_copy() -> None:
    headers = {"authorization": "Bearer x"}
    target = BackendTarget("b", "http://b/mcp", headers=headers)
    headers["authorization"] = "changed"
    assert target.headers["authorization"] == "Bearer x"
    with pytest.raises(TypeError):
        target.headers["authorization"] = "y"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        target.url = "http://elsewhere/"  # type: ignore[misc]
    assert target == BackendTarget("b", "http://b/mcp", headers={"authorization": "Bearer x"})
    assert hash(target) == hash(BackendTarget("b", "http://b/mcp"))


def test_rpc_error_keeps_the_backends_error() -> None:
    error = BackendRpcError("b", -32602, "bad params", {"field": "x"})
    assert (error.code, error.message, error.data) == (-32602, "bad params", {"field": "x"})
    assert error.error_object() == {"code": -32602, "message": "bad params", "data": {"field": "x"}}
    assert BackendRpcError("b", 1, "m").error_object() == {"code": 1, "message": "m"}
    assert "backend 'b'" in str(error)


def test_decode_accepts_messages_and_batches_only() -> None:
    assert decode("b", '{"jsonrpc": "2.0", "id": 1, "result": {}}') == [
        {"jsonrpc": "2.0", "id": 1, "result": {}}
    ]
    assert len(decode("b", b'[{"id": 1}, {"id": 2}]')) == 2
    for bad in ("1", "[]", "[1]", "{", '"x"'):
        with pytest.raises(BackendProtocolError):
            decode("b", bad)


def test_is_response_to_matches_ids_strictly_but_tolerates_strings() -> None:
    assert is_response_to({"id": 7, "result": {}}, 7)
    assert is_response_to({"id": "7", "result": {}}, 7)
    assert not is_response_to({"id": 8, "result": {}}, 7)
    assert not is_response_to({"id": 7, "method": "ping"}, 7)  # a request that reuses the id
    assert not is_response_to({"id": True, "result": {}}, 1)


def test_result_of_raises_the_backends_error() -> None:
    assert result_of("b", {"id": 1, "result": {"x": 1}}) == {"x": 1}
    with pytest.raises(BackendRpcError) as caught:
        result_of("b", {"id": 1, "error": {"code": -32000, "message": "boom", "data": 5}})
    assert (caught.value.code, caught.value.data) == (-32000, 5)
    for bad in (
        {"id": 1},
        {"id": 1, "result": []},
        {"id": 1, "error": "x"},
        {"id": 1, "error": {}},
    ):
        with pytest.raises(BackendProtocolError):
            result_of("b", bad)


def test_rpc_error_for_only_takes_errors_that_answer_the_request() -> None:
    answer = b'{"jsonrpc": "2.0", "id": 3, "error": {"code": -32601, "message": "nope"}}'
    refusal = (
        b'{"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": "Session not found"}}'
    )
    error = rpc_error_for("b", answer, 3)
    assert error is not None
    assert error.code == -32601
    assert rpc_error_for("b", refusal, 3) is None
    assert rpc_error_for("b", b"", 3) is None
    assert rpc_error_for("b", b"<html>", 3) is None


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx2.ConnectError("refused"), BackendUnavailable),
        (httpx2.ConnectTimeout("slow connect"), BackendUnavailable),
        (httpx2.ReadTimeout("slow read"), BackendTimeout),
        (httpx2.RemoteProtocolError("peer closed"), BackendUnavailable),
        (httpx2.SSEError("event too large"), BackendProtocolError),
        (httpx2.DecodingError("bad gzip"), BackendProtocolError),
    ],
)
def test_transport_errors_map_to_their_cause(
    exc: httpx2.HTTPError, expected: type[Exception]
) -> None:
    mapped = transport_error("b", exc)
    assert type(mapped) is expected
    assert mapped.backend == "b"


@pytest.mark.anyio
async def test_ping_is_answered_without_the_handler() -> None:
    async def handler(message: dict[str, Any]) -> dict[str, Any] | None:
        raise AssertionError("ping must not reach the handler")

    reply = await answer("memory", {"jsonrpc": "2.0", "id": 4, "method": "ping"}, handler)
    assert reply == {"jsonrpc": "2.0", "id": 4, "result": {}}


@pytest.mark.anyio
async def test_server_requests_get_an_answer_whatever_the_handler_does() -> None:
    request = {"jsonrpc": "2.0", "id": "srv-1", "method": "roots/list"}

    async def raises(message: dict[str, Any]) -> dict[str, Any] | None:
        raise RuntimeError("client went away")

    async def declines(message: dict[str, Any]) -> dict[str, Any] | None:
        return None

    async def malformed(message: dict[str, Any]) -> dict[str, Any] | None:
        return {"id": 99}

    async def answers(message: dict[str, Any]) -> dict[str, Any] | None:
        return {"id": 99, "result": {"roots": []}}

    assert (await answer("memory", request, None))["error"]["code"] == -32601
    assert (await answer("memory", request, declines))["error"]["code"] == -32601
    assert (await answer("memory", request, raises))["error"]["code"] == -32603
    assert (await answer("memory", request, malformed))["error"]["code"] == -32603
    assert await answer("memory", request, answers) == {
        "jsonrpc": "2.0",
        "id": "srv-1",
        "result": {"roots": []},
    }
