"""A token issuer for tests: real key pairs and a real JWKS endpoint on loopback.

Keys are generated per provider (RSA, EC P-256, Ed25519); tokens are signed with the
private halves by PyJWT, and the public halves are served as a JWK Set over HTTP by a
small threaded server, so the gateway fetches them exactly as it would from an identity
provider. The server counts its key-set requests and can be told to fail them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

KeyKind = Literal["RSA", "EC", "Ed25519"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

AUDIENCE = "vmcp-test"
_ALGORITHM: dict[KeyKind, str] = {"RSA": "RS256", "EC": "ES256", "Ed25519": "EdDSA"}
_UNSET: Any = object()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Mapping[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


@dataclass
class _Key:
    kid: str
    kind: KeyKind
    private: PrivateKey
    published: bool = True

    @property
    def algorithm(self) -> str:
        return _ALGORITHM[self.kind]

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        document: dict[str, Any]
        if isinstance(public, rsa.RSAPublicKey):
            document = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            document = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            document = OKPAlgorithm.to_jwk(public, as_dict=True)
        return {**document, "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def generate(kind: KeyKind) -> PrivateKey:
    if kind == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "EC":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


class IdentityProvider:
    """One issuer: its keys, its JWKS endpoint, and tokens signed with its keys.

    ``issuer`` is the server's base URL plus ``/<name>``; ``jwks_url`` is where the key set
    is served. Use as a context manager (or ``start``/``stop``).
    """

    def __init__(self, name: str = "idp", kinds: tuple[KeyKind, ...] = ("RSA", "EC")) -> None:
        self.name = name
        self._keys: list[_Key] = []
        self._lock = threading.Lock()
        self.fetches = 0
        self.fail_with: int | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for kind in kinds:
            self.add_key(kind)

    # -- keys ---------------------------------------------------------------------------

    def add_key(self, kind: KeyKind = "RSA", *, published: bool = True) -> str:
        """A new key pair; its kid. An unpublished key signs tokens the JWKS does not know."""
        kid = f"{self.name}-{kind.lower()}-{uuid.uuid4().hex[:8]}"
        with self._lock:
            self._keys.append(_Key(kid, kind, generate(kind), published))
        return kid

    def publish(self, kid: str) -> None:
        with self._lock:
            self._key(kid).published = True

    def withdraw(self, kid: str) -> None:
        """Stop publishing ``kid`` (the key set no longer vouches for it)."""
        with self._lock:
            self._key(kid).published = False

    def _key(self, kid: str) -> _Key:
        return next(key for key in self._keys if key.kid == kid)

    def kid(self, kind: KeyKind = "RSA") -> str:
        """The first key of ``kind``."""
        return next(key.kid for key in self._keys if key.kind == kind)

    def public_pem(self, kid: str) -> bytes:
        return self._key(kid).public_pem()

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [key.jwk() for key in self._keys if key.published]}

    # -- tokens -------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        return f"{self.base_url}/{self.name}"

    def claims(self, subject: str | None = "alice", *, lifetime: float = 300.0,
               **overrides: Any) -> dict[str, Any]:
        """Standard claims for ``subject``; an override of ``None`` leaves the claim out."""
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "sub": subject, "aud": AUDIENCE,
                                  "iat": now, "exp": now + int(lifetime),
                                  "jti": uuid.uuid4().hex}
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}

    def mint(self, subject: str | None = "alice", *, kid: str | None = None,
             kind: KeyKind = "RSA", header_kid: Any = _UNSET, lifetime: float = 300.0,
             **overrides: Any) -> str:
        """A token signed with key ``kid`` (default: the first key of ``kind``)."""
        key = self._key(kid or self.kid(kind))
        headers = {"kid": key.kid if header_kid is _UNSET else header_kid}
        if headers["kid"] is None:
            del headers["kid"]
        return jwt.encode(self.claims(subject, lifetime=lifetime, **overrides), key.private,
                          algorithm=key.algorithm, headers=headers)

    def unsigned(self, subject: str = "alice", **overrides: Any) -> str:
        """An ``alg: none`` token naming a real kid: no signature at all."""
        header = {"alg": "none", "typ": "JWT", "kid": self.kid()}
        return f"{b64json(header)}.{b64json(self.claims(subject, **overrides))}."

    def hmac_with_public_key(self, subject: str = "alice", kid: str | None = None) -> str:
        """HS256 with the PEM of a published public key as the secret: the classic
        algorithm-confusion forgery against verifiers that let the token pick the alg."""
        key = self._key(kid or self.kid("RSA"))
        header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
        signing_input = f"{b64json(header)}.{b64json(self.claims(subject))}"
        signature = hmac.new(key.public_pem(), signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64url(signature)}"

    # -- server -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the identity provider is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def jwks_url(self) -> str:
        return f"{self.base_url}/{self.name}/jwks"

    def start(self) -> None:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != f"/{provider.name}/jwks":
                    self._answer(404, b"{}")
                    return
                with provider._lock:
                    provider.fetches += 1
                    failure = provider.fail_with
                if failure is not None:
                    self._answer(failure, b'{"error": "unavailable"}')
                    return
                self._answer(200, json.dumps(provider.jwks()).encode())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name=f"jwks-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> IdentityProvider:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextmanager
def identity_providers(*names: str) -> Iterator[list[IdentityProvider]]:
    providers = [IdentityProvider(name) for name in names]
    try:
        for provider in providers:
            provider.start()
        yield providers
    finally:
        for provider in providers:
            provider.stop()
