"""The signing keys of trusted issuers: parsing a JWK Set, and the cache that refetches it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import anyio
import httpx2
import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from vmcp.auth.incoming.authenticators import _Refusal
from vmcp.errors import AuthenticationUnavailable

logger = logging.getLogger(__name__)

MAX_JWKS_BYTES = 1024 * 1024
"""A key set larger than this is not read to the end (an IdP publishes a few keys)."""

MIN_RSA_BITS = 2048
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1",
              "ES256K": "secp256k1"}

PublicKey: TypeAlias = RSAPublicKey | EllipticCurvePublicKey | Ed25519PublicKey | Ed448PublicKey


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
