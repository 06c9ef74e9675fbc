"""Outgoing auth end to end: real ``vmcp serve`` processes in front of recording backends.

Each backend writes down the headers of every request it receives, so the tests see
exactly which credentials reached it: a configured API key (from an environment
variable), the caller's own token (``forward``), an exchanged token (``token_exchange``,
against a token endpoint on loopback) and allow-listed client headers - and that none of
them reach a backend that was not configured for them, nor the logs, nor the store.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis

from tests.support.identity_provider import AUDIENCE, IdentityProvider
from tests.support.mcp_http import (
    BASE_HEADERS,
    PROTOCOL_VERSION,
    RawSession,
    initialize_body,
    reply_to,
)
from tests.support.processes import (
    VMCP_EXECUTABLE,
    running_gateway,
    running_gateways,
    write_config,
)
from tests.support.recording_backend import RecordingBackend, SeenRequest, recording_backend
from tests.support.redis_server import RedisServer
from tests.support.token_endpoint import TokenEndpoint

API_KEY_VARIABLE = "VMCP_TEST_OUTGOING_API_KEY"
API_KEY = "key-0f1e2d3c4b5a"
CLIENT_SECRET_VARIABLE = "VMCP_TEST_EXCHANGE_SECRET"
CLIENT_SECRET = "s3cret/with:odd+chars"
BACKEND_AUDIENCE = "https://backend.example/api"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def oidc(idp: IdentityProvider) -> dict[str, Any]:
    return {"incoming": {"type": "oidc", "issuer": idp.issuer, "audience": AUDIENCE,
                         "jwks_url": idp.jwks_url}}


def backend_entry(backend_name: str, backend: RecordingBackend, **auth: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": backend_name, "url": backend.url}
    if auth:
        entry["auth"] = auth
    return entry


def open_session(url: str, token: str, http: httpx2.Client) -> RawSession:
    response = http.post(url, json=initialize_body(1), headers={**BASE_HEADERS, **bearer(token)})
    assert response.status_code == 200, response.text
    session = RawSession(http, url, response.headers["mcp-session-id"])
    notified = http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                         headers=session.headers(bearer(token)))
    assert notified.status_code == 202, notified.text
    return session


def call(session: RawSession, tool: str, token: str, *, url: str | None = None,
         headers: Mapping[str, str] | None = None, **arguments: Any) -> dict[str, Any]:
    """``tools/call`` carrying ``token`` (and ``headers``); the JSON-RPC reply."""
    request_id, response = session.rpc(
        "tools/call", {"name": tool, "arguments": arguments or {"text": "hi"}}, url=url,
        headers={**bearer(token), **(headers or {})})
    assert response.status_code == 200, response.text
    return reply_to(response, request_id)


def handshakes(backend: RecordingBackend) -> list[SeenRequest]:
    """The ``initialize`` requests of client sessions (not of the gateway's health probes)."""
    return [seen for seen in backend.calls("initialize")
            if isinstance(seen.params, dict) and seen.params["clientInfo"]["name"] == "vmcp"]


def echoed(reply: dict[str, Any]) -> str:
    assert "result" in reply, reply
    return str(reply["result"]["content"][0]["text"])


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider("outgoing-idp") as provider:
        yield provider


@pytest.fixture
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=15.0) as client:
        yield client


# --------------------------------------------------------------------------- one gateway


def test_each_backend_gets_exactly_the_credentials_configured_for_it(
        idp: IdentityProvider, tmp_path: Path, http: httpx2.Client,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_VARIABLE, API_KEY)
    with recording_backend(require=lambda h: h.get("x-api-key") == API_KEY) as keyed, \
            recording_backend(require=lambda h: h.get("authorization", "").startswith(
                "Bearer ")) as forwarded, \
            recording_backend() as plain:
        config = {
            "backends": [
                backend_entry("keyed", keyed, type="header", name="X-Api-Key",
                              value_env=API_KEY_VARIABLE, allow_headers=["X-Tenant"]),
                backend_entry("forwarded", forwarded, type="forward"),
                backend_entry("plain", plain),
            ],
            "auth": oidc(idp),
        }
        with running_gateway(config, tmp_path) as gateway:
            alice = idp.mint("alice")
            session = open_session(gateway.url, alice, http)

            assert echoed(call(session, "keyed_echo", alice,
                               headers={"X-Tenant": "tenant-7", "X-Other": "no"})) == "hi"
            assert echoed(call(session, "forwarded_echo", alice)) == "hi"
            refreshed = idp.mint("alice")  # the same identity, a new token
            assert echoed(call(session, "forwarded_echo", refreshed)) == "hi"
            assert echoed(call(session, "plain_echo", alice, headers={"X-Tenant": "t"})) == "hi"
            ended = http.delete(session.url, headers=session.headers(bearer(refreshed)))
            assert ended.status_code == 200, ended.text
            log = gateway.log_tail(400)

    # The API key went on everything sent to its backend, from the handshake to the
    # DELETE; the tenant header only on the call whose client sent it.
    assert {seen.http_method for seen in keyed.seen} >= {"POST", "DELETE"}
    assert all(seen.header("x-api-key") == API_KEY for seen in keyed.seen)
    assert [seen.header("x-tenant") for seen in keyed.calls("tools/call")] == ["tenant-7"]
    assert not any(seen.header("x-other") or seen.header("authorization")
                   for seen in keyed.seen)
    # The caller's own token, the live request's one on each call.
    assert handshakes(forwarded)[0].header("authorization") == f"Bearer {alice}"
    calls = forwarded.calls("tools/call")
    assert [seen.header("authorization") for seen in calls] == [
        f"Bearer {alice}", f"Bearer {refreshed}"]
    upstream = calls[0].header("mcp-session-id")   # the one the session opened on first use
    assert {seen.header("mcp-session-id") for seen in calls} == {upstream}
    ending = forwarded.wait_for_http("DELETE", where=lambda seen: seen.header(
        "mcp-session-id") == upstream)
    assert ending.header("authorization") == f"Bearer {refreshed}"
    assert not any(seen.header("x-api-key") for seen in forwarded.seen)
    # Nothing for the backend without auth.
    assert not any(seen.header("authorization") or seen.header("x-api-key")
                   or seen.header("x-tenant") for seen in plain.seen)
    # Start-up names the backend that gets callers' tokens; no secret is ever logged.
    assert "backend forwarded receives each caller's own token" in log
    for secret in (API_KEY, alice, refreshed):
        assert secret not in log


def test_an_unset_key_variable_stops_start_up_with_its_location(tmp_path: Path) -> None:
    config = {"backends": [{"name": "keyed", "url": "http://127.0.0.1:9/mcp",
                            "auth": {"type": "header", "name": "X-Api-Key",
                                     "value_env": API_KEY_VARIABLE}}]}
    path = write_config(tmp_path / "vmcp.yaml", config)
    env = {k: v for k, v in os.environ.items() if k != API_KEY_VARIABLE}

    done = subprocess.run([str(VMCP_EXECUTABLE), "serve", "--config", str(path), "--port", "0"],
                          env=env, capture_output=True, text=True, timeout=30, check=False)

    assert done.returncode == 2, (done.stdout, done.stderr)
    assert (f"backends[0].auth.value_env: environment variable {API_KEY_VARIABLE} is unset"
            in done.stderr)


def test_token_exchange_is_cached_until_shortly_before_expiry(
        idp: IdentityProvider, tmp_path: Path, http: httpx2.Client,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CLIENT_SECRET_VARIABLE, CLIENT_SECRET)
    # Cached for expires_in minus a margin of at most half of it: 3 seconds here.
    with TokenEndpoint("vmcp-gateway", CLIENT_SECRET, expires_in=6) as endpoint, \
            recording_backend(require=lambda h: h.get("authorization", "").startswith(
                "Bearer exchanged-")) as backend:
        config = {
            "backends": [backend_entry(
                "exchanged", backend, type="token_exchange", token_url=endpoint.url,
                audience=BACKEND_AUDIENCE, client_id="vmcp-gateway",
                client_secret_env=CLIENT_SECRET_VARIABLE, scope="notes.read")],
            "auth": oidc(idp),
        }
        with running_gateway(config, tmp_path) as gateway:
            alice = idp.mint("alice")
            session = open_session(gateway.url, alice, http)
            first = call(session, "exchanged_echo", alice)
            second = call(session, "exchanged_echo", alice)
            exchanges_while_fresh = endpoint.count()
            time.sleep(3.3)
            after_expiry = call(session, "exchanged_echo", alice)
            exchanges_after_expiry = endpoint.count()
            other_token = idp.mint("alice")
            with_new_token = call(session, "exchanged_echo", other_token)
            endpoint.fail_with = 400
            refused_token = idp.mint("alice")
            refused = call(session, "exchanged_echo", refused_token)
            log = gateway.log_tail(400)

    # One exchange served the handshake, the discovery and both calls.
    assert (echoed(first), echoed(second)) == ("hi", "hi")
    assert exchanges_while_fresh == 1
    assert exchanges_after_expiry == 2
    assert echoed(after_expiry) == echoed(with_new_token) == "hi"
    assert [seen.header("authorization") for seen in backend.calls("tools/call")] == [
        "Bearer exchanged-1", "Bearer exchanged-1", "Bearer exchanged-2", "Bearer exchanged-3"]
    assert [e.subject_token for e in endpoint.exchanges] == [alice, alice, other_token]
    assert {(e.audience, e.scope, e.client_id) for e in endpoint.exchanges} == {
        (BACKEND_AUDIENCE, "notes.read", "vmcp-gateway")}
    # A refused exchange is an error naming the backend, and no token shows anywhere.
    error = refused["error"]
    assert error["data"] == {"backend": "exchanged"}
    assert "token exchange refused: HTTP 400 (invalid_grant)" in error["message"]
    for secret in (alice, other_token, refused_token, CLIENT_SECRET, "exchanged-"):
        assert secret not in error["message"]
        assert secret not in log


# --------------------------------------------------------------------------- two replicas


@pytest.mark.redis
def test_a_restored_session_forwards_the_new_requests_token(
        idp: IdentityProvider, redis_server: RedisServer, tmp_path: Path,
        http: httpx2.Client) -> None:
    prefix = f"outgoing:{uuid.uuid4().hex[:12]}:"
    with recording_backend(require=lambda h: h.get("authorization", "").startswith(
            "Bearer ")) as backend:
        configs = {name: {"backends": [backend_entry("forwarded", backend, type="forward")],
                          "auth": oidc(idp),
                          "session": {"store": redis_server.url, "key_prefix": prefix},
                          "server": {"replica_id": name}}
                   for name in ("replica-1", "replica-2")}
        with running_gateways(configs, tmp_path) as gateways:
            first, second = gateways["replica-1"], gateways["replica-2"]
            created_with = idp.mint("alice")
            session = open_session(first.url, created_with, http)
            restored_with = idp.mint("alice")
            on_second = call(session, "forwarded_echo", restored_with, url=second.url)
            back_on_first = idp.mint("alice")
            on_first = call(session, "forwarded_echo", back_on_first, url=first.url)
            records = _stored(redis_server, prefix)
            logs = first.log_tail(400) + second.log_tail(400)
            assert http.delete(second.url, headers=session.headers(
                {**bearer(back_on_first), "MCP-Protocol-Version": PROTOCOL_VERSION})
            ).status_code == 200

    assert echoed(on_second) == echoed(on_first) == "hi"
    assert [seen.header("authorization") for seen in backend.calls("tools/call")] == [
        f"Bearer {restored_with}", f"Bearer {back_on_first}"]
    # The initialize lists the backend under its own token; the upstream session is
    # opened by the first call (on the second replica, with that call's token) and
    # re-attached, not opened again, by the first replica.
    tokens = [seen.header("authorization") for seen in handshakes(backend)]
    assert tokens[0] == f"Bearer {created_with}"
    assert f"Bearer {restored_with}" in tokens
    assert set(tokens) <= {f"Bearer {created_with}", f"Bearer {restored_with}"}, tokens
    assert len({seen.header("mcp-session-id") for seen in backend.calls("tools/call")}) == 1
    assert records, "the session is stored in Redis"
    for token in (created_with, restored_with, back_on_first):
        assert token not in records
        assert token not in logs


def _stored(server: RedisServer, prefix: str) -> str:
    """Everything under ``prefix`` in Redis, as text (string values only)."""
    client = redis.Redis.from_url(server.url)
    try:
        parts = []
        for key in client.scan_iter(match=f"{prefix}*"):
            if client.type(key) == b"string":
                parts.append(f"{key.decode()}={client.get(key)!r}")
        return "\n".join(parts)
    finally:
        client.close()
