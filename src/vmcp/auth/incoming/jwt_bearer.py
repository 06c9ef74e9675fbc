"""JWT bearer tokens (``auth.incoming.type: oidc``), verified with the issuers' keys."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Self

import httpx2
import jwt
from starlette.datastructures import Headers

from vmcp.auth.incoming.authenticators import (
    UnusableIdentity,
    _BearerAuthenticator,
    _check_identity,
    _Refusal,
)
from vmcp.auth.incoming.jwks import JwksCache, SigningKey
from vmcp.auth.incoming.resource import ResourceLocation
from vmcp.identity import Principal

logger = logging.getLogger(__name__)

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
