"""Outgoing auth: the credentials each backend call carries (``backends[].auth``).

Strategies, per backend (see :class:`~vmcp.config.OutgoingAuthConfig`):

* ``header`` - a fixed header (an API key the backend issued to the gateway). It does not
  depend on the caller, so it becomes one of the backend's static headers and goes on
  every request, the gateway's own included (health probes, ending sessions).
* ``forward`` - ``Authorization: Bearer <the caller's token>``.
* ``token_exchange`` - ``Authorization: Bearer <a token for the backend>``, obtained from
  the caller's token by RFC 8693 token exchange and cached (:class:`TokenExchanger`).
* ``allow_headers`` - the listed headers of the caller's request, copied as they came.

The last three depend on the caller, so they are computed for every backend call from
the client request it serves - never from the session's stored metadata. The transport
records that request (its :class:`~vmcp.identity.Principal` and headers) with
:func:`act_for`, in a context variable: the request's own task and the tasks it starts
(a detached call, a session restore) see it, and nothing else does. A session restored
on another replica therefore uses the credentials of the request that restored it, and
each later call those of its own request. :meth:`OutgoingAuth.wrap` puts the computation
in front of a backend connection, so every path to the backend - calls, discovery,
notifications, answers, the GET stream, the handshake a call triggers - carries them.

Work that no client request triggered (a re-discovery announced by another replica)
carries only the static headers; a backend that insists on the caller's credentials
refuses it, and the session keeps what it had. Ending a backend session uses the latest
call's headers, which its connection keeps in memory for that purpose only.

Tokens never appear in logs, errors, metadata or the store: the exchange cache is keyed
by the SHA-256 of the caller's token, and errors name the backend and the token
endpoint's status and OAuth ``error`` code only.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import quote

import httpx2

from vmcp.backend import (
    BackendConnection,
    BackendState,
    BackendStatistics,
    BackendTarget,
    MessageHandler,
)
from vmcp.concurrency import SingleFlight
from vmcp.config import OutgoingAuthConfig, VmcpConfig
from vmcp.errors import ConfigError, OutgoingAuthError
from vmcp.identity import Caller, act_for, current_caller, request_scope
from vmcp.lru import LRU

__all__ = [
    "EXPIRY_MARGIN_SECONDS",
    "TOKEN_EXCHANGE_GRANT",
    "Caller",
    "OutgoingAuth",
    "TokenExchanger",
    "act_for",
    "build_outgoing_auth",
    "current_caller",
    "request_scope",
]

logger = logging.getLogger(__name__)

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"

EXPIRY_MARGIN_SECONDS = 30.0
"""An exchanged token is used until this long before it expires (at most half its
lifetime): a token that expires on its way to the backend is a failed call."""

EXCHANGE_CACHE_CAPACITY = 4096
"""Exchanged tokens kept at most; the least recently used go first."""

EXCHANGE_TIMEOUT_SECONDS = 10.0
MAX_TOKEN_RESPONSE_BYTES = 64 * 1024
_OAUTH_ERROR = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]{1,16384}$")


# --------------------------------------------------------------------------- the caller


# --------------------------------------------------------------------------- token exchange


@dataclass(frozen=True)
class _Exchange:
    """One backend's token-exchange settings, the client secret read at start-up."""

    token_url: str
    audience: str
    client_id: str
    client_secret: str | None
    scope: str | None


CacheKey = tuple[str, str, str]


class TokenExchanger:
    """RFC 8693 token exchange with a bounded cache of the tokens obtained.

    The cache is keyed by (backend, SHA-256 of the caller's token, audience) - never the
    token itself - and an entry lives until ``expires_in`` minus a margin; a response
    without ``expires_in`` is not cached, since nothing says how long it stays good.
    Concurrent calls that need the same token share one exchange, and its failure.
    """

    def __init__(self, *, capacity: int = EXCHANGE_CACHE_CAPACITY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._capacity = capacity
        self._clock = clock
        self._cache: LRU[CacheKey, tuple[str, float]] = LRU(capacity)
        # A refused exchange would only be refused again: waiters share the error.
        self._flights: SingleFlight[CacheKey, str] = SingleFlight(share_errors=True)
        self._http: httpx2.AsyncClient | None = None
        self.exchanges = 0

    def use_client(self, http: httpx2.AsyncClient | None) -> None:
        self._http = http

    def __len__(self) -> int:
        return len(self._cache)

    async def token_for(self, backend: str, subject_token: str, settings: _Exchange) -> str:
        """A token for ``backend`` in exchange for ``subject_token``; cached if possible."""
        key = (backend, hashlib.sha256(subject_token.encode()).hexdigest(), settings.audience)
        cached = self._cached(key)
        if cached is not None:
            return cached
        return await self._flights.run(key, lambda: self._exchange_and_keep(
            key, backend, subject_token, settings))

    async def _exchange_and_keep(self, key: CacheKey, backend: str, subject_token: str,
                                 settings: _Exchange) -> str:
        token, lifetime = await self._exchange(backend, subject_token, settings)
        if lifetime is not None and lifetime > 0:
            self._cache.put(key, (token, self._clock() + lifetime))
        return token

    def _cached(self, key: CacheKey) -> str | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        token, good_until = entry
        if good_until <= self._clock():
            self._cache.pop(key)
            return None
        return token

    async def _exchange(self, backend: str, subject_token: str,
                        settings: _Exchange) -> tuple[str, float | None]:
        """POST the exchange; (the new token, how long to cache it, None for not at all)."""
        if self._http is None:
            raise RuntimeError("token exchange used before outgoing auth was entered")
        form = {"grant_type": TOKEN_EXCHANGE_GRANT, "subject_token": subject_token,
                "subject_token_type": ACCESS_TOKEN_TYPE,
                "requested_token_type": ACCESS_TOKEN_TYPE, "audience": settings.audience}
        if settings.scope:
            form["scope"] = settings.scope
        headers = {"accept": "application/json"}
        if settings.client_secret is not None:
            # RFC 6749 section 2.3.1: each part form-encoded, then HTTP Basic.
            pair = f"{quote(settings.client_id, safe='')}:{quote(settings.client_secret, safe='')}"
            headers["authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = settings.client_id
        self.exchanges += 1
        try:
            async with self._http.stream("POST", settings.token_url, data=form, headers=headers,
                                         timeout=EXCHANGE_TIMEOUT_SECONDS) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_TOKEN_RESPONSE_BYTES:
                        raise OutgoingAuthError(backend, "token exchange answer is too large")
                status = response.status_code
        except httpx2.HTTPError as exc:
            raise OutgoingAuthError(
                backend, f"token endpoint unreachable ({type(exc).__name__})") from None
        document = _json_object(bytes(body))
        if status != 200:
            code = document.get("error") if document is not None else None
            reason = f" ({code})" if isinstance(code, str) and _OAUTH_ERROR.match(code) else ""
            raise OutgoingAuthError(backend, f"token exchange refused: HTTP {status}{reason}")
        if document is None:
            raise OutgoingAuthError(backend, "token exchange answer is not a JSON object")
        token = document.get("access_token")
        token_type = document.get("token_type")
        if not isinstance(token, str) or not _TOKEN_CHARS.match(token):
            raise OutgoingAuthError(backend, "token exchange answer has no usable access_token")
        if not isinstance(token_type, str) or token_type.lower() not in ("bearer", "n_a"):
            raise OutgoingAuthError(backend, "token exchange answer is not a bearer token")
        expires_in = document.get("expires_in")
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
            return token, None
        return token, expires_in - min(EXPIRY_MARGIN_SECONDS, expires_in / 2)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return parsed if isinstance(parsed, dict) else None


# --------------------------------------------------------------------------- per backend


@dataclass(frozen=True)
class _Strategy:
    """What one backend's calls carry, with every secret already read."""

    kind: str
    static: Mapping[str, str]
    allow_headers: tuple[str, ...]
    exchange: _Exchange | None = None

    @property
    def per_caller(self) -> bool:
        return self.kind in ("forward", "token_exchange") or bool(self.allow_headers)


class OutgoingAuth:
    """The outgoing credentials of every backend; one per process.

    Entered (``async with``) for the process's lifetime: that opens the HTTP client for
    token exchanges (no connection is made until a backend needs one).
    """

    def __init__(self, strategies: Mapping[str, _Strategy], *,
                 exchanger: TokenExchanger | None = None) -> None:
        self._strategies = dict(strategies)
        self.exchanger = exchanger if exchanger is not None else TokenExchanger()
        self._http: httpx2.AsyncClient | None = None

    async def __aenter__(self) -> Self:
        self._http = httpx2.AsyncClient(timeout=EXCHANGE_TIMEOUT_SECONDS,
                                        follow_redirects=False)
        self.exchanger.use_client(self._http)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
            self.exchanger.use_client(None)

    def adopt(self, reloaded: OutgoingAuth) -> None:
        """Use the strategies of ``reloaded`` (a reloaded configuration) from now on;
        tokens already exchanged stay cached."""
        self._strategies = dict(reloaded._strategies)

    def static_headers(self, backend: str) -> dict[str, str]:
        """Headers for every request to ``backend`` whoever the caller (``header``)."""
        strategy = self._strategies.get(backend)
        return dict(strategy.static) if strategy is not None else {}

    def per_caller(self, backend: str) -> bool:
        """Whether ``backend``'s requests carry the caller's credentials."""
        strategy = self._strategies.get(backend)
        return strategy is not None and strategy.per_caller

    async def headers_for(self, backend: str, caller: Caller | None) -> dict[str, str]:
        """The caller-dependent headers of one call to ``backend``; empty without a caller.

        Raises ``OutgoingAuthError`` if a token exchange fails.
        """
        strategy = self._strategies.get(backend)
        if strategy is None or caller is None or not strategy.per_caller:
            return {}
        headers: dict[str, str] = {}
        for name in strategy.allow_headers:
            values = caller.headers.getlist(name)
            if values:
                headers[name] = ", ".join(values)
        token = caller.principal.token
        if token is not None and strategy.kind == "forward":
            headers["authorization"] = f"Bearer {token}"
        elif token is not None and strategy.exchange is not None:
            exchanged = await self.exchanger.token_for(backend, token, strategy.exchange)
            headers["authorization"] = f"Bearer {exchanged}"
        return headers

    def wrap(self, connection: BackendConnection) -> BackendConnection:
        """``connection``, with the current caller's credentials on everything it sends."""
        if not self.per_caller(connection.target.name):
            return connection
        return _CallerCredentials(connection, self)


class _CallerCredentials:
    """A ``BackendConnection`` that adds the current caller's headers to every call."""

    def __init__(self, inner: BackendConnection, auth: OutgoingAuth) -> None:
        self._inner = inner
        self._auth = auth

    @property
    def target(self) -> BackendTarget:
        return self._inner.target

    @property
    def state(self) -> BackendState:
        return self._inner.state

    async def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = await self._auth.headers_for(self._inner.target.name, current_caller())
        return {**headers, **(extra or {})}

    async def request(self, method: str, params: dict[str, Any] | None, *,
                      on_message: MessageHandler | None = None,
                      timeout: float | None = None,  # noqa: ASYNC109 - the contract's deadline
                      headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        return await self._inner.request(method, params, on_message=on_message,
                                         timeout=timeout, headers=await self._headers(headers))

    async def notify(self, method: str, params: dict[str, Any] | None, *,
                     headers: Mapping[str, str] | None = None) -> None:
        await self._inner.notify(method, params, headers=await self._headers(headers))

    async def respond(self, message: dict[str, Any], *,
                      headers: Mapping[str, str] | None = None) -> None:
        await self._inner.respond(message, headers=await self._headers(headers))

    async def listen(self, *, headers: Mapping[str, str] | None = None
                     ) -> AsyncGenerator[dict[str, Any], None]:
        messages = self._inner.listen(headers=await self._headers(headers))
        async with contextlib.aclosing(messages):
            async for message in messages:
                yield message

    def statistics(self) -> BackendStatistics:
        return self._inner.statistics()

    async def aclose(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._inner.aclose(timeout=timeout)


# --------------------------------------------------------------------------- building


def build_outgoing_auth(config: VmcpConfig, *,
                        environ: Mapping[str, str] | None = None) -> OutgoingAuth:
    """The outgoing auth ``backends[].auth`` describes, secrets read from ``environ``.

    What validation cannot see is checked here, at start-up: the variables ``value_env``
    and ``client_secret_env`` name must be set and non-empty. Raises one ``ConfigError``
    listing every problem, each with its location. Logs a warning for every backend that
    is sent the callers' own tokens.
    """
    env = os.environ if environ is None else environ
    problems: list[str] = []
    strategies: dict[str, _Strategy] = {}
    for index, backend in enumerate(config.backends):
        auth: OutgoingAuthConfig = backend.auth
        where = f"backends[{index}].auth"
        static: dict[str, str] = {}
        exchange: _Exchange | None = None
        if auth.type == "header":
            assert auth.name is not None
            value = auth.value
            if auth.value_env is not None:
                value = env.get(auth.value_env, "")
                if not value or any(c in value for c in "\r\n\x00"):
                    problems.append(f"{where}.value_env: environment variable {auth.value_env} "
                                    "is unset, empty or contains a line break")
                    continue
            assert value is not None
            static[auth.name] = value
        elif auth.type == "token_exchange":
            assert auth.token_url is not None
            assert auth.audience is not None
            assert auth.client_id is not None
            secret: str | None = None
            if auth.client_secret_env is not None:
                secret = env.get(auth.client_secret_env, "")
                if not secret:
                    problems.append(f"{where}.client_secret_env: environment variable "
                                    f"{auth.client_secret_env} is unset or empty")
                    continue
            exchange = _Exchange(auth.token_url, auth.audience, auth.client_id, secret,
                                 auth.scope)
        elif auth.type == "forward":
            logger.warning("backend %s receives each caller's own token (auth.type "
                           "forward): it can act as the caller wherever that token is "
                           "accepted", backend.name, extra={"backend": backend.name})
        strategies[backend.name] = _Strategy(auth.type, static, auth.allow_headers, exchange)
    if problems:
        raise ConfigError("\n".join(problems))
    return OutgoingAuth(strategies)
