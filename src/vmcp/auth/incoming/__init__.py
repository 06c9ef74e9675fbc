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

The modules: :mod:`~vmcp.auth.incoming.authenticators` (the contract, anonymous and static
tokens), :mod:`~vmcp.auth.incoming.jwt_bearer` with :mod:`~vmcp.auth.incoming.jwks` (JWTs and
the issuers' keys), :mod:`~vmcp.auth.incoming.resource` (RFC 9728 metadata and the RFC 6750
challenge) and :mod:`~vmcp.auth.incoming.build` (from configuration).
"""

from __future__ import annotations

from vmcp.auth.incoming.authenticators import (
    AnonymousAuthenticator,
    Authenticator,
    StaticTokenAuthenticator,
    UnusableIdentity,
)
from vmcp.auth.incoming.build import build_authenticator
from vmcp.auth.incoming.jwks import JwksCache, SigningKey, parse_jwks
from vmcp.auth.incoming.jwt_bearer import JwtAuthenticator
from vmcp.auth.incoming.resource import (
    WELL_KNOWN_RESOURCE_METADATA,
    ResourceLocation,
    challenge,
    metadata_paths,
)

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
