"""Who is calling: the principal incoming auth establishes, and the binding derived from it.

It sits below ``auth`` (which produces principals), ``session`` (which binds sessions to
them) and the stateless revision (which keys upstream state by them), so none of those
imports another for it.

A session id is a bearer capability. The binding stored with a session is the creator's
``issuer \\x00 subject`` (or the literal ``unauthenticated``), never the token itself:
a refreshed token for the same principal keeps working, and no credential is stored.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Iterator, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import Headers

from vmcp.errors import InvalidIdentity, SessionNotYours

UNAUTHENTICATED = "unauthenticated"
SEPARATOR = "\x00"


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


# --------------------------------------------------------------------------- the caller
# The one place identity travels implicitly: outgoing auth needs the caller's credentials
# deep in backend calls, and a session restored in a task of its own keeps its caller.


@dataclass(frozen=True)
class Caller:
    """The client request a backend call is made for: who sent it, and its headers."""

    principal: Principal
    headers: Headers

    def __repr__(self) -> str:  # the headers hold the bearer token
        return f"Caller({self.principal!r})"


_caller: ContextVar[Caller | None] = ContextVar("vmcp_caller", default=None)


def act_for(principal: Principal, headers: Headers) -> None:
    """Record the request being served; backend calls from here on carry its credentials.

    Called by the transport once the request is authenticated, inside
    :func:`request_scope`. The request's own task and the tasks it starts see it
    (a task copies the context it was created in), and nothing else does.
    """
    _caller.set(Caller(principal, headers))


def current_caller() -> Caller | None:
    """The request this task serves, or None outside any client request."""
    return _caller.get()


@contextlib.contextmanager
def request_scope() -> Iterator[None]:
    """The extent of one client request: no caller at the start, none left afterwards."""
    token: Token[Caller | None] = _caller.set(None)
    try:
        yield
    finally:
        _caller.reset(token)


@contextlib.contextmanager
def acting_for(principal: Principal) -> Iterator[None]:
    """Within the block, ``principal`` is the caller (its request headers kept if it
    already is, none otherwise)."""
    caller = _caller.get()
    if caller is not None and caller.principal == principal:
        yield
        return
    token = _caller.set(Caller(principal, Headers()))
    try:
        yield
    finally:
        _caller.reset(token)
