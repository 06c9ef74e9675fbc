"""The configuration models: one frozen pydantic model per section."""

from __future__ import annotations

import secrets
import string
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from vmcp.config._checks import (
    _BACKEND_NAME_PATTERN,
    _CROSS_CHECKED,
    _ENV_NAME_PATTERN,
    _HEADER_NAME_PATTERN,
    _HOP_BY_HOP_HEADERS,
    _PREFIX_LITERAL_PATTERN,
    _REPLICA_ID_PATTERN,
    _RESERVED_HEADERS,
    _SHA256_HEX_PATTERN,
    _TRANSPORT_HEADERS,
    ASYMMETRIC_ALGORITHMS,
    DEFAULT_ALGORITHMS,
    ConflictMode,
    IncomingAuthType,
    Loc,
    OutgoingAuthType,
    StoreKind,
    Transport,
    _check_backend_url,
    _check_exposed_name,
    _check_http_url,
    _check_identity_part,
    _check_store,
    _HostHeader,
    _Origin,
)
from vmcp.config._report import (
    _format_loc,
)

# --------------------------------------------------------------------------- models


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerConfig(_Frozen):
    """Where and how the gateway listens.

    ``allowed_origins`` lists browser origins allowed to call the endpoint; empty means only
    requests without an ``Origin`` header or from the gateway's own host. ``allowed_hosts``
    lists extra ``Host`` header values accepted besides the loopback names and the bound host
    (DNS-rebinding protection). Both are lower-cased. An empty ``replica_id`` is replaced by a
    random 8-hex-digit id, so every replica of a scaled-out deployment is told apart in logs.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=4483, ge=0, le=65535)
    path: str = "/mcp"
    allowed_origins: tuple[_Origin, ...] = ()
    allowed_hosts: tuple[_HostHeader, ...] = ()
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    replica_id: str = Field(default="", validate_default=True)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value or any(c.isspace() or c in "/?#@" for c in value):
            raise ValueError(f"{value!r} is not a host name or address to bind")
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or any(c.isspace() or c in "?#" for c in value):
            raise ValueError(f"{value!r} must be a URL path starting with '/' (no query)")
        return value

    @field_validator("replica_id")
    @classmethod
    def _replica_id(cls, value: str) -> str:
        if not value:
            return secrets.token_hex(4)
        if not _REPLICA_ID_PATTERN.match(value):
            raise ValueError(f"{value!r} must be 1-64 characters of A-Z a-z 0-9 _ . -")
        return value


class SessionConfig(_Frozen):
    """Where session metadata lives and for how long.

    ``store`` is ``memory`` (one process only) or a Redis URL - ``redis://``, ``rediss://``,
    ``unix://``, ``redis+sentinel://host:port[,host:port]/service[/db]`` or
    ``redis+cluster://host:port`` - which every replica must share. ``ttl_seconds`` is a sliding
    idle timeout; it is a float so tests can use sub-second values.
    """

    store: str = "memory"
    key_prefix: str = "vmcp:session:"
    ttl_seconds: float = Field(default=1800.0, gt=0, allow_inf_nan=False)
    cache_capacity: int = Field(default=1000, ge=1)
    store_timeout_seconds: float = Field(default=2.0, gt=0, allow_inf_nan=False)
    sweep_interval_seconds: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    catalog_ttl_seconds: float = Field(default=30.0, ge=0, allow_inf_nan=False)
    """How long a backend's listed tools/resources/prompts are reused by new sessions and
    restores on this replica (0: list on every one). ``list_changed`` refreshes at once."""
    liveness_interval_seconds: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    """0: every request checks its session in the store (the guarantee). A value lets a
    cached session skip that check for so long after the last one: fewer store round
    trips, but if the ended-session broadcast is missed, a session ended on another
    replica can be served here for up to that long."""

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        return _check_store(value)

    @field_validator("key_prefix")
    @classmethod
    def _key_prefix(cls, value: str) -> str:
        if not value.endswith(":") or any(c.isspace() for c in value):
            raise ValueError(f"{value!r} must end with ':' and contain no whitespace")
        return value

    @property
    def store_kind(self) -> StoreKind:
        """``memory`` or the URL scheme of the Redis store."""
        if self.store == "memory":
            return "memory"
        return typing.cast(StoreKind, self.store.partition("://")[0])


_OUTGOING_KEYS_OF_TYPE: dict[str, tuple[str, ...]] = {
    "none": (),
    "header": ("name", "value", "value_env"),
    "forward": (),
    "token_exchange": ("token_url", "audience", "client_id", "client_secret_env", "scope"),
}


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
    name: str | None = None
    value: str | None = None
    value_env: str | None = None
    token_url: str | None = None
    audience: str | None = None
    client_id: str | None = None
    client_secret_env: str | None = None
    scope: str | None = None
    allow_headers: tuple[str, ...] = ()

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


class BackendConfig(_Frozen):
    """One backend MCP server.

    ``name`` (``[a-z0-9_-]``, unique) is what the gateway's prefixes, routes and logs use.
    ``headers`` are sent with every request to the backend (for example an API key); headers
    the transport manages itself (``Host``, ``Mcp-Session-Id``, ``MCP-Protocol-Version``, ...)
    are refused, and so are those ``auth`` sets. ``call_timeout_seconds`` bounds each call
    to this backend; ``limits.call_timeout_seconds`` caps it for every backend.
    """

    name: str
    url: str
    transport: Transport = "streamable-http"
    headers: dict[str, str] = Field(default_factory=dict)
    connect_timeout_seconds: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    call_timeout_seconds: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    auth: OutgoingAuthConfig = Field(default_factory=OutgoingAuthConfig)

    @model_validator(mode="after")
    def _auth_headers_not_static(self) -> Self:
        both = sorted(self.auth.header_names() & {h.lower() for h in self.headers})
        if both:
            raise ValueError(f"headers sets {', '.join(both)}, which auth sets too")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _BACKEND_NAME_PATTERN.match(value):
            raise ValueError(f"{value!r} must be 1-64 characters of a-z 0-9 _ -")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_backend_url(value)

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        problems = []
        for header, text in value.items():
            if not _HEADER_NAME_PATTERN.match(header):
                problems.append(f"{header!r} is not a valid header name")
            elif header.lower() in _RESERVED_HEADERS:
                problems.append(f"{header!r} is set by the transport and cannot be configured")
            if any(c in text for c in "\r\n\x00"):
                problems.append(f"the value of {header!r} contains a line break or NUL")
        if problems:
            raise ValueError("; ".join(problems))
        return value


class ToolOverride(_Frozen):
    """A new exposed name and/or description for one of a backend's tools."""

    name: Annotated[str, AfterValidator(_check_exposed_name)] | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if self.name is None and self.description is None:
            raise ValueError("an override needs a name, a description or both")
        return self


class BackendToolsConfig(_Frozen):
    """Which of one backend's tools are exposed, and under what names.

    Filters use the backend's own tool names: ``include`` (empty means all) is applied first,
    then ``exclude``. ``overrides`` is keyed by the backend's own tool name as well.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    overrides: dict[str, ToolOverride] = Field(default_factory=dict)

    @field_validator("exclude")
    @classmethod
    def _exclude(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        both = sorted(set(value) & set(info.data.get("include", ())))
        if both:
            raise ValueError(f"listed in both include and exclude: {', '.join(both)}")
        return value

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, value: dict[str, ToolOverride]) -> dict[str, ToolOverride]:
        renamed: dict[str, list[str]] = {}
        for tool, override in value.items():
            if override.name is not None:
                renamed.setdefault(override.name, []).append(tool)
        clashes = [
            f"{', '.join(sorted(tools))} are all renamed to {new_name!r}"
            for new_name, tools in sorted(renamed.items())
            if len(tools) > 1
        ]
        if clashes:
            raise ValueError("; ".join(clashes))
        return value


class AggregationConfig(_Frozen):
    """How the backends' tools and prompts are merged into one namespace.

    ``conflict``:

    * ``prefix`` - every tool and prompt is exposed as ``prefix_format.format(backend=...)``
      followed by its name. With more than one backend ``prefix_format`` must contain
      ``{backend}`` (an empty or constant prefix would make backends shadow each other); with a
      single backend it may be ``""`` so names pass through unchanged.
    * ``priority`` - names are exposed bare; a name several backends share goes to the first of
      them in ``priority_order`` (backends not listed follow in name order) and the others are
      exposed with their prefix in front (overridden or not), or dropped when
      ``prefix_format`` is ``""``.
    * ``manual`` - names are exposed bare and every clash must be resolved by ``overrides``;
      ``prefix_format`` is only used for prompts, which have no overrides (see
      :func:`vmcp.aggregate.build_routing_table`).

    ``tools`` is keyed by backend name. Overrides apply before conflicts are resolved; in
    ``prefix`` mode an override's name is used as given, without the prefix, so it can be
    chosen freely.
    """

    conflict: ConflictMode = "prefix"
    prefix_format: str = "{backend}_"
    priority_order: tuple[str, ...] = ()
    tools: dict[str, BackendToolsConfig] = Field(default_factory=dict)

    @field_validator("prefix_format")
    @classmethod
    def _prefix_format(cls, value: str) -> str:
        try:
            fields = list(string.Formatter().parse(value))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a format string: {exc}") from None
        for literal, field, spec, conversion in fields:
            if field is not None and (field != "backend" or spec or conversion):
                raise ValueError(f"{value!r} may only use the placeholder {{backend}}")
            if not _PREFIX_LITERAL_PATTERN.match(literal):
                raise ValueError(
                    f"{value!r} may only contain A-Z a-z 0-9 _ . - besides {{backend}}"
                )
        return value

    @field_validator("priority_order")
    @classmethod
    def _priority_order(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"backends listed more than once: {', '.join(repeated)}")
        return value

    def prefix_for(self, backend: str) -> str:
        """The prefix ``prefix_format`` gives ``backend``'s names."""
        return self.prefix_format.format(backend=backend)


class LimitsConfig(_Frozen):
    """Resource limits.

    ``max_sessions_per_identity`` (0: unlimited) caps the live sessions one identity
    (issuer and subject) may hold across all replicas; an ``initialize`` beyond it is
    refused with 429. ``call_timeout_seconds`` caps every backend call (a backend's own
    ``call_timeout_seconds`` can only lower it): a call still running then is cancelled
    at the backend and answered with an error naming it.
    """

    max_concurrent_backend_connects: int = Field(default=8, ge=1)
    max_sessions_per_identity: int = Field(default=0, ge=0)
    call_timeout_seconds: float = Field(default=300.0, gt=0, allow_inf_nan=False)


class HealthConfig(_Frozen):
    """Periodic probes of every backend; new sessions skip backends found unhealthy.

    A probe opens and ends a backend session (``initialize`` then ``DELETE``), so it checks
    what a new client session would need. ``unhealthy_threshold`` consecutive failures mark
    a backend unhealthy; a probe slower than ``degraded_latency_seconds`` marks it degraded.
    """

    enabled: bool = True
    interval_seconds: float = Field(default=15.0, gt=0, allow_inf_nan=False)
    timeout_seconds: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    unhealthy_threshold: int = Field(default=2, ge=1)
    degraded_latency_seconds: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    breaker_failure_threshold: int = Field(default=0, ge=0)
    """Consecutive failed calls that open a backend's circuit breaker; 0 = no breaker."""
    breaker_open_seconds: float = Field(default=10.0, gt=0, allow_inf_nan=False)


class TelemetryConfig(_Frozen):
    """Tracing export; off while ``otlp_endpoint`` is empty (e.g.
    ``http://collector:4318/v1/traces``)."""

    otlp_endpoint: str = ""
    service_name: str = "vmcp"
    sample_ratio: float = Field(default=1.0, ge=0, le=1, allow_inf_nan=False)


class StaticTokenConfig(_Frozen):
    """One bearer token of ``static`` incoming auth and the identity it stands for.

    The token is given either as ``token_sha256`` (the hex SHA-256 of the token, so the
    file holds no usable secret) or as ``token_env`` (the name of an environment variable
    holding the token, read and hashed at start-up); exactly one of the two.
    """

    token_sha256: str | None = None
    token_env: str | None = None
    issuer: Annotated[str, AfterValidator(_check_identity_part)]
    subject: Annotated[str, AfterValidator(_check_identity_part)]

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

    issuer: str
    jwks_url: str | None = None
    jwks_file: str | None = None

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        return _check_http_url(value, allow_query=False)

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value)

    @field_validator("jwks_file")
    @classmethod
    def _jwks_file(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be a file path")
        return value

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
_KEYS_OF_TYPE: dict[str, tuple[str, ...]] = {
    "anonymous": (),
    "oidc": _OIDC_KEYS,
    "static": ("tokens",),
}


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
    issuer: str | None = None
    audience: tuple[str, ...] = ()
    jwks_url: str | None = None
    jwks_file: str | None = None
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway_seconds: float = Field(default=30.0, ge=0, le=600, allow_inf_nan=False)
    jwks_min_refresh_seconds: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    jwks_max_age_seconds: float = Field(default=600.0, gt=0, allow_inf_nan=False)
    jwks_timeout_seconds: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    extra_issuers: tuple[TrustedIssuerConfig, ...] = ()
    tokens: tuple[StaticTokenConfig, ...] = ()

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value, allow_query=False)

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value)

    @field_validator("jwks_file")
    @classmethod
    def _jwks_file(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be a file path")
        return value

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


class AuthConfig(_Frozen):
    """How callers authenticate to the gateway.

    ``resource_url`` is the public URL of the MCP endpoint, as clients reach it (through
    any proxy); it is the ``resource`` of the OAuth protected-resource metadata and what
    ``resource_metadata`` in a 401 points at. Without it, both are derived from each
    request's ``Host`` (and ``X-Forwarded-Proto``) and ``server.path``.
    """

    resource_url: str | None = None
    incoming: IncomingAuthConfig = Field(default_factory=IncomingAuthConfig)

    @field_validator("resource_url")
    @classmethod
    def _resource_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value, allow_query=False)


class StatelessConfig(_Frozen):
    """Serving clients of the stateless revision (2026-07-28), which have no session.

    For such a client a session-based backend needs an upstream session all the same: one
    per identity and backend on each replica, ended after ``upstream_idle_seconds``
    unused. Each backend's catalog is re-listed for them at most every
    ``catalog_ttl_seconds`` (or as the backend's own caching hint allows, if longer). A
    backend's question to the client (sampling, elicitation, roots) becomes an
    ``input_required`` round whose answer must come back within ``answer_timeout_seconds``.
    """

    upstream_idle_seconds: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    catalog_ttl_seconds: float = Field(default=5.0, ge=0, allow_inf_nan=False)
    answer_timeout_seconds: float = Field(default=300.0, gt=0, allow_inf_nan=False)


class VmcpConfig(_Frozen):
    """The whole configuration.

    Besides each section's own checks, backend names must be unique, ``priority_order`` and
    the keys of ``aggregation.tools`` must name configured backends, and ``prefix`` mode with
    several backends needs ``{backend}`` in ``prefix_format``.
    """

    server: ServerConfig = Field(default_factory=ServerConfig)
    session: SessionConfig = Field(default_factory=SessionConfig)
    backends: tuple[BackendConfig, ...] = ()
    aggregation: AggregationConfig = Field(default_factory=AggregationConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    stateless: StatelessConfig = Field(default_factory=StatelessConfig)

    @model_validator(mode="after")
    def _cross_section(self, info: ValidationInfo) -> Self:
        if isinstance(info.context, Mapping) and info.context.get(_CROSS_CHECKED):
            return self
        problems = _cross_section_problems(self.model_dump())
        if problems:
            raise ValueError("; ".join(_format_loc(loc) + ": " + msg for loc, msg in problems))
        return self

    def backend(self, name: str) -> BackendConfig | None:
        """The backend called ``name``, if configured."""
        return next((b for b in self.backends if b.name == name), None)


def _caller_credential_problems(data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
    """Outgoing auth that passes on the caller's token needs incoming auth that has one:
    an anonymous gateway refuses every ``Authorization`` header, so there is nothing to
    forward or exchange."""
    auth = data.get("auth")
    incoming = auth.get("incoming") if isinstance(auth, Mapping) else None
    incoming_type = incoming.get("type", "anonymous") if isinstance(incoming, Mapping) else (
        "anonymous")
    if incoming_type != "anonymous":
        return []
    backends = data.get("backends", ())
    problems: list[tuple[Loc, str]] = []
    for index, backend in enumerate(backends if isinstance(backends, list | tuple) else ()):
        outgoing = backend.get("auth") if isinstance(backend, Mapping) else None
        kind = outgoing.get("type") if isinstance(outgoing, Mapping) else None
        if kind in ("forward", "token_exchange"):
            problems.append((("backends", index, "auth", "type"),
                             f"{kind!r} passes on the caller's token, but auth.incoming.type is "
                             "'anonymous' (no tokens): use 'oidc' or 'static'"))
    return problems


def _cross_section_problems(data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
    """Checks spanning sections, on raw data so they run even when other fields are invalid.

    References to backends are checked against the entries that have a string name, and
    only when ``backends`` is a list at all.
    """
    problems: list[tuple[Loc, str]] = []
    backends = data.get("backends", ())
    first_index: dict[str, int] = {}
    is_list = isinstance(backends, list | tuple)
    for index, backend in enumerate(backends if isinstance(backends, list | tuple) else ()):
        name = backend.get("name") if isinstance(backend, Mapping) else None
        if not isinstance(name, str):
            continue
        if name in first_index:
            problems.append(
                (
                    ("backends", index, "name"),
                    f"duplicate backend name {name!r} (also backends[{first_index[name]}])",
                )
            )
        else:
            first_index[name] = index
    problems += _caller_credential_problems(data)
    aggregation = data.get("aggregation", {})
    if not isinstance(aggregation, Mapping):
        return problems
    known = ", ".join(sorted(first_index)) or "none configured"
    if is_list:
        order = aggregation.get("priority_order", ())
        for index, name in enumerate(order if isinstance(order, list | tuple) else ()):
            if isinstance(name, str) and name not in first_index:
                problems.append(
                    (
                        ("aggregation", "priority_order", index),
                        f"unknown backend {name!r} (backends: {known})",
                    )
                )
        tools = aggregation.get("tools", {})
        for name in tools if isinstance(tools, Mapping) else ():
            if name not in first_index:
                problems.append(
                    (
                        ("aggregation", "tools", name),
                        f"unknown backend {name!r} (backends: {known})",
                    )
                )
    conflict = aggregation.get("conflict", "prefix")
    prefix_format = aggregation.get("prefix_format", "{backend}_")
    if conflict == "prefix" and isinstance(prefix_format, str) and len(first_index) > 1:
        try:
            fields = {field for _, field, _, _ in string.Formatter().parse(prefix_format)}
        except ValueError:
            fields = {"backend"}  # malformed: reported by the field's own check
        if "backend" not in fields:
            problems.append(
                (
                    ("aggregation", "prefix_format"),
                    f"{prefix_format!r} must contain {{backend}} when conflict is 'prefix' and "
                    "there are several backends, or their tools would shadow each other "
                    "(use conflict: priority or manual for bare names)",
                )
            )
    return problems


