"""Identity providers with real keys and a real JWKS endpoint, and authenticators on them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.datastructures import Headers

from tests.support.identity_provider import AUDIENCE, IdentityProvider
from vmcp.config import VmcpConfig

GATEWAY_HOST = "gateway.test:4483"


@pytest.fixture
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider("idp") as provider:
        yield provider


@pytest.fixture
def other_idp() -> Iterator[IdentityProvider]:
    with IdentityProvider("other") as provider:
        yield provider


def oidc_config(idp: IdentityProvider, *, resource_url: str | None = None,
                **incoming: Any) -> VmcpConfig:
    """A configuration trusting ``idp`` (by its JWKS URL) for audience ``AUDIENCE``."""
    settings: dict[str, Any] = {"type": "oidc", "issuer": idp.issuer, "audience": AUDIENCE,
                                "jwks_url": idp.jwks_url, **incoming}
    auth: dict[str, Any] = {"incoming": settings}
    if resource_url is not None:
        auth["resource_url"] = resource_url
    return VmcpConfig.model_validate({"auth": auth})


def bearer(token: str, **extra: str) -> Headers:
    """The headers of a request carrying ``token``."""
    return Headers({"host": GATEWAY_HOST, "authorization": f"Bearer {token}", **extra})


def no_credentials(**extra: str) -> Headers:
    return Headers({"host": GATEWAY_HOST, **extra})
