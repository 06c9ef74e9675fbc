"""JWT bearer tokens (``type: oidc``): what is accepted, what is refused and how.

Every token here is signed with a real key generated for the test, and the gateway fetches
the public keys over HTTP from a JWKS endpoint on loopback, as it would from an IdP.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from starlette.datastructures import Headers

from tests.auth.conftest import GATEWAY_HOST, bearer, no_credentials, oidc_config
from tests.support.identity_provider import AUDIENCE, IdentityProvider, b64json
from vmcp.auth.incoming import (
    Authenticator,
    JwksCache,
    JwtAuthenticator,
    ResourceLocation,
    UnusableIdentity,
    build_authenticator,
)
from vmcp.config import DEFAULT_ALGORITHMS, VmcpConfig
from vmcp.errors import (
    AuthenticationError,
    AuthenticationUnavailable,
    ConfigError,
    InvalidIdentity,
    MalformedCredentials,
)

pytestmark = pytest.mark.anyio

METADATA_URL = f"http://{GATEWAY_HOST}/.well-known/oauth-protected-resource/mcp"


def invalid_token(description: str) -> str:
    return (f'Bearer resource_metadata="{METADATA_URL}", error="invalid_token", '
            f'error_description="{description}"')


async def refusal(authenticator: Authenticator, headers: Headers) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as caught:
        await authenticator(headers)
    return caught.value


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def with_clock(idp: IdentityProvider, clock: Clock, *, extra: IdentityProvider | None = None
               ) -> JwtAuthenticator:
    """The authenticator ``build_authenticator`` makes by default, on a hand-moved clock."""
    caches = {provider.issuer: JwksCache(provider.issuer, url=provider.jwks_url, clock=clock,
                                         min_refresh_seconds=30, max_age_seconds=600)
              for provider in (idp, *([extra] if extra else []))}
    return JwtAuthenticator(caches, audience=[AUDIENCE], algorithms=DEFAULT_ALGORITHMS,
                            leeway_seconds=30, location=ResourceLocation(None, "/mcp"),
                            timeout_seconds=5)


# --------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("kind", ["RSA", "EC", "Ed25519"])
async def test_a_valid_token_is_its_issuer_and_subject(idp: IdentityProvider,
                                                       kind: str) -> None:
    kid = idp.kid(kind) if kind != "Ed25519" else idp.add_key("Ed25519")  # type: ignore[arg-type]
    token = idp.mint("alice", kid=kid)

    async with build_authenticator(oidc_config(idp)) as authenticate:
        principal = await authenticate(bearer(token))

    assert (principal.issuer, principal.subject, principal.token) == (idp.issuer, "alice", token)
    assert token not in repr(principal)


async def test_audience_may_be_any_of_several(idp: IdentityProvider) -> None:
    token = idp.mint("alice", aud=["someone-else", "second"])

    async with build_authenticator(
            oidc_config(idp, audience=[AUDIENCE, "second"])) as authenticate:
        principal = await authenticate(bearer(token))

    assert principal.subject == "alice"


async def test_clock_skew_within_the_leeway_is_tolerated(idp: IdentityProvider) -> None:
    token = idp.mint("alice", lifetime=-10)  # expired ten seconds ago

    async with build_authenticator(oidc_config(idp, leeway_seconds=30)) as authenticate:
        principal = await authenticate(bearer(token))

    assert principal.subject == "alice"


async def test_keys_can_come_from_a_file(idp: IdentityProvider, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(idp.jwks()), encoding="utf-8")
    config = oidc_config(idp, jwks_url=None, jwks_file=str(path))

    async with build_authenticator(config) as authenticate:
        principal = await authenticate(bearer(idp.mint("alice")))
        refused = await refusal(authenticate, bearer(idp.mint("alice", kid=idp.add_key())))

    assert principal.subject == "alice"
    assert str(refused) == "unknown signing key"
    assert idp.fetches == 0


async def test_a_trusted_extra_issuer_is_its_own_identity(
        idp: IdentityProvider, other_idp: IdentityProvider) -> None:
    config = oidc_config(idp, extra_issuers=[{"issuer": other_idp.issuer,
                                              "jwks_url": other_idp.jwks_url}])

    async with build_authenticator(config) as authenticate:
        first = await authenticate(bearer(idp.mint("alice")))
        second = await authenticate(bearer(other_idp.mint("alice")))
        metadata = authenticate.protected_resource_metadata(no_credentials())

    assert (first.issuer, first.subject) == (idp.issuer, "alice")
    assert (second.issuer, second.subject) == (other_idp.issuer, "alice")
    assert metadata is not None
    assert metadata["authorization_servers"] == [idp.issuer, other_idp.issuer]


# --------------------------------------------------------------------------- refused


async def test_expired_token(idp: IdentityProvider) -> None:
    async with build_authenticator(oidc_config(idp)) as authenticate:
        error = await refusal(authenticate, bearer(idp.mint("alice", lifetime=-120)))

    assert type(error) is AuthenticationError
    assert error.http_status == 401
    assert error.www_authenticate == invalid_token("token expired")


async def test_token_not_yet_valid(idp: IdentityProvider) -> None:
    async with build_authenticator(oidc_config(idp)) as authenticate:
        error = await refusal(authenticate, bearer(idp.mint("alice", nbf=2**31)))

    assert str(error) == "token not yet valid"


async def test_token_without_expiry(idp: IdentityProvider) -> None:
    async with build_authenticator(oidc_config(idp)) as authenticate:
        error = await refusal(authenticate, bearer(idp.mint("alice", exp=None)))

    assert str(error) == "token has no exp claim"


@pytest.mark.parametrize("audience", ["someone-else", None])
async def test_wrong_or_missing_audience(idp: IdentityProvider, audience: str | None) -> None:
    async with build_authenticator(oidc_config(idp)) as authenticate:
        error = await refusal(authenticate, bearer(idp.mint("alice", aud=audience)))

    assert error.http_status == 401
    expected = "token not meant for this resource (aud)" if audience else "token has no aud claim"
    assert error.www_authenticate == invalid_token(expected)


async def test_wrong_issuer_signed_with_a_trusted_key(idp: IdentityProvider) -> None:
    token = idp.mint("alice", iss="https://elsewhere.example")

    async with build_authenticator(oidc_config(idp)) as authenticate:
        error = await refusal(authenticate, bearer(token))

    assert error.www_authenticate == invalid_token("token from an untrusted issuer")


async def test_untrusted_issuer_with_its_own_keys(idp: IdentityProvider,
                                                  other_idp: IdentityProvider) -> None:
    async with build_authenticator(oidc_config(idp)) as authenticate:
        error = await refusal(authenticate, bearer(other_idp.mint("alice")))

    assert str(error) == "token from an untrusted issuer"
    assert other_idp.fetches == 0


async def test_a_trusted_issuer_name_with_another_issuers_key(
        idp: IdentityProvider, other_idp: IdentityProvider) -> None:
    """Both issuers are trusted, but a token claiming one is only checked with its keys."""
    forged = other_idp.mint("alice", iss=idp.issuer)
    config = oidc_config(idp, extra_issuers=[{"issuer": other_idp.issuer,
                                              "jwks_url": other_idp.jwks_url}])

    async with build_authenticator(config) as authenticate:
        error = await refusal(authenticate, bearer(forged))

    assert str(error) == "unknown signing key"


async def test_tampered_signature(idp: IdentityProvider) -> None:
    head, payload, signature = idp.mint("alice").split(".")
    flipped = ("A" if signature[10] != "A" else "B")
    tampered = f"{head}.{payload}.{signature[:10]}{flipped}{signature[11:]}"

    async with build_authenticator(oidc_config(idp)) as authenticate:
        error = await refusal(authenticate, bearer(tampered))

    assert error.www_authenticate == invalid_token("invalid signature")


async def test_tampered_claims_with_the_original_signature(idp: IdentityProvider) -> None:
    head, _, signature = idp.mint("mallory").split(".")
    forged = f"{head}.{b64json(idp.claims('alice'))}.{signature}"

    async with build_authenticator(oidc_config(idp)) as authenticate:
        error = await refusal(authenticate, bearer(forged))

    assert str(error) == "invalid signature"


async def test_alg_none(idp: IdentityProvider) -> None:
    async with build_authenticator(oidc_config(idp)) as authenticate:
        error = await refusal(authenticate, bearer(idp.unsigned("alice")))

    assert error.www_authenticate == invalid_token("signing algorithm not accepted")


async def test_hs256_signed_with_the_public_key_is_refused(idp: IdentityProvider) -> None:
    """Algorithm confusion: the public key used as an HMAC secret must not verify."""
    async with build_authenticator(oidc_config(idp)) as authenticate:
        error = await refusal(authenticate, bearer(idp.hmac_with_public_key("alice")))

    assert str(error) == "signing algorithm not accepted"


async def test_algorithm_not_configured_is_refused_even_with_a_good_key(
        idp: IdentityProvider) -> None:
    async with build_authenticator(oidc_config(idp, algorithms=["RS256"])) as authenticate:
        error = await refusal(authenticate, bearer(idp.mint("alice", kind="EC")))

    assert str(error) == "signing algorithm not accepted"


async def test_token_alg_must_fit_the_named_key(idp: IdentityProvider) -> None:
    """An ES256 token naming the RSA key's kid finds no key it could be verified with."""
    token = idp.mint("alice", kind="EC", header_kid=idp.kid("RSA"))

    async with build_authenticator(oidc_config(idp)) as authenticate:
        error = await refusal(authenticate, bearer(token))

    assert str(error) == "unknown signing key"


@pytest.mark.parametrize(("overrides", "description"), [
    ({"sub": None}, "token has no subject (sub)"),
    ({"sub": ""}, "token has no subject (sub)"),
    ({"sub": 42}, "invalid token"),
    ({"sub": "al\x00ice"}, "token subject (sub) contains control characters"),
    ({"iss": None}, "token has no issuer (iss)"),
    ({"iss": ""}, "token has no issuer (iss)"),
])
async def test_unusable_identity(idp: IdentityProvider, overrides: dict[str, object],
                                 description: str) -> None:
    token = idp.mint(**{"subject": "alice", **overrides})  # type: ignore[arg-type]

    async with build_authenticator(oidc_config(idp)) as authenticate:
        error = await refusal(authenticate, bearer(token))

    assert str(error) == description
    assert error.http_status == 401
    if description != "invalid token":  # PyJWT refuses a non-string sub itself
        assert isinstance(error, UnusableIdentity)
        assert isinstance(error, InvalidIdentity)
    assert error.www_authenticate == invalid_token(description)


@pytest.mark.parametrize("token", ["not-a-jwt", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30.AAAA"])
async def test_garbage(idp: IdentityProvider, token: str) -> None:
    async with build_authenticator(oidc_config(idp)) as authenticate:
        error = await refusal(authenticate, bearer(token))

    assert error.http_status == 401
    assert str(error) in ("malformed token", "token has no issuer (iss)")


# --------------------------------------------------------------------------- the header


async def test_missing_token_is_a_challenge_without_an_error_code(idp: IdentityProvider) -> None:
    async with build_authenticator(oidc_config(idp)) as authenticate:
        missing = await refusal(authenticate, no_credentials())
        basic = await refusal(authenticate, no_credentials(authorization="Basic YTpi"))

    for error in (missing, basic):
        assert type(error) is AuthenticationError
        assert error.http_status == 401
        assert error.www_authenticate == f'Bearer resource_metadata="{METADATA_URL}"'
        assert error.response_headers() == [("www-authenticate", error.www_authenticate)]


@pytest.mark.parametrize("raw", [
    [(b"authorization", b"Bearer "), (b"host", GATEWAY_HOST.encode())],
    [(b"authorization", b"Bearer a b"), (b"host", GATEWAY_HOST.encode())],
    [(b"authorization", b'Bearer "quoted"'), (b"host", GATEWAY_HOST.encode())],
    [(b"authorization", b"Bearer x"), (b"authorization", b"Bearer y")],
    [(b"authorization", b"Bearer " + b"a" * 20000)],
])
async def test_malformed_authorization_is_invalid_request(
        idp: IdentityProvider, raw: list[tuple[bytes, bytes]]) -> None:
    async with build_authenticator(oidc_config(idp)) as authenticate:
        error = await refusal(authenticate, Headers(raw=raw))

    assert isinstance(error, MalformedCredentials)
    assert error.http_status == 400
    assert error.www_authenticate is not None
    assert 'error="invalid_request"' in error.www_authenticate


async def test_resource_metadata_follows_the_request_or_the_configuration(
        idp: IdentityProvider) -> None:
    derived = build_authenticator(oidc_config(idp))
    configured = build_authenticator(
        oidc_config(idp, resource_url="https://mcp.example.com/tools/mcp"))

    async with derived, configured:
        behind_proxy = await refusal(derived, no_credentials(**{"x-forwarded-proto": "https"}))
        odd_host = await refusal(derived, Headers({"host": 'evil" x'}))
        fixed = await refusal(configured, no_credentials())
        document = configured.protected_resource_metadata(no_credentials())
        derived_document = derived.protected_resource_metadata(no_credentials())

    assert behind_proxy.www_authenticate == (
        f'Bearer resource_metadata="https://{GATEWAY_HOST}'
        '/.well-known/oauth-protected-resource/mcp"')
    assert odd_host.www_authenticate == "Bearer"
    assert fixed.www_authenticate == (
        'Bearer resource_metadata="https://mcp.example.com'
        '/.well-known/oauth-protected-resource/tools/mcp"')
    assert document == {"resource": "https://mcp.example.com/tools/mcp",
                        "authorization_servers": [idp.issuer],
                        "bearer_methods_supported": ["header"]}
    assert derived_document is not None
    assert derived_document["resource"] == f"http://{GATEWAY_HOST}/mcp"


# --------------------------------------------------------------------------- key set cache


async def test_keys_are_fetched_once_and_reused(idp: IdentityProvider) -> None:
    async with build_authenticator(oidc_config(idp)) as authenticate:
        for subject in ("alice", "bob", "carol"):
            await authenticate(bearer(idp.mint(subject, kind="EC")))
            await authenticate(bearer(idp.mint(subject, kind="RSA")))

    assert idp.fetches == 1


async def test_unknown_kid_refreshes_once_then_is_refused(idp: IdentityProvider) -> None:
    clock = Clock()
    async with with_clock(idp, clock) as authenticate:
        await authenticate(bearer(idp.mint("alice")))
        clock.advance(31)
        token = idp.mint("alice", kid=idp.add_key(published=False))

        first = await refusal(authenticate, bearer(token))
        after_first = idp.fetches
        again = await refusal(authenticate, bearer(token))

    assert after_first == 2  # the warm-up, then one refresh for the unknown kid
    assert idp.fetches == 2  # the repeat is within the refresh interval
    for error in (first, again):
        assert error.http_status == 401
        assert error.www_authenticate == invalid_token("unknown signing key")


async def test_a_flood_of_bogus_kids_costs_the_idp_one_fetch_per_interval(
        idp: IdentityProvider) -> None:
    clock = Clock()
    statuses: list[int] = []
    accepted: list[str] = []

    async def attempt(authenticate: JwtAuthenticator, index: int) -> None:
        token = idp.mint("mallory", header_kid=f"bogus-{index}")
        try:
            await authenticate(bearer(token))
        except AuthenticationError as exc:
            statuses.append(exc.http_status)

    async def legitimate(authenticate: JwtAuthenticator) -> None:
        principal = await authenticate(bearer(idp.mint("alice")))
        accepted.append(principal.subject or "")

    async with with_clock(idp, clock) as authenticate:
        await legitimate(authenticate)
        for _ in range(3):
            clock.advance(31)
            async with anyio.create_task_group() as tg:
                for index in range(150):
                    tg.start_soon(attempt, authenticate, index)
                tg.start_soon(legitimate, authenticate)

    assert idp.fetches == 1 + 3  # the warm-up, then one per interval for 450 bogus kids
    assert statuses == [401] * 450
    assert accepted == ["alice"] * 4


async def test_a_new_key_is_picked_up_after_the_interval(idp: IdentityProvider) -> None:
    clock = Clock()
    async with with_clock(idp, clock) as authenticate:
        await authenticate(bearer(idp.mint("alice")))
        rotated = idp.add_key("EC")
        too_soon = await refusal(authenticate, bearer(idp.mint("alice", kid=rotated)))
        clock.advance(31)
        principal = await authenticate(bearer(idp.mint("alice", kid=rotated)))

    assert str(too_soon) == "unknown signing key"
    assert principal.subject == "alice"
    assert idp.fetches == 2


async def test_a_withdrawn_key_stops_working_once_the_set_is_old(idp: IdentityProvider) -> None:
    clock = Clock()
    kid = idp.kid("RSA")
    async with with_clock(idp, clock) as authenticate:
        await authenticate(bearer(idp.mint("alice", kid=kid)))
        idp.withdraw(kid)
        clock.advance(60)
        still = await authenticate(bearer(idp.mint("alice", kid=kid)))
        clock.advance(600)
        error = await refusal(authenticate, bearer(idp.mint("alice", kid=kid)))

    assert still.subject == "alice"
    assert str(error) == "unknown signing key"


async def test_idp_down_at_start_is_503_then_recovers(idp: IdentityProvider) -> None:
    clock = Clock()
    idp.fail_with = 500
    async with with_clock(idp, clock) as authenticate:
        error = await refusal(authenticate, bearer(idp.mint("alice")))
        idp.fail_with = None
        still = await refusal(authenticate, bearer(idp.mint("alice")))
        clock.advance(31)
        principal = await authenticate(bearer(idp.mint("alice")))

    for refused in (error, still):
        assert isinstance(refused, AuthenticationUnavailable)
        assert refused.http_status == 503
        assert ("retry-after", "5") in refused.response_headers()
    assert principal.subject == "alice"
    assert idp.fetches == 2


async def test_keys_already_held_survive_a_failed_refresh(idp: IdentityProvider) -> None:
    clock = Clock()
    async with with_clock(idp, clock) as authenticate:
        await authenticate(bearer(idp.mint("alice")))
        idp.fail_with = 503
        clock.advance(700)
        principal = await authenticate(bearer(idp.mint("alice")))
        unknown = await refusal(authenticate, bearer(idp.mint("alice", header_kid="new")))

    assert principal.subject == "alice"
    assert idp.fetches == 2
    assert isinstance(unknown, AuthenticationUnavailable)


# --------------------------------------------------------------------------- start-up


def test_an_unreadable_jwks_file_is_a_configuration_error(idp: IdentityProvider,
                                                          tmp_path: Path) -> None:
    (tmp_path / "empty.json").write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}',
                                         encoding="utf-8")
    config = VmcpConfig.model_validate({"auth": {"incoming": {
        "type": "oidc", "issuer": idp.issuer, "audience": AUDIENCE,
        "jwks_file": str(tmp_path / "missing.json"),
        "extra_issuers": [{"issuer": "https://b.example",
                           "jwks_file": str(tmp_path / "empty.json")}]}}})

    with pytest.raises(ConfigError) as caught:
        build_authenticator(config)

    problems = str(caught.value).splitlines()
    assert len(problems) == 2
    assert problems[0].startswith("auth.incoming.jwks_file: cannot read a JWK Set from ")
    assert problems[1] == (f"auth.incoming.extra_issuers[0].jwks_file: {tmp_path / 'empty.json'}"
                           " has no usable signing key")
