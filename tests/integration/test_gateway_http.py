"""The gateway's Streamable-HTTP endpoint as raw HTTP: exact statuses and JSON-RPC bodies.

Each test opens its own session on the shared gateway, sends one bad request carrying
that session's id wherever the request has a session at all, and then checks that the
session still works: a refused request must never take a good session down with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests.support.mcp_http import (
    BASE_HEADERS,
    EVENT_STREAM,
    INVALID_PARAMS,
    INVALID_REQUEST,
    JSON_TYPE,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    PROTOCOL_VERSION,
    SESSION_NOT_FOUND,
    RawSession,
    error_of,
    initialize_body,
    is_reply_to,
    session_not_found,
    sse_messages,
)
from tests.support.processes import GATEWAY_MAX_BODY_BYTES, ManagedProcess

UNKNOWN_SESSION_ID = "0" * 32


@pytest.fixture
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=15.0) as client:
        yield client


@pytest.fixture
def live(http: httpx2.Client, gateway: ManagedProcess) -> RawSession:
    return RawSession.open(http, gateway.url)


def assert_still_works(session: RawSession) -> None:
    """A ``tools/list`` on the session answers with the tools of both backends."""
    names = session.tool_names()
    assert {"notes_add_note", "weather_forecast"} <= names, names


# -- the handshake --------------------------------------------------------------------


def test_initialize_answers_200_with_a_session_id_header(
        http: httpx2.Client, gateway: ManagedProcess) -> None:
    response = http.post(gateway.url, json=initialize_body(7), headers=BASE_HEADERS)

    assert response.status_code == 200, response.text
    session_id = response.headers.get("mcp-session-id", "")
    assert session_id, response.headers
    assert all("\x21" <= ch <= "\x7e" for ch in session_id), session_id
    body = response.json()
    assert body["id"] == 7
    assert body["result"]["protocolVersion"] == PROTOCOL_VERSION
    assert "tools" in body["result"]["capabilities"]


def test_initialized_notification_answers_202_with_no_body(
        http: httpx2.Client, gateway: ManagedProcess) -> None:
    response = http.post(gateway.url, json=initialize_body(), headers=BASE_HEADERS)
    session = RawSession(http, gateway.url, response.headers["mcp-session-id"])

    notified = session.notify("notifications/initialized")

    assert notified.status_code == 202
    assert notified.content == b""
    assert_still_works(session)


def test_initialize_carrying_a_session_id_answers_400(live: RawSession) -> None:
    response = live.http.post(live.url, json=initialize_body(3), headers=live.headers())

    assert response.status_code == 400
    assert response.json().get("id") == 3
    assert error_of(response)["code"] == INVALID_REQUEST
    assert_still_works(live)


# -- bad messages ---------------------------------------------------------------------


def test_malformed_json_answers_400_parse_error(live: RawSession) -> None:
    response = live.http.post(live.url, content=b'{"jsonrpc": "2.0", "id": 1, "method": ',
                              headers=live.headers())

    assert response.status_code == 400
    assert error_of(response)["code"] == PARSE_ERROR
    assert_still_works(live)


def test_json_array_batch_answers_400_invalid_request(live: RawSession) -> None:
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
             {"jsonrpc": "2.0", "id": 2, "method": "ping"}]
    response = live.http.post(live.url, json=batch, headers=live.headers())

    assert response.status_code == 400
    assert error_of(response)["code"] == INVALID_REQUEST
    assert_still_works(live)


def test_unknown_method_answers_200_method_not_found(live: RawSession) -> None:
    request_id, response = live.rpc("vmcp/no_such_method", {})

    assert response.status_code == 200
    assert response.json()["id"] == request_id
    assert error_of(response)["code"] == METHOD_NOT_FOUND
    assert_still_works(live)


def test_tools_call_without_a_name_answers_200_invalid_params(live: RawSession) -> None:
    request_id, response = live.rpc("tools/call", {"arguments": {}})

    assert response.status_code == 200
    assert response.json()["id"] == request_id
    assert error_of(response)["code"] == INVALID_PARAMS
    assert_still_works(live)


@pytest.mark.parametrize(
    "request_id",
    [
        pytest.param(None, id="null"),
        pytest.param(1.5, id="fraction"),
        pytest.param({"n": 1}, id="object"),
        pytest.param(True, id="boolean"),
    ],
)
def test_request_id_that_is_not_a_string_or_integer_answers_400_invalid_request(
    live: RawSession, request_id: Any
) -> None:
    # MCP: "Requests MUST include a string or integer ID ... the ID MUST NOT be null".
    # Served anyway, the answer could not be matched to its request.
    response = live.http.post(
        live.url,
        json={"jsonrpc": "2.0", "id": request_id, "method": "tools/list"},
        headers=live.headers(),
    )

    assert response.status_code == 400, response.text[:200]
    assert error_of(response)["code"] == INVALID_REQUEST
    assert_still_works(live)


def test_advertised_completions_and_subscriptions_are_not_answered_method_not_found(
    http: httpx2.Client, gateway: ManagedProcess
) -> None:
    # Neither demo backend offers completions or resource subscriptions: the gateway
    # must either not advertise them or serve them, never advertise and then refuse.
    response = http.post(gateway.url, json=initialize_body(), headers=BASE_HEADERS)
    capabilities = response.json()["result"]["capabilities"]
    session = RawSession(http, gateway.url, response.headers["mcp-session-id"])
    assert session.notify("notifications/initialized").status_code == 202
    refused: list[str] = []

    if "completions" in capabilities:
        _, completed = session.rpc(
            "completion/complete",
            {
                "ref": {"type": "ref/prompt", "name": "weather_weather_report"},
                "argument": {"name": "city", "value": "O"},
            },
        )
        if completed.json().get("error", {}).get("code") == METHOD_NOT_FOUND:
            refused.append(f"completion/complete -> {completed.text}")
    if (capabilities.get("resources") or {}).get("subscribe"):
        _, subscribed = session.rpc("resources/subscribe", {"uri": "notes://index"})
        if subscribed.json().get("error", {}).get("code") == METHOD_NOT_FOUND:
            refused.append(f"resources/subscribe -> {subscribed.text}")

    assert not refused, f"advertised {capabilities}, yet: {refused}"


# -- cancellation ---------------------------------------------------------------------


def test_cancelled_call_is_not_answered_with_session_not_found(live: RawSession) -> None:
    # 40 steps of 50 ms: two seconds the call will not get to finish.
    call = live.message(
        "tools/call",
        {
            "name": "weather_slow_count",
            "arguments": {"n": 40},
            "_meta": {"progressToken": "cancel-me"},
        },
    )
    with (
        httpx2.Client(timeout=15.0) as other,
        live.http.stream("POST", live.url, json=call, headers=live.headers()) as stream,
    ):
        assert stream.status_code == 200
        messages = sse_messages(stream.iter_lines())
        first = next(messages, None)
        assert first is not None
        assert first.get("method") == "notifications/progress", first
        cancelled = other.post(
            live.url,
            json={
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": call["id"], "reason": "changed my mind"},
            },
            headers=live.headers(),
        )
        assert cancelled.status_code == 202, cancelled.text
        try:
            rest = list(messages)
        except httpx2.ReadTimeout as exc:
            raise AssertionError(
                "the cancelled call's stream stayed open: a cancelled request's stream must end"
            ) from exc

    replies = [m for m in rest if is_reply_to(m, call["id"])]
    # The call really stopped: no result after two seconds' worth of counting.
    assert not [r for r in replies if "result" in r], replies
    # MCP says a cancelled request SHOULD get no response; above all, the session is alive,
    # and -32001 would tell the client to throw it away and initialize again.
    assert not [r for r in replies if r["error"]["code"] == SESSION_NOT_FOUND], replies
    assert_still_works(live)


def test_a_request_id_in_flight_in_the_session_is_refused(live: RawSession) -> None:
    """A second request with an id still being answered is refused (-32600), so that a
    cancel naming the id is never ambiguous; the first call is unaffected."""
    call = live.message("tools/call", {"name": "weather_slow_count", "arguments": {"n": 10},
                                       "_meta": {"progressToken": "dup"}})
    with (
        httpx2.Client(timeout=15.0) as other,
        live.http.stream("POST", live.url, json=call, headers=live.headers()) as stream,
    ):
        messages = sse_messages(stream.iter_lines())
        first = next(messages, None)
        assert first is not None
        assert first.get("method") == "notifications/progress"  # the call is in flight
        again = other.post(live.url, headers=live.headers(),
                           json={**call, "params": {"name": "weather_search",
                                                    "arguments": {"query": "a"}}})
        assert again.status_code == 400, again.text
        assert again.json()["error"]["code"] == INVALID_REQUEST
        assert again.json()["id"] == call["id"]
        replies = [m for m in messages if is_reply_to(m, call["id"])]
    assert [r["result"]["content"][0]["text"] for r in replies] == ["counted to 10"]
    assert_still_works(live)


# -- bad HTTP -------------------------------------------------------------------------


def test_accept_without_event_stream_answers_406(live: RawSession) -> None:
    _, response = live.rpc("tools/list", headers={"Accept": JSON_TYPE})

    assert response.status_code == 406
    assert error_of(response)["code"] == INVALID_REQUEST
    assert_still_works(live)


def test_content_type_other_than_json_answers_415(live: RawSession) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    response = live.http.post(
        live.url, content=body.encode(), headers=live.headers({"Content-Type": "text/plain"})
    )

    assert response.status_code == 415
    assert error_of(response)["code"] == INVALID_REQUEST
    assert_still_works(live)


def _oversized_call() -> bytes:
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
               "params": {"name": "notes_add_note",
                          "arguments": {"title": "big", "body": "x" * GATEWAY_MAX_BODY_BYTES}}}
    body = json.dumps(message).encode()
    assert len(body) > GATEWAY_MAX_BODY_BYTES
    return body


def test_body_over_max_body_bytes_answers_413(live: RawSession) -> None:
    response = live.http.post(live.url, content=_oversized_call(), headers=live.headers())

    assert response.status_code == 413
    assert error_of(response)["code"] == INVALID_REQUEST
    assert_still_works(live)


def test_chunked_body_over_max_body_bytes_answers_413(live: RawSession) -> None:
    body = _oversized_call()
    chunks = [body[i:i + 8192] for i in range(0, len(body), 8192)]
    response = live.http.post(live.url, content=iter(chunks), headers=live.headers())

    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert error_of(response)["code"] == INVALID_REQUEST
    assert_still_works(live)


def test_put_answers_405_with_an_allow_header(live: RawSession) -> None:
    response = live.http.put(live.url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                             headers=live.headers())

    assert response.status_code == 405
    allowed = {verb.strip() for verb in response.headers["allow"].split(",")}
    assert {"GET", "POST", "DELETE"} <= allowed
    assert "PUT" not in allowed
    assert error_of(response)["code"] == INVALID_REQUEST
    assert_still_works(live)


def test_foreign_host_header_answers_421(live: RawSession) -> None:
    _, response = live.rpc("tools/list", headers={"Host": "evil.example.com"})

    assert response.status_code == 421
    assert error_of(response)["code"] == INVALID_REQUEST
    assert_still_works(live)


def test_foreign_origin_answers_403(live: RawSession) -> None:
    _, response = live.rpc("tools/list", headers={"Origin": "http://evil.example.com"})

    assert response.status_code == 403
    assert error_of(response)["code"] == INVALID_REQUEST
    assert_still_works(live)


def test_loopback_origin_is_accepted(live: RawSession) -> None:
    request_id, response = live.rpc("ping", headers={"Origin": "http://localhost:6274"})

    assert response.status_code == 200, response.text
    assert response.json() == {"jsonrpc": "2.0", "id": request_id, "result": {}}


def test_unsupported_protocol_version_answers_400(live: RawSession) -> None:
    request_id, response = live.rpc("tools/list", headers={"MCP-Protocol-Version": "1999-01-01"})

    assert response.status_code == 400
    assert response.json().get("id") == request_id
    assert error_of(response)["code"] == INVALID_REQUEST
    assert_still_works(live)


# -- session ids ----------------------------------------------------------------------


def test_request_without_a_session_id_answers_400(live: RawSession) -> None:
    headers = live.headers()
    del headers["Mcp-Session-Id"]
    response = live.http.post(live.url, json={"jsonrpc": "2.0", "id": 5, "method": "tools/list"},
                              headers=headers)

    assert response.status_code == 400
    assert response.json().get("id") == 5
    assert error_of(response)["code"] == INVALID_REQUEST
    assert_still_works(live)


def test_unknown_session_id_answers_404_with_exactly_session_not_found(live: RawSession) -> None:
    response = live.http.post(
        live.url,
        json={"jsonrpc": "2.0", "id": 42, "method": "tools/list"},
        headers=live.headers({"Mcp-Session-Id": UNKNOWN_SESSION_ID}),
    )

    assert response.status_code == 404
    assert response.json() == session_not_found(42)
    assert response.content == (
        b'{"jsonrpc":"2.0","id":42,"error":{"code":-32001,"message":"Session not found"}}')
    assert_still_works(live)


@pytest.mark.parametrize(
    "session_id",
    [
        pytest.param(b"a" * 200, id="200-characters"),
        pytest.param(b"a" * 129, id="129-characters"),
        pytest.param("séance-ü".encode(), id="non-ascii-utf8"),
        pytest.param(b"abc def", id="inner-space"),
    ],
)
def test_malformed_session_id_answers_400(live: RawSession, session_id: bytes) -> None:
    # Bytes, so that the id reaches the wire exactly as given (not encoded by the client).
    headers = [
        (name.encode(), value.encode())
        for name, value in live.headers().items()
        if name != "Mcp-Session-Id"
    ]
    headers.append((b"Mcp-Session-Id", session_id))
    response = live.http.post(
        live.url, json={"jsonrpc": "2.0", "id": 9, "method": "tools/list"}, headers=headers
    )

    assert response.status_code == 400, response.text
    assert error_of(response)["code"] == INVALID_REQUEST
    assert_still_works(live)


def test_b32_delete_then_post_answers_404(live: RawSession) -> None:
    deleted = live.delete()
    assert deleted.status_code == 200, deleted.text

    request_id, response = live.rpc("tools/list")

    assert response.status_code == 404
    assert response.json() == session_not_found(request_id)


def test_delete_without_a_session_id_answers_400(live: RawSession) -> None:
    headers = live.headers()
    del headers["Mcp-Session-Id"]
    response = live.http.delete(live.url, headers=headers)

    assert response.status_code == 400
    assert error_of(response)["code"] == INVALID_REQUEST
    assert_still_works(live)


def test_delete_of_an_unknown_session_leaves_other_sessions_alone(live: RawSession) -> None:
    response = live.http.delete(
        live.url, headers=live.headers({"Mcp-Session-Id": UNKNOWN_SESSION_ID})
    )

    assert response.status_code == 404, response.text
    assert response.json() == {"jsonrpc": "2.0", "error": session_not_found(0)["error"]}
    assert_still_works(live)


# -- the GET stream -------------------------------------------------------------------


def test_get_opens_an_event_stream_for_a_live_session(live: RawSession) -> None:
    headers = live.headers({"Accept": EVENT_STREAM})
    with live.http.stream("GET", live.url, headers=headers) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith(EVENT_STREAM)
        first = next(stream.iter_bytes())
    assert first.startswith(b":"), first
    assert_still_works(live)


def test_get_without_event_stream_accept_answers_406(live: RawSession) -> None:
    response = live.http.get(live.url, headers=live.headers({"Accept": JSON_TYPE}))

    assert response.status_code == 406
    assert error_of(response)["code"] == INVALID_REQUEST
    assert_still_works(live)


def test_get_with_an_unknown_session_answers_404(live: RawSession) -> None:
    response = live.http.get(
        live.url,
        headers=live.headers({"Accept": EVENT_STREAM, "Mcp-Session-Id": UNKNOWN_SESSION_ID}),
    )

    assert response.status_code == 404
    assert error_of(response)["code"] == -32001
    assert_still_works(live)
