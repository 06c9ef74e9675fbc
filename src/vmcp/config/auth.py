"""Configuration of authentication: who may call the gateway, and what backends see."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    Field,
    field_validator,
    model_validator,
)

from vmcp.config._checks import (
    _ENV_NAME_PATTERN,
    _HEADER_NAME_PATTERN,
    _HOP_BY_HOP_HEADERS,
    _RESERVED_HEADERS,
    _SHA256_HEX_PATTERN,
    _TRANSPORT_HEADERS,
    ASYMMETRIC_ALGORITHMS,
    DEFAULT_ALGORITHMS,
    IncomingAuthType,
    OutgoingAuthType,
    _check_http_url,
    _check_identity_part,
    _Frozen,
)

# --------------------------------------------------------------------------- models




def _copyable_header_problem(header: str) -> str | None:
    """Why ``header`` cannot be set on, or copied to, a backend request; None if it can."""
    if not _HEADER_NAME_PATTERN.match(header):
        return f"{header!r} is not a valid header name"
    lowered = header.lower()
    if lowered in _HOP_BY_HOP_HEADERS or lowered in _RESERVED_HEADERS:
        return f"{header!r} is a hop-by-hop header and cannot be sent on"
    if lowered in _TRANSPORT_HEADERS:
        return f"{header!r} is set by the MCP transport itself"
    return None



def _check_file_path(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a file path")
    return value


IssuerUrl = Annotated[str, AfterValidator(lambda v: _check_http_url(v, allow_query=False))]
"""An issuer: an http(s) URL with a host, no query and no fragment."""
HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
FilePath = Annotated[str, AfterValidator(_check_file_path)]

class OutgoingAuthConfig(_Frozen):
    """How the gateway authenticates to one backend (``backends[].auth``), by ``type``.

    * ``none`` (the default) - nothing beyond the backend's static ``headers``.
    * ``header`` - the header ``name`` with a fixed value: ``value`` in the file, or
      ``value_env``, an environment variable read once at start-up (unset or empty is a
      configuration error then). For API keys the backend issues to the gateway itself.
    * ``forward`` - the caller's own bearer token goes to the backend as
      ``Authorization: Bearer``. An explicit opt-in, logged as a warning at start-up: the
      backend then holds a token that is also good at the gateway (and wherever else its
      audience reaches), so only forward to backends trusted like the gateway itself.
    * ``token_exchange`` - the caller's token is exchanged (RFC 8693) at ``token_url`` for
      one meant for ``audience`` (and ``scope``, if given), authenticating as ``client_id``
      with the secret in the environment variable ``client_secret_env`` (HTTP Basic; none
      for a public client). Exchanged tokens are cached until shortly before they expire.

    ``allow_headers`` (any type) names headers of the client's request that are copied to
    the backend on each call, such as a tenant or trace header. Hop-by-hop headers and the
    ones the MCP transport sets are refused, and so is ``Authorization``: passing the
    caller's credentials on is what ``forward`` is for, deliberately and visibly.

    Credentials for ``forward``, ``token_exchange`` and ``allow_headers`` are taken from the
    request being served, on every call (and for the backend handshake that request
    triggers); they are never stored with the session. They need incoming auth that has
    tokens (``oidc`` or ``static``).
    """

    type: OutgoingAuthType = "none"
    """none, header (a fixed header), forward (the caller's own token) or token_exchange (RFC
    8693)."""
    name: str | None = None
    """header: the header to set."""
    value: str | None = None
    """header: its value, in the file."""
    value_env: str | None = None
    """header: the environment variable holding its value (read at start-up; unset is an error)."""
    token_url: str | None = None
    """token_exchange: the token endpoint."""
    audience: str | None = None
    """token_exchange: the audience of the exchanged token."""
    client_id: str | None = None
    """token_exchange: the client id the gateway authenticates as."""
    client_secret_env: str | None = None
    """token_exchange: the environment variable holding the client secret (none: a public
    client)."""
    scope: str | None = None
    """token_exchange: the scope asked for."""
    allow_headers: tuple[str, ...] = ()
    """Client request headers copied to the backend on each call (not Authorization, hop-by-hop
    or transport headers)."""

    @field_validator("value_env", "client_secret_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME_PATTERN.match(value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value

    @field_validator("token_url")
    @classmethod
    def _token_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value)

    @field_validator("allow_headers")
    @classmethod
    def _allow_headers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        problems = []
        for header in value:
            problem = _copyable_header_problem(header)
            if problem is None and header.lower() == "authorization":
                problem = (f"{header!r} carries the caller's credentials: use type 'forward' "
                           "to pass them on")
            if problem is not None:
                problems.append(problem)
        lowered = [header.lower() for header in value]
        repeated = sorted({h for h in lowered if lowered.count(h) > 1})
        if repeated:
            problems.append(f"listed more than once: {', '.join(repeated)}")
        if problems:
            raise ValueError("; ".join(problems))
        return tuple(lowered)

    @model_validator(mode="after")
    def _complete_for_type(self) -> Self:
        problems = []
        for key in ("name", "value", "value_env", "token_url", "audience", "client_id",
                    "client_secret_env", "scope"):
            if getattr(self, key) is not None and key not in _OUTGOING_KEYS_OF_TYPE[self.type]:
                owner = next(t for t, keys in _OUTGOING_KEYS_OF_TYPE.items() if key in keys)
                problems.append(f"{key} applies only to type {owner!r}, not {self.type!r}")
        if self.type == "header":
            if self.name is None:
                problems.append("type 'header' needs name (the header to set)")
            elif (problem := _copyable_header_problem(self.name)) is not None:
                problems.append(f"name: {problem}")
            elif self.name.lower() in self.allow_headers:
                problems.append(f"{self.name!r} is both set and copied from the client")
            if (self.value is None) == (self.value_env is None):
                problems.append("type 'header' needs exactly one of value and value_env")
            if self.value is not None and (
                    not self.value or any(c in self.value for c in "\r\n\x00")):
                problems.append("value must be non-empty, without line breaks or NUL")
        elif self.type == "token_exchange":
            for key in ("token_url", "audience", "client_id"):
                if not getattr(self, key):
                    problems.append(f"type 'token_exchange' needs {key}")
        if problems:
            raise ValueError("; ".join(sorted(problems)))
        return self

    def header_names(self) -> set[str]:
        """The (lower-case) headers this strategy sets on backend requests."""
        names = set(self.allow_headers)
        if self.type == "header" and self.name is not None:
            names.add(self.name.lower())
        elif self.type in ("forward", "token_exchange"):
            names.add("authorization")
        return names


class StaticTokenConfig(_Frozen):
    """One bearer token of ``static`` incoming auth and the identity it stands for.

    The token is given either as ``token_sha256`` (the hex SHA-256 of the token, so the
    file holds no usable secret) or as ``token_env`` (the name of an environment variable
    holding the token, read and hashed at start-up); exactly one of the two.
    """

    token_sha256: str | None = None
    """The hex SHA-256 of the token (the file holds no usable secret)."""
    token_env: str | None = None
    """Or: the environment variable holding the token (read and hashed at start-up)."""
    issuer: Annotated[str, AfterValidator(_check_identity_part)]
    """The identity's issuer."""
    subject: Annotated[str, AfterValidator(_check_identity_part)]
    """The identity's subject."""

    @field_validator("token_sha256")
    @classmethod
    def _token_sha256(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256_HEX_PATTERN.match(value):
            raise ValueError("must be 64 hex digits: the SHA-256 of the token, e.g. "
                             "from `printf %s \"$TOKEN\" | sha256sum`")
        return None if value is None else value.lower()

    @field_validator("token_env")
    @classmethod
    def _token_env(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME_PATTERN.match(value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.token_sha256 is None) == (self.token_env is None):
            raise ValueError("give exactly one of token_sha256 and token_env")
        return self


class TrustedIssuerConfig(_Frozen):
    """A further issuer ``oidc`` incoming auth trusts, with its own signing keys.

    Its tokens are checked exactly like the main issuer's (same audience, algorithms and
    leeway) but only ever against its own keys, chosen by the token's ``iss``.
    """

    issuer: IssuerUrl
    """The issuer (the tokens' iss, exactly)."""
    jwks_url: HttpUrl | None = None
    """Where its signing keys are published."""
    jwks_file: FilePath | None = None
    """Or: a file holding its JWK Set."""

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError("give exactly one of jwks_url and jwks_file")
        return self


_OIDC_KEYS = (
    "issuer", "audience", "jwks_url", "jwks_file", "algorithms", "leeway_seconds",
    "jwks_min_refresh_seconds", "jwks_max_age_seconds", "jwks_timeout_seconds",
    "extra_issuers",
)
class IncomingAuthConfig(_Frozen):
    """Who may call the gateway, by ``type``.

    * ``anonymous`` (the default, for development) - nobody presents credentials; a request
      that carries an ``Authorization`` header anyway is refused.
    * ``oidc`` - a JWT bearer token signed by ``issuer`` with one of its keys, published at
      ``jwks_url`` or kept in ``jwks_file`` (exactly one), whose ``aud`` names one of
      ``audience`` (a string or a list). ``algorithms`` may only list public-key
      algorithms: a symmetric one would let anyone holding the verification key mint tokens.
      ``leeway_seconds`` is the clock skew tolerated on ``exp``/``nbf``/``iat``. Unknown key
      ids refetch the key set at most once per ``jwks_min_refresh_seconds``; the set is
      refetched anyway once older than ``jwks_max_age_seconds``, so a withdrawn key stops
      being trusted. ``extra_issuers`` lists further issuers to trust, each with its own
      keys (see :class:`TrustedIssuerConfig`); a session stays bound to issuer *and*
      subject, so the same ``sub`` from two issuers is two identities.
    * ``static`` - ``tokens`` maps fixed bearer tokens to identities (see
      :class:`StaticTokenConfig`).

    The keys of one type are refused under another (with a non-default value), so a
    half-edited section cannot silently run with less checking than it seems to ask for.
    ``issuer`` must match the tokens' ``iss`` exactly, trailing slash included.
    """

    type: IncomingAuthType = "anonymous"
    """anonymous (development: no credentials), oidc (JWT bearer tokens) or static (fixed
    tokens)."""
    issuer: IssuerUrl | None = None
    """oidc: the tokens' iss, exactly (trailing slash included)."""
    audience: tuple[str, ...] = ()
    """oidc: what the tokens' aud must name (a string or a list)."""
    jwks_url: HttpUrl | None = None
    """oidc: where the issuer publishes its signing keys."""
    jwks_file: FilePath | None = None
    """oidc: or a file holding them (a JWK Set)."""
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    """oidc: accepted signature algorithms (public-key ones only)."""
    leeway_seconds: float = Field(default=30.0, ge=0, le=600, allow_inf_nan=False)
    """oidc: clock skew tolerated on exp, nbf and iat."""
    jwks_min_refresh_seconds: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    """oidc: an unknown key id refetches the keys at most this often."""
    jwks_max_age_seconds: float = Field(default=600.0, gt=0, allow_inf_nan=False)
    """oidc: the keys are refetched anyway once older than this."""
    jwks_timeout_seconds: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    """oidc: bound on fetching the keys."""
    extra_issuers: tuple[TrustedIssuerConfig, ...] = ()
    """oidc: further issuers trusted, each with its own keys."""
    tokens: tuple[StaticTokenConfig, ...] = ()
    """static: the accepted tokens and the identity each stands for."""

    @field_validator("audience", mode="before")
    @classmethod
    def _audience_list(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("audience")
    @classmethod
    def _audience(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not item.strip() for item in value):
            raise ValueError("an audience must not be empty")
        return value

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list at least one algorithm")
        problems = []
        for name in value:
            if name.lower() == "none":
                problems.append("'none' is never accepted: every token must be signed")
            elif name.upper().startswith("HS"):
                problems.append(f"{name!r} is symmetric: only public-key algorithms are "
                                "accepted, so that the keys the gateway holds cannot mint tokens")
            elif name not in ASYMMETRIC_ALGORITHMS:
                problems.append(f"unknown algorithm {name!r} "
                                f"(expected some of: {', '.join(ASYMMETRIC_ALGORITHMS)})")
        if problems:
            raise ValueError("; ".join(problems))
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _complete_for_type(self) -> Self:
        problems = []
        for key, field in type(self).model_fields.items():
            if key == "type" or key in _KEYS_OF_TYPE[self.type]:
                continue
            if getattr(self, key) != field.get_default(call_default_factory=True):
                owner = next(t for t, keys in _KEYS_OF_TYPE.items() if key in keys)
                problems.append(f"{key} applies only to type {owner!r}, not {self.type!r}")
        if self.type == "oidc":
            if self.issuer is None:
                problems.append("type 'oidc' needs issuer (the tokens' iss)")
            if not self.audience:
                problems.append("type 'oidc' needs audience (what the tokens' aud must name)")
            if (self.jwks_url is None) == (self.jwks_file is None):
                problems.append("type 'oidc' needs exactly one of jwks_url and jwks_file")
            issuers = [self.issuer, *(extra.issuer for extra in self.extra_issuers)]
            repeated = sorted({i for i in issuers if i is not None and issuers.count(i) > 1})
            if repeated:
                problems.append(f"issuer listed more than once: {', '.join(repeated)}")
        elif self.type == "static":
            if not self.tokens:
                problems.append("type 'static' needs at least one entry in tokens")
            for what in ("token_sha256", "token_env"):
                values = [getattr(t, what) for t in self.tokens if getattr(t, what) is not None]
                repeated = sorted({v for v in values if values.count(v) > 1})
                if repeated:
                    shown = "the same hash" if what == "token_sha256" else ", ".join(repeated)
                    problems.append(f"tokens list {what} {shown} more than once: "
                                    "a token must map to one identity")
        if problems:
            raise ValueError("; ".join(sorted(problems)))
        return self


class AuthzConfig(_Frozen):
    """Per-identity authorization of tools, prompts and resources by Cedar policies.

    The entity model is ToolHive vMCP's, so its policies carry over: the caller is
    ``Client::"<sub>"`` (``Client::"anonymous"`` without credentials) with each token
    claim as an attribute ``claim_<name>`` and the values of ``group_claims`` (dot paths
    such as ``realm_access.roles`` allowed) as parents ``THVGroup::"<group>"``; actions are
    ``Action::"call_tool"``, ``"get_prompt"`` and ``"read_resource"``; resources are
    ``Tool::"<name>"``, ``Prompt::"<name>"`` and ``Resource::"<uri>"`` (names as clients
    see them) with attributes ``name``, ``backend``, ``original_name``, the tool's
    annotations and, on calls, ``arg_<key>`` per argument, each a child of
    ``Backend::"<backend>"``. The context holds the claims and arguments too.

    Decisions: ``forbid`` beats ``permit``, nothing permitted is denied, and an evaluation
    error denies. Listings show only what the caller may use. ``policies_file`` is
    re-read on SIGHUP; an invalid new file keeps the running set.
    """

    type: Literal["cedar"] = "cedar"
    """The policy engine (cedar)."""
    policies_file: str
    """The Cedar policy file."""
    entities_file: str | None = None
    """A JSON file of static Cedar entities, such as group hierarchies (THVGroup parents)."""
    group_claims: tuple[str, ...] = ("groups", "roles")
    """Claims whose values become the caller's THVGroup parents (dot paths allowed)."""

    @field_validator("policies_file", "entities_file")
    @classmethod
    def _file(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be a file path")
        return value

    @field_validator("group_claims")
    @classmethod
    def _group_claims(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not claim or claim != claim.strip() for claim in value):
            raise ValueError("a claim name must be non-empty, without surrounding spaces")
        return tuple(dict.fromkeys(value))


class AuthConfig(_Frozen):
    """How callers authenticate to the gateway.

    ``resource_url`` is the public URL of the MCP endpoint, as clients reach it (through
    any proxy); it is the ``resource`` of the OAuth protected-resource metadata and what
    ``resource_metadata`` in a 401 points at. Without it, both are derived from each
    request's ``Host`` (and ``X-Forwarded-Proto``) and ``server.path``.
    """

    resource_url: str | None = None
    """This gateway's public URL for RFC 9728 metadata (default: derived from the request)."""
    incoming: IncomingAuthConfig = Field(default_factory=IncomingAuthConfig)
    """How callers authenticate."""
    authz: AuthzConfig | None = None
    """What each caller may use (Cedar policies); absent: every caller may use everything."""

    @field_validator("resource_url")
    @classmethod
    def _resource_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value, allow_query=False)


_OUTGOING_KEYS_OF_TYPE: dict[str, tuple[str, ...]] = {
    "none": (),
    "header": ("name", "value", "value_env"),
    "forward": (),
    "token_exchange": ("token_url", "audience", "client_id", "client_secret_env", "scope"),
}


_KEYS_OF_TYPE: dict[str, tuple[str, ...]] = {
    "anonymous": (),
    "oidc": _OIDC_KEYS,
    "static": ("tokens",),
}
