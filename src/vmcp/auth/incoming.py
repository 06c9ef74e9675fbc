"""Incoming authentication: the ``Principal`` behind each request, from its headers.

:func:`build_authenticator` turns ``auth.incoming`` into one of three authenticators, each
an ``Authenticate`` callable (``headers -> Principal``) the MCP endpoint calls per request:

* :class:`AnonymousAuthenticator` - development only. Every caller is ``ANONYMOUS``, and a
  request that carries an ``Authorization`` header is *refused* (401) rather than served
  anonymously: credentials sent to a gateway that ignores them mean a misconfigured
  gateway or a misdirected client, and dropping them silently would hide either.
* :class:`JwtAuthenticator` (``type: oidc``) - a JWT bearer token signed with a public key
  of a trusted issuer, for the configured audience, within its validity period.
* :class:`StaticTokenAuthenticator` (``type: static``) - fixed bearer tokens, known only
  by their SHA-256, each standing for one configured identity.

Refusals are :class:`~vmcp.errors.AuthenticationError` carrying the RFC 6750 challenge:
``Bearer resource_metadata="...", error="invalid_token", error_description="..."``, with no
``error`` when the token is simply missing (RFC 6750 section 3.1) and
``resource_metadata`` (RFC 9728) only when there is protected-resource metadata to point
at, i.e. for ``oidc``. A token whose issuer or subject cannot form a session binding is
refused with :class:`UnusableIdentity`, which is also an ``InvalidIdentity``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeAlias
from urllib.parse import urlsplit

import anyio
import httpx2
import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from starlette.datastructures import Headers

from vmcp.config import AuthConfig, VmcpConfig
from vmcp.errors import (
    AuthenticationError,
    AuthenticationUnavailable,
    ConfigError,
    MalformedCredentials,
)
from vmcp.identity import ANONYMOUS, InvalidIdentity, Principal

__all__ = [
    "WELL_KNOWN_RESOURCE_METADATA",
    "AnonymousAuthenticator",
    "Authenticator",
    "JwksCache",
    "JwtAuthenticator",
    "ResourceLocation",
    "SigningKey",
    "StaticTokenAuthenticator",
    "UnusableIdentity",
    "build_authenticator",
    "challenge",
    "metadata_paths",
    "parse_jwks",
]

logger = logging.getLogger(__name__)

WELL_KNOWN_RESOURCE_METADATA = "/.well-known/oauth-protected-resource"

MAX_TOKEN_CHARS = 16 * 1024
"""Longer bearer tokens are refused before any parsing: no real JWT is this large."""

MAX_JWKS_BYTES = 1024 * 1024
"""A key set larger than this is not read to the end (an IdP publishes a few keys)."""

MIN_RSA_BITS = 2048

# RFC 6750 b64token: what a bearer token may consist of.
_B64TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")
# Characters RFC 6750 allows inside error_description.
_DESCRIPTION_CHARS = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1",
              "ES256K": "secp256k1"}

PublicKey: TypeAlias = RSAPublicKey | EllipticCurvePublicKey | Ed25519PublicKey | Ed448PublicKey


class UnusableIdentity(InvalidIdentity, AuthenticationError):
    """A verified credential whose issuer or subject is missing, empty or not bindable.

    An ``InvalidIdentity`` (nothing safe to bind a session to) answered like any other
    refused token: 401 with the ``invalid_token`` challenge.
    """


class _Refusal(Exception):
    """Why a token was refused, before the challenge for this request is built."""

    def __init__(self, description: str, *, kind: type[AuthenticationError] = AuthenticationError
                 ) -> None:
        super().__init__(description)
        self.description = description
        self.kind = kind


# --------------------------------------------------------------------------- resource


@dataclass(frozen=True)
class ResourceLocation:
    """The public URL of the MCP endpoint, and of its protected-resource metadata.

    ``configured`` (``auth.resource_url``) wins; otherwise the URL is derived from the
    request: ``X-Forwarded-Proto`` (http or https, default http: the gateway itself only
    speaks plain HTTP) and ``Host``, then ``path`` (``server.path``). Only the caller who
    sent those headers sees the result, so a forged value misleads nobody else; behind a
    proxy that rewrites paths, configure ``resource_url``.
    """

    configured: str | None
    path: str

    def resource(self, headers: Headers) -> str | None:
        """The resource identifier, or None if the request's ``Host`` is unusable."""
        if self.configured is not None:
            return self.configured
        host = headers.get("host", "")
        if not _HOST.match(host):
            return None
        proto = headers.get("x-forwarded-proto", "").split(",", 1)[0].strip().lower()
        scheme = proto if proto in ("http", "https") else "http"
        return f"{scheme}://{host}{self.path}"

    def metadata_url(self, headers: Headers) -> str | None:
        """Where the resource's metadata is: RFC 9728 section 3.1, the well-known path
        inserted between the host and the resource's path."""
        resource = self.resource(headers)
        if resource is None:
            return None
        parts = urlsplit(resource)
        return (f"{parts.scheme}://{parts.netloc}{WELL_KNOWN_RESOURCE_METADATA}"
                f"{parts.path.rstrip('/')}")


def metadata_paths(config: VmcpConfig) -> tuple[str, ...]:
    """The paths the protected-resource metadata is served on.

    The bare well-known path, and the RFC 9728 one for the endpoint's path (and for the
    path of ``auth.resource_url`` if that differs), so clients find it either way.
    """
    paths = [WELL_KNOWN_RESOURCE_METADATA,
             WELL_KNOWN_RESOURCE_METADATA + config.server.path.rstrip("/")]
    if config.auth.resource_url is not None:
        public = urlsplit(config.auth.resource_url).path.rstrip("/")
        paths.append(WELL_KNOWN_RESOURCE_METADATA + public)
    return tuple(dict.fromkeys(paths))


def challenge(resource_metadata: str | None, error: str | None = None,
              description: str | None = None) -> str:
    """An RFC 6750 ``WWW-Authenticate`` value for the Bearer scheme."""
    params = []
    if resource_metadata is not None:
        params.append(f'resource_metadata="{resource_metadata}"')
    if error is not None:
        params.append(f'error="{error}"')
        if description:
            text = "".join(c if c in _DESCRIPTION_CHARS else "'" if c == '"' else " "
                           for c in description)
            params.append(f'error_description="{text}"')
    return "Bearer " + ", ".join(params) if params else "Bearer"


# --------------------------------------------------------------------------- authenticators


class Authenticator:
    """Turns a request's headers into its ``Principal``; one per process.

    Entered (``async with``) for the process's lifetime, which opens whatever it needs
    (the HTTP client that fetches signing keys) and logs how callers are authenticated.
    """

    async def __call__(self, headers: Headers) -> Principal:
        raise NotImplementedError

    def protected_resource_metadata(self, headers: Headers) -> dict[str, Any] | None:
        """The RFC 9728 metadata document, or None when there is no authorization server
        for clients to discover (anonymous and static access)."""
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None


class AnonymousAuthenticator(Authenticator):
    """Everyone is ``ANONYMOUS``; any ``Authorization`` header is refused with 401."""

    async def __aenter__(self) -> Self:
        logger.warning("anonymous access: development only; every caller shares one "
                       "identity (set auth.incoming.type to oidc or static)")
        return self

    async def __call__(self, headers: Headers) -> Principal:
        if "authorization" in headers:
            description = "this gateway accepts no credentials (anonymous access)"
            raise AuthenticationError(
                description, www_authenticate=challenge(None, "invalid_token", description))
        return ANONYMOUS


class _BearerAuthenticator(Authenticator):
    """Takes the one Bearer token from ``Authorization`` and has a subclass verify it."""

    def __init__(self, location: ResourceLocation, *, advertise_metadata: bool) -> None:
        self._location = location
        self._advertise = advertise_metadata

    async def __call__(self, headers: Headers) -> Principal:
        metadata = self._location.metadata_url(headers) if self._advertise else None
        token = _bearer_token(headers, metadata)
        try:
            return await self.verify(token)
        except _Refusal as refusal:
            raise refusal.kind(refusal.description, www_authenticate=challenge(
                metadata, "invalid_token", refusal.description)) from None

    async def verify(self, token: str) -> Principal:
        """The principal ``token`` stands for; raises ``_Refusal`` otherwise."""
        raise NotImplementedError


def _bearer_token(headers: Headers, metadata: str | None) -> str:
    """The request's bearer token.

    No ``Authorization`` header, or one with another scheme, is "no credentials" (401
    without an error code, RFC 6750 section 3.1); several headers or a malformed token
    are ``invalid_request`` (400). Tokens in the query string or body are not looked for.
    """
    values = headers.getlist("authorization")
    if not values:
        raise AuthenticationError("Bearer token required", www_authenticate=challenge(metadata))
    if len(values) > 1:
        raise _malformed("several Authorization headers", metadata)
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthenticationError("Bearer token required", www_authenticate=challenge(metadata))
    token = token.strip()
    if not token or len(token) > MAX_TOKEN_CHARS or not _B64TOKEN.match(token):
        raise _malformed("malformed Bearer token", metadata)
    return token


def _malformed(description: str, metadata: str | None) -> MalformedCredentials:
    return MalformedCredentials(
        description, www_authenticate=challenge(metadata, "invalid_request", description))


def _check_identity(issuer: Any, subject: Any) -> tuple[str, str]:
    """``(issuer, subject)`` if both can form a session binding; raises ``_Refusal``."""
    for what, value in (("issuer (iss)", issuer), ("subject (sub)", subject)):
        if not isinstance(value, str) or not value:
            raise _Refusal(f"token has no {what}", kind=UnusableIdentity)
        if any(ord(c) < 0x20 or c == "\x7f" for c in value):
            raise _Refusal(f"token {what} contains control characters", kind=UnusableIdentity)
    return issuer, subject


class StaticTokenAuthenticator(_BearerAuthenticator):
    """Fixed bearer tokens, each mapped to an identity; only their SHA-256 is kept.

    The presented token is hashed and compared with every known hash in constant time,
    without stopping at a match, so timing tells nothing about which entry (if any)
    matched or how much of it.
    """

    def __init__(self, entries: Iterable[tuple[bytes, str, str]],
                 location: ResourceLocation) -> None:
        super().__init__(location, advertise_metadata=False)
        self._entries = tuple(entries)

    async def verify(self, token: str) -> Principal:
        digest = hashlib.sha256(token.encode()).digest()
        found: tuple[str, str] | None = None
        for known, issuer, subject in self._entries:
            if hmac.compare_digest(known, digest) and found is None:
                found = (issuer, subject)
        if found is None:
            raise _Refusal("unknown token")
        issuer, subject = _check_identity(*found)
        return Principal(issuer=issuer, subject=subject, token=token)


class JwtAuthenticator(_BearerAuthenticator):
    """JWT bearer tokens signed with a public key of a trusted issuer.

    A token is accepted when all of these hold: its ``alg`` is one of ``algorithms``
    (never ``none``, never symmetric: configuration refuses both); its ``iss`` names a
    trusted issuer, whose own keys alone are tried; a key of that issuer with the token's
    ``kid`` and of the type ``alg`` requires verifies the signature; ``aud`` names one of
    ``audience``; ``exp`` is present and, like ``nbf`` and ``iat``, within ``leeway``
    seconds of now; ``sub`` is a non-empty string. The principal is ``(iss, sub)``.
    """

    def __init__(self, issuers: Mapping[str, JwksCache], *, audience: Sequence[str],
                 algorithms: Sequence[str], leeway_seconds: float,
                 location: ResourceLocation, timeout_seconds: float) -> None:
        super().__init__(location, advertise_metadata=True)
        self._issuers = dict(issuers)
        self._audience = list(audience)
        self._algorithms = tuple(algorithms)
        self._leeway = leeway_seconds
        self._timeout = timeout_seconds
        self._http: httpx2.AsyncClient | None = None

    @property
    def issuers(self) -> tuple[str, ...]:
        return tuple(self._issuers)

    async def __aenter__(self) -> Self:
        self._http = httpx2.AsyncClient(timeout=self._timeout, follow_redirects=False)
        for cache in self._issuers.values():
            cache.use_client(self._http)
        logger.info("incoming auth: JWT from %s", ", ".join(self._issuers))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def protected_resource_metadata(self, headers: Headers) -> dict[str, Any] | None:
        resource = self._location.resource(headers)
        if resource is None:
            return None
        return {"resource": resource, "authorization_servers": list(self._issuers),
                "bearer_methods_supported": ["header"]}

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            raise _Refusal("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise _Refusal("signing algorithm not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _Refusal("malformed key id")
        claimed_issuer = unverified.get("iss")
        if not isinstance(claimed_issuer, str) or not claimed_issuer:
            raise _Refusal("token has no issuer (iss)", kind=UnusableIdentity)
        cache = self._issuers.get(claimed_issuer)
        if cache is None:
            raise _Refusal("token from an untrusted issuer")
        keys = [key for key in await cache.keys_for(kid) if key.fits(alg)]
        if not keys:
            raise _Refusal("unknown signing key")
        claims = self._decode(token, keys, alg, claimed_issuer)
        issuer, subject = _check_identity(claims.get("iss"), claims.get("sub"))
        return Principal(issuer=issuer, subject=subject, token=token, claims=claims)

    def _decode(self, token: str, keys: Sequence[SigningKey], alg: str,
                issuer: str) -> dict[str, Any]:
        for key in keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token, key.key, algorithms=[alg], audience=self._audience, issuer=issuer,
                    leeway=self._leeway, options={"require": ["exp"]})
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                raise _Refusal("token expired") from None
            except jwt.ImmatureSignatureError:
                raise _Refusal("token not yet valid") from None
            except jwt.InvalidAudienceError:
                raise _Refusal("token not meant for this resource (aud)") from None
            except jwt.InvalidIssuerError:
                raise _Refusal("token from an untrusted issuer") from None
            except jwt.MissingRequiredClaimError as exc:
                if exc.claim == "iss":
                    raise _Refusal("token has no issuer (iss)", kind=UnusableIdentity) from None
                raise _Refusal(f"token has no {exc.claim} claim") from None
            except jwt.InvalidTokenError:
                raise _Refusal("invalid token") from None
            return claims
        raise _Refusal("invalid signature")


# --------------------------------------------------------------------------- signing keys


@dataclass(frozen=True)
class SigningKey:
    """One public key of an issuer's key set."""

    kid: str | None
    key: PublicKey
    alg: str | None = None

    def fits(self, alg: str) -> bool:
        """Whether a token signed with ``alg`` may be verified with this key.

        The key's own ``alg``, if it names one, must match; otherwise the key type must
        be the one ``alg`` is defined for (and for ECDSA, the curve).
        """
        if self.alg is not None and self.alg != alg:
            return False
        if alg.startswith(("RS", "PS")):
            return isinstance(self.key, RSAPublicKey)
        if alg == "EdDSA":
            return isinstance(self.key, Ed25519PublicKey | Ed448PublicKey)
        curve = _EC_CURVES.get(alg)
        return isinstance(self.key, EllipticCurvePublicKey) and self.key.curve.name == curve


def parse_jwks(document: Any, source: str) -> list[SigningKey]:
    """The usable signing keys of a JWK Set (RFC 7517).

    Skipped, with a log line: symmetric (``oct``) keys, keys for encryption (``use`` other
    than ``sig``, ``key_ops`` without ``verify``), RSA keys under 2048 bits and entries that
    do not parse. Private key material, if a set carries any, is reduced to the public key.
    Raises ``ValueError`` if ``document`` is not a key set at all.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set: expected an object with a 'keys' list")
    keys: list[SigningKey] = []
    for index, entry in enumerate(document["keys"]):
        problem = _unusable(entry)
        if problem is None:
            try:
                key = _public_key(entry)
            except (jwt.InvalidKeyError, ValueError, TypeError, KeyError) as exc:
                problem = f"does not parse: {exc}"
            else:
                if isinstance(key, RSAPublicKey) and key.key_size < MIN_RSA_BITS:
                    problem = f"RSA key of {key.key_size} bits (at least {MIN_RSA_BITS})"
                else:
                    kid, alg = entry.get("kid"), entry.get("alg")
                    keys.append(SigningKey(kid if isinstance(kid, str) else None, key,
                                           alg if isinstance(alg, str) else None))
        if problem is not None:
            logger.warning("%s: key %d skipped: %s", source, index, problem)
    return keys


def _unusable(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return "not an object"
    if entry.get("kty") not in ("RSA", "EC", "OKP"):
        return f"key type {entry.get('kty')!r} is not a public-key type"
    if entry.get("use", "sig") != "sig":
        return f"use {entry.get('use')!r} is not 'sig'"
    ops = entry.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return "key_ops does not include 'verify'"
    return None


def _public_key(entry: dict[str, Any]) -> PublicKey:
    kty = entry["kty"]
    parsed: Any
    if kty == "RSA":
        parsed = RSAAlgorithm.from_jwk(entry)
    elif kty == "EC":
        parsed = ECAlgorithm.from_jwk(entry)
    else:
        parsed = OKPAlgorithm.from_jwk(entry)
    public = parsed.public_key() if hasattr(parsed, "public_key") else parsed
    if not isinstance(public, RSAPublicKey | EllipticCurvePublicKey | Ed25519PublicKey
                      | Ed448PublicKey):
        raise ValueError(f"unsupported key {type(public).__name__}")
    return public


class _FetchError(Exception):
    """The key set could not be fetched (status, size); logged, never shown to callers."""


class JwksCache:
    """The signing keys of one issuer: from a file once, or fetched from its JWKS URL.

    Fetched keys are refetched when a token names a key id the set lacks (keys rotate)
    and when the set is older than ``max_age_seconds`` (a withdrawn key stops being
    trusted). Every fetch, whatever prompted it, is at least ``min_refresh_seconds`` after
    the previous attempt and only one runs at a time, so a flood of tokens with made-up
    key ids costs the identity provider one request per interval; the price is that a
    real new key may wait up to that interval during such a flood.

    When a fetch fails the keys already held stay in use. A key id that cannot be found
    while the last fetch failed is :class:`~vmcp.errors.AuthenticationUnavailable` (503):
    the token may well be good.
    """

    def __init__(self, issuer: str, *, url: str | None = None,
                 keys: Sequence[SigningKey] = (), min_refresh_seconds: float = 30.0,
                 max_age_seconds: float = 600.0, timeout_seconds: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.issuer = issuer
        self._url = url
        self._keys = list(keys)
        self._min_refresh = min_refresh_seconds
        self._max_age = max_age_seconds
        self._timeout = timeout_seconds
        self._clock = clock
        self._http: httpx2.AsyncClient | None = None
        self._lock = anyio.Lock()
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._failing = False

    def use_client(self, http: httpx2.AsyncClient) -> None:
        """The HTTP client to fetch with (owned by the authenticator)."""
        self._http = http

    async def keys_for(self, kid: str | None) -> list[SigningKey]:
        """The keys a token with key id ``kid`` may be verified with (possibly none).

        Without a ``kid`` only a set of exactly one key qualifies: guessing among several
        would turn every key into a candidate for every token.
        """
        if self._url is not None:
            stale = self._fetched_at is None or self._clock() - self._fetched_at >= self._max_age
            # A stale set is refreshed in one request while the others keep using it.
            if stale and not (self._keys and self._lock.locked()):
                await self._refresh()
        found = self._matching(kid)
        if not found and self._url is not None:
            await self._refresh()
            found = self._matching(kid)
            if not found and self._failing:
                raise _Refusal("signing keys unavailable, retry",
                               kind=AuthenticationUnavailable)
        return found

    def _matching(self, kid: str | None) -> list[SigningKey]:
        if kid is None:
            return list(self._keys) if len(self._keys) == 1 else []
        return [key for key in self._keys if key.kid == kid]

    async def _refresh(self) -> None:
        async with self._lock:
            now = self._clock()
            if self._attempted_at is not None and now - self._attempted_at < self._min_refresh:
                return
            self._attempted_at = now
            try:
                keys = await self._fetch()
            except (httpx2.HTTPError, _FetchError, ValueError) as exc:
                self._failing = True
                logger.warning("cannot fetch the signing keys of %s from %s: %s",
                               self.issuer, self._url, exc)
                return
            self._keys, self._fetched_at, self._failing = keys, self._clock(), False
            logger.info("fetched %d signing keys of %s", len(keys), self.issuer)

    async def _fetch(self) -> list[SigningKey]:
        if self._http is None or self._url is None:
            raise RuntimeError("JWKS fetched before the authenticator was entered")
        body = bytearray()
        async with self._http.stream("GET", self._url, timeout=self._timeout,
                                     headers={"accept": "application/json"}) as response:
            if response.status_code != 200:
                raise _FetchError(f"HTTP {response.status_code}")
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise _FetchError(f"larger than {MAX_JWKS_BYTES} bytes")
        return parse_jwks(json.loads(body), self._url)


# --------------------------------------------------------------------------- building


def build_authenticator(config: VmcpConfig, *,
                        environ: Mapping[str, str] | None = None) -> Authenticator:
    """The authenticator ``config.auth.incoming`` describes.

    What configuration validation cannot see is checked here, at start-up: the variables
    ``token_env`` names (read, hashed, and not kept) and the contents of ``jwks_file``
    (read relative to the working directory). Raises one ``ConfigError`` listing every
    problem, each with its location.
    """
    env = os.environ if environ is None else environ
    auth: AuthConfig = config.auth
    incoming = auth.incoming
    location = ResourceLocation(auth.resource_url, config.server.path)
    problems: list[str] = []
    authenticator: Authenticator
    if incoming.type == "anonymous":
        authenticator = AnonymousAuthenticator()
    elif incoming.type == "static":
        entries: list[tuple[bytes, str, str]] = []
        for index, entry in enumerate(incoming.tokens):
            where = f"auth.incoming.tokens[{index}]"
            if entry.token_sha256 is not None:
                entries.append((bytes.fromhex(entry.token_sha256), entry.issuer, entry.subject))
                continue
            assert entry.token_env is not None
            secret = env.get(entry.token_env, "")
            if not secret or not _B64TOKEN.match(secret):
                problems.append(f"{where}.token_env: environment variable {entry.token_env} "
                                "is unset, empty or not a valid bearer token")
                continue
            entries.append((hashlib.sha256(secret.encode()).digest(), entry.issuer,
                            entry.subject))
        digests = [digest for digest, _, _ in entries]
        if len(set(digests)) != len(digests):
            problems.append("auth.incoming.tokens: two entries have the same token")
        authenticator = StaticTokenAuthenticator(entries, location)
    else:
        caches: dict[str, JwksCache] = {}
        sources = [("auth.incoming", incoming.issuer, incoming.jwks_url, incoming.jwks_file)]
        sources += [(f"auth.incoming.extra_issuers[{index}]", extra.issuer, extra.jwks_url,
                     extra.jwks_file) for index, extra in enumerate(incoming.extra_issuers)]
        for where, issuer, url, file in sources:
            assert issuer is not None
            keys: list[SigningKey] = []
            if file is not None:
                try:
                    keys = parse_jwks(json.loads(Path(file).read_text(encoding="utf-8")), file)
                except (OSError, UnicodeDecodeError, ValueError) as exc:
                    problems.append(f"{where}.jwks_file: cannot read a JWK Set from {file}: "
                                    f"{exc}")
                else:
                    if not keys:
                        problems.append(f"{where}.jwks_file: {file} has no usable signing key")
            caches[issuer] = JwksCache(
                issuer, url=url, keys=keys,
                min_refresh_seconds=incoming.jwks_min_refresh_seconds,
                max_age_seconds=incoming.jwks_max_age_seconds,
                timeout_seconds=incoming.jwks_timeout_seconds)
        authenticator = JwtAuthenticator(
            caches, audience=incoming.audience, algorithms=incoming.algorithms,
            leeway_seconds=incoming.leeway_seconds, location=location,
            timeout_seconds=incoming.jwks_timeout_seconds)
    if problems:
        raise ConfigError("\n".join(problems))
    return authenticator
