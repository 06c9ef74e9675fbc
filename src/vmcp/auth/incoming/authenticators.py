"""The authenticator contract, and the two that need no identity provider.

:class:`Authenticator` turns a request's headers into its ``Principal``.
:class:`AnonymousAuthenticator` lets everyone in as ``ANONYMOUS``;
:class:`StaticTokenAuthenticator` knows fixed bearer tokens by their SHA-256. Both bearer
schemes (static and JWT) share :class:`_BearerAuthenticator`, which takes the token from
``Authorization`` and turns a :class:`_Refusal` into the RFC 6750 answer.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Iterable
from typing import Any, Self

from starlette.datastructures import Headers

from vmcp.auth.incoming.resource import ResourceLocation, challenge
from vmcp.errors import AuthenticationError, InvalidIdentity, MalformedCredentials
from vmcp.identity import ANONYMOUS, Principal

logger = logging.getLogger(__name__)

MAX_TOKEN_CHARS = 16 * 1024
"""Longer bearer tokens are refused before any parsing: no real JWT is this large."""

# RFC 6750 b64token: what a bearer token may consist of.
_B64TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")


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
