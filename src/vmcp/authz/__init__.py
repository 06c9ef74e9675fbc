"""Per-identity authorization of tools, prompts and resources by Cedar policies.

Depends only on ``vmcp.identity``, ``vmcp.config`` and ``vmcp.errors``; the request path
uses :class:`Authorizer` and builds one with :func:`build_authorizer`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmcp.authz.decisions import (
    ALLOWED,
    AllowAll,
    Authorizer,
    Decision,
    PolicyStatus,
    Target,
)
from vmcp.authz.engine import CedarAuthorizer
from vmcp.authz.policies import PolicyBundle, load_bundle

if TYPE_CHECKING:
    from vmcp.config import VmcpConfig

__all__ = [
    "ALLOWED",
    "AllowAll",
    "Authorizer",
    "CedarAuthorizer",
    "Decision",
    "PolicyBundle",
    "PolicyStatus",
    "Target",
    "build_authorizer",
    "load_bundle",
]


def build_authorizer(config: VmcpConfig) -> AllowAll | CedarAuthorizer:
    """The authorizer ``config`` asks for; raises ``ConfigError`` on invalid policies."""
    authz = config.auth.authz
    if authz is None:
        return AllowAll()
    return CedarAuthorizer(authz)
