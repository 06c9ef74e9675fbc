"""``type: static`` (fixed tokens known by their hash) and ``type: anonymous`` (development)."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import pytest

from tests.auth.conftest import bearer, no_credentials
from vmcp.auth.incoming import (
    AnonymousAuthenticator,
    StaticTokenAuthenticator,
    build_authenticator,
)
from vmcp.config import VmcpConfig
from vmcp.errors import AuthenticationError, ConfigError
from vmcp.identity import ANONYMOUS

pytestmark = pytest.mark.anyio

ALICE_TOKEN = "alice-token-0123456789"
BOB_TOKEN = "bob-token-9876543210"


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def static_config(*tokens: dict[str, Any]) -> VmcpConfig:
    return VmcpConfig.model_validate({"auth": {"incoming": {"type": "static",
                                                            "tokens": list(tokens)}}})


TWO_TOKENS = static_config(
    {"token_sha256": sha256(ALICE_TOKEN).upper(), "issuer": "static", "subject": "alice"},
    {"token_env": "BOB_TOKEN", "issuer": "static", "subject": "bob"},
)


# --------------------------------------------------------------------------- static


async def test_each_static_token_is_its_identity() -> None:
    authenticate = build_authenticator(TWO_TOKENS, environ={"BOB_TOKEN": BOB_TOKEN})

    async with authenticate:
        alice = await authenticate(bearer(ALICE_TOKEN))
        bob = await authenticate(bearer(BOB_TOKEN))

    assert isinstance(authenticate, StaticTokenAuthenticator)
    assert (alice.issuer, alice.subject, alice.token) == ("static", "alice", ALICE_TOKEN)
    assert (bob.issuer, bob.subject, bob.token) == ("static", "bob", BOB_TOKEN)


@pytest.mark.parametrize("token", ["wrong-token", ALICE_TOKEN + "x", ALICE_TOKEN[:-1],
                                   sha256(ALICE_TOKEN)])
async def test_any_other_token_is_refused(token: str) -> None:
    authenticate = build_authenticator(TWO_TOKENS, environ={"BOB_TOKEN": BOB_TOKEN})

    with pytest.raises(AuthenticationError) as caught:
        await authenticate(bearer(token))

    assert caught.value.http_status == 401
    # No authorization server to discover: the challenge points at no metadata.
    assert caught.value.www_authenticate == (
        'Bearer error="invalid_token", error_description="unknown token"')
    assert authenticate.protected_resource_metadata(no_credentials()) is None


async def test_static_without_a_token_is_a_bare_challenge() -> None:
    authenticate = build_authenticator(TWO_TOKENS, environ={"BOB_TOKEN": BOB_TOKEN})

    with pytest.raises(AuthenticationError) as caught:
        await authenticate(no_credentials())

    assert caught.value.www_authenticate == "Bearer"


def test_the_plain_token_is_not_kept() -> None:
    authenticate = build_authenticator(TWO_TOKENS, environ={"BOB_TOKEN": BOB_TOKEN})

    kept = repr(vars(authenticate))
    assert BOB_TOKEN not in kept
    assert ALICE_TOKEN not in kept


@pytest.mark.parametrize("environ", [{}, {"BOB_TOKEN": ""}, {"BOB_TOKEN": "has space"}])
def test_a_token_env_that_is_not_set_is_a_configuration_error(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        build_authenticator(TWO_TOKENS, environ=environ)

    assert str(caught.value) == (
        "auth.incoming.tokens[1].token_env: environment variable BOB_TOKEN is unset, "
        "empty or not a valid bearer token")


def test_an_env_token_equal_to_a_hashed_one_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError) as caught:
        build_authenticator(TWO_TOKENS, environ={"BOB_TOKEN": ALICE_TOKEN})

    assert str(caught.value) == "auth.incoming.tokens: two entries have the same token"


# --------------------------------------------------------------------------- anonymous


async def test_anonymous_is_the_default_and_everyone_is_anonymous(
        caplog: pytest.LogCaptureFixture) -> None:
    authenticate = build_authenticator(VmcpConfig())

    with caplog.at_level(logging.WARNING, logger="vmcp.auth.incoming"):
        async with authenticate:
            principal = await authenticate(no_credentials())

    assert isinstance(authenticate, AnonymousAuthenticator)
    assert principal is ANONYMOUS
    assert "anonymous access: development only" in caplog.text
    assert authenticate.protected_resource_metadata(no_credentials()) is None


@pytest.mark.parametrize("authorization", [f"Bearer {ALICE_TOKEN}", "Basic YTpi", "Bearer"])
async def test_anonymous_refuses_credentials_instead_of_dropping_them(
        authorization: str) -> None:
    authenticate = build_authenticator(VmcpConfig())

    with pytest.raises(AuthenticationError) as caught:
        await authenticate(no_credentials(authorization=authorization))

    assert caught.value.http_status == 401
    assert caught.value.www_authenticate == (
        'Bearer error="invalid_token", '
        'error_description="this gateway accepts no credentials (anonymous access)"')
