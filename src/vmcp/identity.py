"""Who is calling: the principal incoming auth establishes, and the binding derived from it.

It sits below ``auth`` (which produces principals), ``session`` (which binds sessions to
them) and the stateless revision (which keys upstream state by them), so none of those
imports another for it.

A session id is a bearer capability. The binding stored with a session is the creator's
``issuer \\x00 subject`` (or the literal ``unauthenticated``), never the token itself:
a refreshed token for the same principal keeps working, and no credential is stored.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vmcp.errors import SessionNotYours, VmcpError

UNAUTHENTICATED = "unauthenticated"
SEPARATOR = "\x00"


class InvalidIdentity(VmcpError):
    """A caller presented credentials whose issuer/subject cannot form a binding."""

    http_status = 401
    public_message = "Unusable identity"


@dataclass(frozen=True)
class Principal:
    """The caller of one request, as incoming auth established it.

    ``token`` is the raw credential, kept only for outgoing auth on this request; it is
    excluded from ``repr`` so it never lands in a log line. ``claims`` are the verified
    token's claims (empty for static tokens and anonymous callers), for authorization.
    """

    issuer: str | None = None
    subject: str | None = None
    token: str | None = field(default=None, repr=False, compare=False)
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_anonymous(self) -> bool:
        return self.token is None and self.issuer is None and self.subject is None


ANONYMOUS = Principal()


def binding_for(principal: Principal) -> str:
    """The binding a session created by ``principal`` gets (B39, B40).

    Anyone who presents credentials must have a usable issuer and subject: non-empty
    and free of the separator. Otherwise there is nothing safe to bind to.
    """
    if principal.is_anonymous:
        return UNAUTHENTICATED
    issuer, subject = principal.issuer, principal.subject
    if not issuer or not subject:
        raise InvalidIdentity("credentials without issuer and subject")
    if SEPARATOR in issuer or SEPARATOR in subject:
        raise InvalidIdentity("issuer or subject contains NUL")
    return f"{issuer}{SEPARATOR}{subject}"


def is_well_formed(binding: str) -> bool:
    """True for ``unauthenticated`` or exactly two non-empty NUL-separated parts."""
    if binding == UNAUTHENTICATED:
        return True
    parts = binding.split(SEPARATOR)
    return len(parts) == 2 and all(parts)


def check_binding(stored: str | None, principal: Principal) -> None:
    """Raise ``SessionNotYours`` unless ``principal`` is the session's own identity.

    Fails closed: a missing or corrupt stored binding refuses everyone (B43). The
    comparison is constant time so response timing does not leak how much matched.
    """
    if stored is None or not is_well_formed(stored):
        raise SessionNotYours("stored binding missing or corrupt")
    try:
        presented = binding_for(principal)
    except InvalidIdentity as exc:
        raise SessionNotYours("caller identity unusable") from exc
    if not hmac.compare_digest(stored.encode(), presented.encode()):
        raise SessionNotYours("caller is not the session's identity")
