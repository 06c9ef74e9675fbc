"""The authenticator the configuration describes, checked at start-up."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from vmcp.auth.incoming.authenticators import (
    _B64TOKEN,
    AnonymousAuthenticator,
    Authenticator,
    StaticTokenAuthenticator,
)
from vmcp.auth.incoming.jwks import JwksCache, SigningKey, parse_jwks
from vmcp.auth.incoming.jwt_bearer import JwtAuthenticator
from vmcp.auth.incoming.resource import ResourceLocation
from vmcp.config import AuthConfig, VmcpConfig
from vmcp.errors import ConfigError


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
