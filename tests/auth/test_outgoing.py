"""Outgoing auth in one process: configuration, start-up checks, the exchange cache, the
caller's scope, and per-call headers through both backend transports."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
import httpx2
import pytest
from starlette.datastructures import Headers

from tests.support.recording_backend import RecordingBackend
from tests.support.token_endpoint import TokenEndpoint
from tests.unit.backend.test_connection_core import MemoryBackend
from vmcp.auth.outgoing import (
    Caller,
    TokenExchanger,
    _Exchange,
    act_for,
    build_outgoing_auth,
    current_caller,
    request_scope,
)
from vmcp.backend import BackendState, BackendTarget, connect
from vmcp.backend.health import HealthMonitor, HealthStatus
from vmcp.config import HealthConfig, VmcpConfig, with_overrides
from vmcp.errors import BackendTimeout, ConfigError, OutgoingAuthError
from vmcp.identity import Principal

pytestmark = pytest.mark.anyio

ALICE = Principal("https://idp.example", "alice", token="alice-token")
STATIC_AUTH = {"incoming": {"type": "static", "tokens": [
    {"token_sha256": "0" * 64, "issuer": "static", "subject": "alice"}]}}


def config(*auths: dict[str, Any], incoming: dict[str, Any] | None = None,
           headers: dict[str, str] | None = None) -> VmcpConfig:
    """Validated like a file is: problems raise ``ConfigError`` with their locations."""
    return with_overrides(VmcpConfig(), {
        "backends": [{"name": f"b{i}", "url": "http://127.0.0.1:9/mcp", "auth": auth,
                      "headers": headers or {}} for i, auth in enumerate(auths)],
        "auth": incoming if incoming is not None else STATIC_AUTH,
    })


def caller(token: str | None = "alice-token", **headers: str) -> Caller:
    principal = Principal("https://idp.example", "alice", token=token)
    return Caller(principal, Headers(headers))


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(("auth", "problem"), [
    ({"type": "header", "value": "x"}, "needs name"),
    ({"type": "header", "name": "X-Key"}, "exactly one of value and value_env"),
    ({"type": "header", "name": "X-Key", "value": "a", "value_env": "B"},
     "exactly one of value and value_env"),
    ({"type": "header", "name": "Mcp-Session-Id", "value": "a"}, "hop-by-hop"),
    ({"type": "header", "name": "Accept", "value": "a"}, "set by the MCP transport"),
    ({"type": "header", "name": "X-Key", "value": "a\nb"}, "line breaks"),
    ({"type": "forward", "name": "X-Key"}, "name applies only to type 'header'"),
    ({"type": "token_exchange", "token_url": "http://idp/token"}, "needs audience"),
    ({"allow_headers": ["Connection"]}, "hop-by-hop"),
    ({"allow_headers": ["Transfer-Encoding"]}, "hop-by-hop"),
    ({"allow_headers": ["MCP-Protocol-Version"]}, "hop-by-hop"),
    ({"allow_headers": ["Content-Type"]}, "set by the MCP transport"),
    ({"allow_headers": ["Authorization"]}, "use type 'forward'"),
    ({"allow_headers": ["x-a", "X-A"]}, "listed more than once"),
    ({"type": "header", "name": "X-A", "value": "v", "allow_headers": ["x-a"]},
     "both set and copied"),
])
def test_bad_outgoing_auth_is_refused_with_its_location(auth: dict[str, Any],
                                                        problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        config(auth)
    assert "backends[0].auth" in str(refused.value)
    assert problem in str(refused.value)


def test_passing_on_tokens_needs_incoming_auth_with_tokens() -> None:
    for kind in ({"type": "forward"}, {"type": "token_exchange", "token_url": "http://i/t",
                                       "audience": "a", "client_id": "c"}):
        with pytest.raises(ConfigError) as refused:
            config(kind, incoming={"incoming": {"type": "anonymous"}})
        assert "backends[0].auth.type" in str(refused.value)
        assert "'anonymous'" in str(refused.value)


def test_static_headers_may_not_collide_with_what_auth_sets() -> None:
    with pytest.raises(ConfigError) as refused:
        config({"type": "forward"}, headers={"Authorization": "x"})
    assert "backends[0]: headers sets authorization, which auth sets too" in str(refused.value)


def test_start_up_reads_secrets_and_lists_every_missing_one(
        caplog: pytest.LogCaptureFixture) -> None:
    settings = config(
        {"type": "header", "name": "X-Key", "value_env": "KEY_A"},
        {"type": "token_exchange", "token_url": "http://i/t", "audience": "a",
         "client_id": "c", "client_secret_env": "SECRET_B"},
        {"type": "forward"},
    )
    with pytest.raises(ConfigError) as refused:
        build_outgoing_auth(settings, environ={"KEY_A": ""})
    assert str(refused.value).splitlines() == [
        "backends[0].auth.value_env: environment variable KEY_A is unset, empty or contains "
        "a line break",
        "backends[1].auth.client_secret_env: environment variable SECRET_B is unset or empty",
    ]

    with caplog.at_level(logging.WARNING, logger="vmcp.auth.outgoing"):
        auth = build_outgoing_auth(settings, environ={"KEY_A": "k", "SECRET_B": "s"})
    assert auth.static_headers("b0") == {"X-Key": "k"}
    assert [auth.per_caller(name) for name in ("b0", "b1", "b2")] == [False, True, True]
    assert [r.getMessage() for r in caplog.records if "b2" in r.getMessage()]
    assert not any("b0" in r.getMessage() or "b1" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- per-call headers


async def test_headers_follow_the_strategy_and_the_caller() -> None:
    auth = build_outgoing_auth(config(
        {"type": "forward", "allow_headers": ["x-tenant", "traceparent"]},
        {"type": "header", "name": "X-Key", "value": "k"},
        {},
    ))

    assert await auth.headers_for("b0", caller(**{"x-tenant": "t1", "x-other": "o"})) == {
        "x-tenant": "t1", "authorization": "Bearer alice-token"}
    assert await auth.headers_for("b0", caller(token=None)) == {}
    assert await auth.headers_for("b0", None) == {}
    assert await auth.headers_for("b1", caller()) == {}
    assert await auth.headers_for("b2", caller(**{"x-tenant": "t1"})) == {}
    assert await auth.headers_for("unknown", caller()) == {}


async def test_the_caller_is_scoped_to_its_request_and_the_tasks_it_starts() -> None:
    seen: list[Caller | None] = []

    async def spawned() -> None:
        seen.append(current_caller())

    async def request(principal: Principal) -> asyncio.Task[None]:
        with request_scope():
            act_for(principal, Headers({}))
            task = asyncio.create_task(spawned())
            seen.append(current_caller())
        seen.append(current_caller())
        return task

    await (await request(ALICE))

    assert [c.principal if c else None for c in seen] == [ALICE, None, ALICE]
    assert "alice-token" not in repr(seen)


# --------------------------------------------------------------------------- token exchange


@pytest.fixture
async def exchanger() -> AsyncIterator[tuple[TokenExchanger, list[float]]]:
    now = [1000.0]
    exchanger = TokenExchanger(capacity=2, clock=lambda: now[0])
    async with httpx2.AsyncClient() as http:
        exchanger.use_client(http)
        yield exchanger, now


def exchange_settings(endpoint: TokenEndpoint, audience: str = "aud") -> _Exchange:
    return _Exchange(endpoint.url, audience, endpoint.client_id, endpoint.client_secret, None)


async def test_the_cache_is_keyed_by_backend_token_and_audience_and_bounded(
        exchanger: tuple[TokenExchanger, list[float]]) -> None:
    cache, now = exchanger
    with TokenEndpoint("gw", "pw:/ x", expires_in=100) as endpoint:
        settings = exchange_settings(endpoint)
        first = await cache.token_for("b", "t1", settings)
        assert await cache.token_for("b", "t1", settings) == first
        assert await cache.token_for("b", "t2", settings) != first
        assert await cache.token_for("c", "t1", settings) != first
        assert endpoint.count() == 3
        assert len(cache) == 2  # bounded: the least recently used entry went
        await cache.token_for("b", "t1", exchange_settings(endpoint, "other"))
        assert endpoint.count() == 4
        now[0] += 50 - 0.01  # expires_in 100, used until 30 s before
        await cache.token_for("c", "t1", settings)
        assert endpoint.count() == 4
        now[0] += 25
        await cache.token_for("c", "t1", settings)
        assert endpoint.count() == 5


async def test_without_expires_in_nothing_is_cached(
        exchanger: tuple[TokenExchanger, list[float]]) -> None:
    cache, _ = exchanger
    with TokenEndpoint("gw", "pw", expires_in=None) as endpoint:
        await cache.token_for("b", "t1", exchange_settings(endpoint))
        await cache.token_for("b", "t1", exchange_settings(endpoint))
        assert endpoint.count() == 2


async def test_concurrent_calls_share_one_exchange_and_its_failure(
        exchanger: tuple[TokenExchanger, list[float]]) -> None:
    cache, _ = exchanger
    with TokenEndpoint("gw", "pw") as endpoint:
        settings = exchange_settings(endpoint)
        tokens = await asyncio.gather(*(cache.token_for("b", "t1", settings) for _ in range(8)))
        assert set(tokens) == {"exchanged-1"}
        endpoint.fail_with = 400
        outcomes = await asyncio.gather(
            *(cache.token_for("b", "secret-subject", settings) for _ in range(8)),
            return_exceptions=True)
    assert endpoint.count() == 1
    assert all(isinstance(o, OutgoingAuthError) for o in outcomes)
    message = str(outcomes[0])
    assert message == "backend 'b': token exchange refused: HTTP 400 (invalid_grant)"
    assert "secret-subject" not in message


async def test_a_wrong_client_secret_and_an_unreachable_endpoint_are_errors(
        exchanger: tuple[TokenExchanger, list[float]]) -> None:
    cache, _ = exchanger
    with TokenEndpoint("gw", "pw") as endpoint:
        wrong = _Exchange(endpoint.url, "aud", "gw", "not-pw", None)
        with pytest.raises(OutgoingAuthError, match=r"HTTP 401 \(invalid_client\)"):
            await cache.token_for("b", "t1", wrong)
        url = endpoint.url
    with pytest.raises(OutgoingAuthError, match="token endpoint unreachable"):
        await cache.token_for("b", "t1", _Exchange(url, "aud", "gw", "pw", None))


# --------------------------------------------------------------------------- transports


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_per_call_headers_reach_the_backend_on_both_transports(transport: str) -> None:
    with RecordingBackend(transport=transport) as backend:  # type: ignore[arg-type]
        async with httpx2.AsyncClient() as http:
            target = BackendTarget("rec", backend.url, transport,  # type: ignore[arg-type]
                                   {"x-static": "s"})
            connection = await connect(target, http, client_info={"name": "t", "version": "1"},
                                       capabilities={}, timeout=5,
                                       headers={"authorization": "Bearer opener"})
            await connection.request("tools/call", {"name": "echo", "arguments": {"text": "x"}},
                                     headers={"authorization": "Bearer caller-1"})
            await connection.notify("notifications/roots/list_changed", None,
                                    headers={"authorization": "Bearer caller-2"})
            await connection.request("tools/list", None)
            await connection.aclose()
        seen = backend.seen

    def auth_of(rpc_method: str) -> list[str | None]:
        return [s.header("authorization") for s in seen if s.rpc_method == rpc_method]

    assert all(s.header("x-static") == "s" for s in seen)
    assert auth_of("initialize") == ["Bearer opener"]
    assert auth_of("notifications/initialized") == ["Bearer opener"]
    assert auth_of("tools/call") == ["Bearer caller-1"]
    assert auth_of("notifications/roots/list_changed") == ["Bearer caller-2"]
    assert auth_of("tools/list") == [None]  # a call without credentials carries none
    if transport == "sse":
        assert [s.header("authorization") for s in seen if s.http_method == "GET"] == [
            "Bearer opener"]
    else:  # ending the session uses the latest call's credentials
        assert [s.header("authorization") for s in seen if s.http_method == "DELETE"] == [
            "Bearer caller-2"]


class _HeaderRecordingBackend(MemoryBackend):
    """The in-memory transport, noting the headers each handshake and send carried."""

    def __init__(self, http: httpx2.AsyncClient) -> None:
        super().__init__(http)
        self.handshake_headers: list[dict[str, str]] = []
        self.send_headers: list[dict[str, str]] = []

    async def _handshake(self, protocol_version: str, headers: Mapping[str, str]
                         ) -> BackendState:
        self.handshake_headers.append(dict(headers))
        return await super()._handshake(protocol_version, headers)

    async def _send(self, body: bytes, headers: Mapping[str, str]) -> None:
        self.send_headers.append(dict(headers))
        await super()._send(body, headers)


async def test_a_reinitialization_and_a_cancellation_notice_carry_the_calls_headers() -> None:
    async with httpx2.AsyncClient() as http:
        backend = _HeaderRecordingBackend(http)
        backend.sessions.clear()  # the backend forgot us: the call re-initializes
        with anyio.fail_after(5):
            await backend.request("tools/list", None, headers={"authorization": "Bearer a"})
        backend.call_gate = anyio.Event()  # never set: the call times out
        with anyio.fail_after(5), pytest.raises(BackendTimeout):
            await backend.request("tools/call", None, timeout=0.05,
                                  headers={"authorization": "Bearer b"})
        with anyio.fail_after(5):  # the notice follows the answer, in the background
            await backend.something_sent.wait()

    assert backend.handshake_headers == [{"authorization": "Bearer a"}]
    assert backend.send_headers == [{"authorization": "Bearer b"}]


async def test_a_wrapped_connection_takes_the_callers_credentials_at_call_time() -> None:
    async with httpx2.AsyncClient() as http:
        inner = _HeaderRecordingBackend(http)
        auth = build_outgoing_auth(config({"type": "forward"}, {}))
        inner_target = BackendTarget("b0", inner.target.url)
        inner.target = inner_target
        wrapped = auth.wrap(inner)
        other = MemoryBackend(http)
        other.target = BackendTarget("b1", other.target.url)
        assert auth.wrap(other) is other  # nothing to add for that backend

        with request_scope():
            await wrapped.notify("notifications/x", None)  # outside any request: nothing
            act_for(ALICE, Headers({}))
            await wrapped.notify("notifications/x", None)
            act_for(Principal("https://idp.example", "alice", token="newer"), Headers({}))
            await wrapped.notify("notifications/x", None)

    assert inner.send_headers == [{}, {"authorization": "Bearer alice-token"},
                                  {"authorization": "Bearer newer"}]


async def test_a_probe_refused_for_lack_of_a_callers_token_is_not_unhealthy() -> None:
    """Probes have no caller; a backend that wants each caller's token refuses them."""
    with RecordingBackend(require=lambda h: "authorization" in h) as backend:
        async with httpx2.AsyncClient() as http:
            targets = [BackendTarget("forwarded", backend.url),
                       BackendTarget("static", backend.url)]
            policy = HealthConfig(interval_seconds=60, timeout_seconds=2,
                                  unhealthy_threshold=1, degraded_latency_seconds=5)
            monitor = HealthMonitor(targets, http, policy,
                                    needs_caller=lambda name: name == "forwarded")
            await monitor.probe_all()

    statuses = {name: health.status for name, health in monitor.snapshot().items()}
    assert statuses == {"forwarded": HealthStatus.HEALTHY,
                        "static": HealthStatus.UNAUTHENTICATED}
