"""Incoming auth end to end: real ``vmcp serve`` processes, real tokens, real JWKS over HTTP.

A session belongs to the identity (issuer and subject) that created it. Anyone else who
presents its id - with a valid token of their own - gets exactly the 404 an unknown id
gets, so the answer says nothing about whether the id is real; a request without a usable
token is refused with 401 before any session is looked up, identically for every id.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support.identity_provider import AUDIENCE, IdentityProvider, identity_providers
from tests.support.mcp_http import (
    BASE_HEADERS,
    EVENT_STREAM,
    INVALID_REQUEST,
    PROTOCOL_VERSION,
    RawSession,
    error_of,
    initialize_body,
    session_not_found,
)
from tests.support.processes import (
    NOTES_MODULE,
    ManagedProcess,
    gateway_config,
    running_backends,
    running_gateways,
)
from tests.support.redis_server import RedisServer

UNKNOWN_SESSION_ID = "0" * 32
STATIC_TOKEN = "static-alice-0123456789"
STATIC_OTHER_TOKEN = "static-bob-0123456789"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def oidc_auth(primary: IdentityProvider, *extra: IdentityProvider) -> dict[str, Any]:
    return {"incoming": {
        "type": "oidc", "issuer": primary.issuer, "audience": AUDIENCE,
        "jwks_url": primary.jwks_url,
        "extra_issuers": [{"issuer": p.issuer, "jwks_url": p.jwks_url} for p in extra],
    }}


def metadata_url(gateway: ManagedProcess) -> str:
    return f"{gateway.base_url}/.well-known/oauth-protected-resource/mcp"


def open_session(gateway: ManagedProcess, token: str, http: httpx2.Client) -> RawSession:
    """``initialize`` with ``token``; the session's later requests carry it too."""
    response = http.post(gateway.url, json=initialize_body(1),
                         headers={**BASE_HEADERS, **bearer(token)})
    assert response.status_code == 200, response.text
    session = RawSession(http, gateway.url, response.headers["mcp-session-id"])
    notified = http.post(gateway.url, json={"jsonrpc": "2.0",
                                            "method": "notifications/initialized"},
                         headers=session.headers(bearer(token)))
    assert notified.status_code == 202, notified.text
    return session


def tools_as(session: RawSession, token: str | None, *, url: str | None = None
             ) -> tuple[int, httpx2.Response]:
    """``tools/list`` on ``session`` carrying ``token`` (or no Authorization at all)."""
    return session.rpc("tools/list", url=url, headers=bearer(token) if token else None)


def assert_owner_continues(session: RawSession, token: str, *, url: str | None = None) -> None:
    request_id, response = tools_as(session, token, url=url)
    assert response.status_code == 200, response.text
    names = {tool["name"] for tool in response.json()["result"]["tools"]}
    assert "notes_add_note" in names, names
    assert response.json()["id"] == request_id


def assert_not_found(response: httpx2.Response, request_id: int | None) -> None:
    """The exact 404 an unknown session id gets (without an id for GET and DELETE)."""
    assert response.status_code == 404, response.text
    expected = session_not_found(request_id if request_id is not None else 0)
    if request_id is None:
        del expected["id"]
    assert response.json() == expected


def assert_challenged(response: httpx2.Response, gateway: ManagedProcess,
                      error: str | None = None) -> None:
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith(f'Bearer resource_metadata="{metadata_url(gateway)}"'), challenge
    if error is None:
        assert "error=" not in challenge, challenge
    else:
        assert f'error="{error}"' in challenge, challenge
    assert error_of(response)["code"] == INVALID_REQUEST


@pytest.fixture(scope="module")
def providers() -> Iterator[list[IdentityProvider]]:
    with identity_providers("idp-a", "idp-b") as started:
        yield started


@pytest.fixture(scope="module")
def notes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ManagedProcess]]:
    with running_backends({"notes": NOTES_MODULE},
                          tmp_path_factory.mktemp("auth-backends")) as backends:
        yield backends


@pytest.fixture(scope="module")
def gateways(notes: dict[str, ManagedProcess], providers: list[IdentityProvider],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ManagedProcess]]:
    """One gateway per incoming auth type, memory store, in front of the notes backend."""
    idp_a, _ = providers
    static = {"incoming": {"type": "static", "tokens": [
        {"token_sha256": hashlib.sha256(STATIC_TOKEN.encode()).hexdigest(),
         "issuer": "static", "subject": "alice"},
        {"token_sha256": hashlib.sha256(STATIC_OTHER_TOKEN.encode()).hexdigest(),
         "issuer": "static", "subject": "bob"},
    ]}}
    configs = {
        "oidc": gateway_config(notes, auth=oidc_auth(idp_a)),
        "static": gateway_config(notes, auth=static),
        "anonymous": gateway_config(notes),
    }
    with running_gateways(configs, tmp_path_factory.mktemp("auth-gateways")) as started:
        yield started


@pytest.fixture
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=15.0) as client:
        yield client


# --------------------------------------------------------------------------- oidc, one replica


def test_protected_resource_metadata_is_served(gateways: dict[str, ManagedProcess],
                                               providers: list[IdentityProvider],
                                               http: httpx2.Client) -> None:
    gateway = gateways["oidc"]
    documents = [http.get(gateway.base_url + path) for path in
                 ("/.well-known/oauth-protected-resource",
                  "/.well-known/oauth-protected-resource/mcp")]

    for response in documents:
        assert response.status_code == 200, response.text
        assert response.headers["access-control-allow-origin"] == "*"
        assert response.json() == {"resource": gateway.url,
                                   "authorization_servers": [providers[0].issuer],
                                   "bearer_methods_supported": ["header"]}
    for name in ("static", "anonymous"):
        missing = http.get(gateways[name].base_url + "/.well-known/oauth-protected-resource")
        assert missing.status_code == 404


def test_without_a_token_the_answer_is_401_pointing_at_the_metadata(
        gateways: dict[str, ManagedProcess], http: httpx2.Client) -> None:
    gateway = gateways["oidc"]

    response = http.post(gateway.url, json=initialize_body(7), headers=BASE_HEADERS)

    assert_challenged(response, gateway)
    assert response.json()["id"] == 7
    followed = http.get(metadata_url(gateway))
    assert followed.status_code == 200
    assert followed.json()["resource"] == gateway.url


def test_the_owner_uses_the_session_and_another_subject_gets_404(
        gateways: dict[str, ManagedProcess], providers: list[IdentityProvider],
        http: httpx2.Client) -> None:
    idp = providers[0]
    alice = idp.mint("alice")
    session = open_session(gateways["oidc"], alice, http)
    bob = idp.mint("bob")

    assert_owner_continues(session, alice)
    request_id, posted = tools_as(session, bob)
    streamed = http.get(session.url, headers=session.headers(
        {**bearer(bob), "Accept": EVENT_STREAM}))
    deleted = http.delete(session.url, headers=session.headers(bearer(bob)))
    unknown = RawSession(http, session.url, UNKNOWN_SESSION_ID)
    unknown_id, unknown_posted = tools_as(unknown, bob)

    assert_not_found(posted, request_id)
    assert_not_found(streamed, None)
    assert_not_found(deleted, None)
    assert_not_found(unknown_posted, unknown_id)  # the very answer an unknown id gets
    assert_owner_continues(session, alice)
    # A new token for the same identity keeps the session: it is bound to iss and sub.
    assert_owner_continues(session, idp.mint("alice"))
    assert http.delete(session.url, headers=session.headers(bearer(alice))).status_code == 200


def test_a_strangers_attempt_does_not_close_the_owners_live_session(
        gateways: dict[str, ManagedProcess], providers: list[IdentityProvider],
        http: httpx2.Client) -> None:
    """Otherwise anyone holding a leaked id could keep tearing down the owner's backend
    sessions (and their state) with requests that are themselves refused."""
    gateway = gateways["oidc"]
    alice = providers[0].mint("alice")
    session = open_session(gateway, alice, http)
    assert_owner_continues(session, alice)
    # /status on the public port of a gateway with auth needs a credential
    before = http.get(gateway.base_url + "/status", headers=bearer(alice)).json()["cache"]

    for _ in range(3):
        request_id, response = tools_as(session, providers[0].mint("mallory"))
        assert_not_found(response, request_id)
        assert_owner_continues(session, alice)

    after = http.get(gateway.base_url + "/status", headers=bearer(alice)).json()["cache"]
    assert [after[k] for k in ("evictions", "removals", "loads")] == [
        before[k] for k in ("evictions", "removals", "loads")]


def test_refused_tokens_on_a_live_session_are_401_and_leave_it_alone(
        gateways: dict[str, ManagedProcess], providers: list[IdentityProvider],
        http: httpx2.Client) -> None:
    idp, other = providers
    gateway = gateways["oidc"]
    alice = idp.mint("alice")
    session = open_session(gateway, alice, http)
    attempts = {
        "expired": idp.mint("alice", lifetime=-600),
        "wrong audience": idp.mint("alice", aud="another-service"),
        "untrusted issuer": other.mint("alice"),
        "claims another issuer": other.mint("alice", iss=idp.issuer),
        "tampered": alice[:-4] + ("AAAA" if not alice.endswith("AAAA") else "BBBB"),
        "alg none": idp.unsigned("alice"),
        "hs256 with the public key": idp.hmac_with_public_key("alice"),
        "unknown kid": idp.mint("alice", kid=idp.add_key(published=False)),
        "no sub": idp.mint(None),
    }

    for name, token in attempts.items():
        _, response = tools_as(session, token)
        assert_challenged(response, gateway, "invalid_token")
        assert name  # every attempt is named in a failure's locals

    assert_owner_continues(session, alice)


def test_no_token_answers_alike_for_a_real_and_a_made_up_session(
        gateways: dict[str, ManagedProcess], providers: list[IdentityProvider],
        http: httpx2.Client) -> None:
    gateway = gateways["oidc"]
    alice = providers[0].mint("alice")
    session = open_session(gateway, alice, http)
    unknown = RawSession(http, session.url, UNKNOWN_SESSION_ID)

    real = http.post(session.url, json={"jsonrpc": "2.0", "id": 9, "method": "tools/list"},
                     headers=session.headers())
    made_up = http.post(session.url, json={"jsonrpc": "2.0", "id": 9, "method": "tools/list"},
                        headers=unknown.headers())

    assert_challenged(real, gateway)
    assert (real.status_code, real.headers["www-authenticate"], real.content) == (
        made_up.status_code, made_up.headers["www-authenticate"], made_up.content)
    assert_owner_continues(session, alice)


# --------------------------------------------------------------------------- static, anonymous


def test_static_tokens_own_their_sessions(gateways: dict[str, ManagedProcess],
                                          http: httpx2.Client) -> None:
    gateway = gateways["static"]
    session = open_session(gateway, STATIC_TOKEN, http)

    wrong_id, wrong = tools_as(session, "not-a-known-token")
    bob_id, bob = tools_as(session, STATIC_OTHER_TOKEN)
    _, missing = tools_as(session, None)

    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == (
        'Bearer error="invalid_token", error_description="unknown token"')
    assert wrong.json()["id"] == wrong_id
    assert_not_found(bob, bob_id)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_owner_continues(session, STATIC_TOKEN)


def test_anonymous_gateway_refuses_a_bearer_token(gateways: dict[str, ManagedProcess],
                                                  providers: list[IdentityProvider],
                                                  http: httpx2.Client) -> None:
    gateway = gateways["anonymous"]

    refused = http.post(gateway.url, json=initialize_body(3),
                        headers={**BASE_HEADERS, **bearer(providers[0].mint("alice"))})
    session = RawSession.open(http, gateway.url)

    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert error_of(refused)["code"] == INVALID_REQUEST
    assert "notes_add_note" in session.tool_names()


# --------------------------------------------------------------------------- two replicas


@pytest.fixture
def replicas(notes: dict[str, ManagedProcess], providers: list[IdentityProvider],
             redis_server: RedisServer, tmp_path: Path
             ) -> Iterator[tuple[ManagedProcess, ManagedProcess]]:
    """Two oidc replicas on one Redis, trusting both identity providers."""
    session = {"store": redis_server.url, "key_prefix": f"auth:{uuid.uuid4().hex[:12]}:"}
    configs = {name: gateway_config(notes, session=session, auth=oidc_auth(*providers),
                                    server={"replica_id": name})
               for name in ("replica-1", "replica-2")}
    with running_gateways(configs, tmp_path) as started:
        yield started["replica-1"], started["replica-2"]


@pytest.mark.redis
def test_hijacks_on_the_other_replica_are_404_and_the_owner_continues_on_both(
        replicas: tuple[ManagedProcess, ManagedProcess], providers: list[IdentityProvider],
        http: httpx2.Client) -> None:
    first, second = replicas
    idp_a, idp_b = providers
    alice = idp_a.mint("alice")
    session = open_session(first, alice, http)
    hijackers = {
        "another subject": idp_a.mint("bob"),
        "same subject, another issuer": idp_b.mint("alice"),
    }

    # Replica 2 has never seen the session: it restores it from Redis for the check.
    for token in hijackers.values():
        request_id, response = tools_as(session, token, url=second.url)
        assert_not_found(response, request_id)
    _, missing = tools_as(session, None, url=second.url)
    assert_challenged(missing, second)

    assert_owner_continues(session, alice, url=second.url)

    # Now replica 2 holds a live copy; still nobody else gets in, by any verb.
    for token in hijackers.values():
        request_id, response = tools_as(session, token, url=second.url)
        assert_not_found(response, request_id)
        stream = http.get(second.url, headers=session.headers(
            {**bearer(token), "Accept": EVENT_STREAM}))
        assert_not_found(stream, None)
        deleted = http.delete(second.url, headers=session.headers(bearer(token)))
        assert_not_found(deleted, None)

    assert_owner_continues(session, alice, url=second.url)
    assert_owner_continues(session, idp_a.mint("alice"), url=first.url)


@pytest.mark.redis
def test_a_session_of_the_second_issuer_is_not_the_first_issuers_same_subject(
        replicas: tuple[ManagedProcess, ManagedProcess], providers: list[IdentityProvider],
        http: httpx2.Client) -> None:
    first, second = replicas
    idp_a, idp_b = providers
    alice_b = idp_b.mint("alice")
    session = open_session(second, alice_b, http)

    request_id, response = tools_as(session, idp_a.mint("alice"), url=first.url)

    assert_not_found(response, request_id)
    assert_owner_continues(session, alice_b, url=first.url)
    headers = {"MCP-Protocol-Version": PROTOCOL_VERSION, **bearer(alice_b)}
    assert http.delete(first.url, headers=session.headers(headers)).status_code == 200
