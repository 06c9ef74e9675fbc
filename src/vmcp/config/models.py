"""The configuration models: one frozen pydantic model per section."""

from __future__ import annotations

import secrets
import string
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from vmcp.config._checks import (
    _BACKEND_NAME_PATTERN,
    _CROSS_CHECKED,
    _HEADER_NAME_PATTERN,
    _PREFIX_LITERAL_PATTERN,
    _REPLICA_ID_PATTERN,
    _RESERVED_HEADERS,
    ConflictMode,
    Loc,
    StoreKind,
    Transport,
    _check_backend_url,
    _check_exposed_name,
    _check_store,
    _Frozen,
    _HostHeader,
    _Origin,
)
from vmcp.config._report import (
    _format_loc,
)
from vmcp.config.auth import (
    AuthConfig,
    OutgoingAuthConfig,
)

# --------------------------------------------------------------------------- models


def _check_bind_host(value: str) -> str:
    if not value or any(c.isspace() or c in "/?#@" for c in value):
        raise ValueError(f"{value!r} is not a host name or address to bind")
    return value


class AdminConfig(_Frozen):
    """A listener of its own for ``/status``, ``/metrics`` and ``/ui``, off while ``port``
    is unset. When it is on, those endpoints leave the main port; ``/healthz`` and
    ``/readyz`` stay there (and are on this one too) for the probes of load balancers and
    orchestrators. It has no authentication: keep it on a loopback or private address."""

    host: Annotated[str, AfterValidator(_check_bind_host)] = "127.0.0.1"
    """Address of the admin listener (loopback by default)."""
    port: int | None = Field(default=None, ge=0, le=65535)
    """Its port; unset: no admin listener, and the ops endpoints are on the main port (where
    they then need a valid credential whenever auth.incoming is not anonymous)."""


class ServerConfig(_Frozen):
    """Where and how the gateway listens.

    ``allowed_origins`` lists browser origins allowed to call the endpoint; empty means only
    requests without an ``Origin`` header or from the gateway's own host. ``allowed_hosts``
    lists extra ``Host`` header values accepted besides the loopback names and the bound host
    (DNS-rebinding protection). Both are lower-cased. An empty ``replica_id`` is replaced by a
    random 8-hex-digit id, so every replica of a scaled-out deployment is told apart in logs.
    """

    host: str = "127.0.0.1"
    """Address to listen on (use 0.0.0.0 behind a load balancer or in a container)."""
    port: int = Field(default=4483, ge=0, le=65535)
    """TCP port of the MCP endpoint, /healthz and /readyz (0: any free port)."""
    path: str = "/mcp"
    """URL path of the MCP endpoint."""
    allowed_origins: tuple[_Origin, ...] = ()
    """Browser origins (scheme://host[:port]) allowed besides loopback ones; a request with
    another Origin gets 403."""
    allowed_hosts: tuple[_HostHeader, ...] = ()
    """Host header values accepted besides the loopback names and host: the names clients and
    load balancers use to reach the gateway. Others get 421 "Invalid Host header" while the
    check is on (always on when host is a loopback address or this list is not empty)."""
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    """Largest request body accepted (413 beyond)."""
    replica_id: str = Field(default="", validate_default=True)
    """This replica's name in logs, /status and metrics; empty: a random 8-hex-digit id."""
    admin: AdminConfig = Field(default_factory=AdminConfig)
    """The admin listener for /status, /metrics and /ui."""

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return _check_bind_host(value)

    @model_validator(mode="after")
    def _admin_port_differs(self) -> Self:
        if self.admin.port and self.admin.port == self.port:
            raise ValueError(f"admin.port {self.admin.port} is also the main port: "
                             "the admin listener needs a port of its own")
        return self

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
    """memory (one process only) or the Redis URL every replica shares: redis://, rediss://,
    unix://, redis+sentinel://h:p[,h:p]/service[/db], redis+cluster://h:p."""
    key_prefix: str = "vmcp:session:"
    """Prefix of every key and channel vmcp uses in Redis (must end with ':')."""
    ttl_seconds: float = Field(default=1800.0, gt=0, allow_inf_nan=False)
    """Sliding idle timeout of a session: each request extends it."""
    cache_capacity: int = Field(default=1000, ge=1)
    """Live sessions (open backend connections) this replica keeps; the least recently used
    beyond it are closed and restored on their next request."""
    store_timeout_seconds: float = Field(default=2.0, gt=0, allow_inf_nan=False)
    """Deadline of each store call; past it the request is answered 503 with Retry-After."""
    sweep_interval_seconds: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    """How often the memory store drops expired sessions."""
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


class BackendConfig(_Frozen):
    """One backend MCP server.

    ``name`` (``[a-z0-9_-]``, unique) is what the gateway's prefixes, routes and logs use.
    ``headers`` are sent with every request to the backend (for example an API key); headers
    the transport manages itself (``Host``, ``Mcp-Session-Id``, ``MCP-Protocol-Version``, ...)
    are refused, and so are those ``auth`` sets. ``call_timeout_seconds`` bounds each call
    to this backend; ``limits.call_timeout_seconds`` caps it for every backend.
    """

    name: str
    """The backend's name ([a-z0-9_-], unique): prefixes, routes, logs and metrics use it."""
    url: str
    """The backend's MCP endpoint (http:// or https://)."""
    transport: Transport = "streamable-http"
    """streamable-http or sse (the older HTTP+SSE transport)."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Headers sent with every request to the backend (not those the transport or auth set)."""
    connect_timeout_seconds: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    """Bound on opening (or re-attaching) a session on this backend."""
    call_timeout_seconds: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    """Bound on each call to this backend (limits.call_timeout_seconds caps it)."""
    auth: OutgoingAuthConfig = Field(default_factory=OutgoingAuthConfig)
    """How the gateway authenticates to this backend."""

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
    """The name the tool is exposed under instead."""
    description: str | None = None
    """The description the tool is exposed with instead."""

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
    """The backend's own tool names to expose (empty: all)."""
    exclude: tuple[str, ...] = ()
    """The backend's own tool names to hide (applied after include)."""
    overrides: dict[str, ToolOverride] = Field(default_factory=dict)
    """New names or descriptions, keyed by the backend's own tool name."""

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
    """How names are merged: prefix (every name prefixed), priority (bare names, the first
    backend in priority_order wins a clash) or manual (bare names, clashes resolved by
    overrides)."""
    prefix_format: str = "{backend}_"
    """The prefix, with {backend} for the backend's name ("" passes one backend's names through)."""
    priority_order: tuple[str, ...] = ()
    """priority: backends in order of precedence (others follow by name)."""
    tools: dict[str, BackendToolsConfig] = Field(default_factory=dict)
    """Per-backend tool filters and overrides, keyed by backend name."""

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
    """Backend sessions this replica opens at once (the others wait)."""
    max_sessions_per_identity: int = Field(default=0, ge=0)
    """Live sessions one identity may hold across replicas (0: no cap); an initialize beyond it
    gets 429."""
    call_timeout_seconds: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    """Bound on every backend call; a call still running is cancelled at the backend and answered
    with an error."""


class HealthConfig(_Frozen):
    """Periodic probes of every backend; new sessions skip backends found unhealthy.

    A probe opens and ends a backend session (``initialize`` then ``DELETE``), so it checks
    what a new client session would need. ``unhealthy_threshold`` consecutive failures mark
    a backend unhealthy; a probe slower than ``degraded_latency_seconds`` marks it degraded.
    """

    enabled: bool = True
    """Probe backends periodically (initialize + DELETE); new sessions skip unhealthy ones."""
    interval_seconds: float = Field(default=15.0, gt=0, allow_inf_nan=False)
    """Time between two probes of a backend."""
    timeout_seconds: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    """Bound on one probe."""
    unhealthy_threshold: int = Field(default=2, ge=1)
    """Failed probes in a row that make a backend unhealthy."""
    degraded_latency_seconds: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    """A probe slower than this marks the backend degraded."""
    breaker_failure_threshold: int = Field(default=0, ge=0)
    """Consecutive failed calls that open a backend's circuit breaker; 0 = no breaker."""
    breaker_open_seconds: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    """How long an open circuit fails calls at once before a trial call."""


class TelemetryConfig(_Frozen):
    """Tracing export; off while ``otlp_endpoint`` is empty (e.g.
    ``http://collector:4318/v1/traces``)."""

    otlp_endpoint: str = ""
    """OTLP/HTTP traces endpoint (e.g. http://collector:4318/v1/traces); empty: no export."""
    service_name: str = "vmcp"
    """service.name of the exported spans."""
    sample_ratio: float = Field(default=1.0, ge=0, le=1, allow_inf_nan=False)
    """Fraction of new traces sampled (0 to 1); a client's sampled traceparent is followed."""


class StatelessConfig(_Frozen):
    """Serving clients of the stateless revision (2026-07-28), which have no session.

    For such a client a session-based backend needs an upstream session all the same: one
    per identity and backend on each replica, ended after ``upstream_idle_seconds``
    unused. Each backend's catalog is re-listed for them at most every
    ``catalog_ttl_seconds`` (or as the backend's own caching hint allows, if longer). A
    backend's question to the client (sampling, elicitation, roots) becomes an
    ``input_required`` round whose answer must come back within ``answer_timeout_seconds``.
    Changes to what they can list reach them on ``subscriptions/listen`` streams, at most
    ``max_listeners`` per replica, each buffering at most ``listener_buffer`` changes.
    """

    upstream_idle_seconds: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    """An upstream session held for a stateless client's identity is ended after this long
    unused."""
    catalog_ttl_seconds: float = Field(default=5.0, ge=0, allow_inf_nan=False)
    """Backend catalogs for stateless clients are re-listed at most this often (or as the
    backend's hint allows, if longer)."""
    answer_timeout_seconds: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    """Bound on the client's answer to an input_required round."""
    max_listeners: int = Field(default=1024, ge=1)
    """subscriptions/listen streams this replica serves at once; one more is refused (503)."""
    listener_buffer: int = Field(default=64, ge=1)
    """Changes buffered for one listen stream; a client that lets more pile up is ended."""
    coalesce_seconds: float = Field(default=0.1, ge=0, allow_inf_nan=False)
    """Changes of one kind within this window reach listen streams as one notification."""


class StatusConfig(_Frozen):
    """The operator's view of the whole deployment on /status and /ui.

    Every ``heartbeat_seconds`` each replica takes a sample of its traffic and announces
    itself in the store (version, start time, live sessions, backends' health and its
    last ``history_samples`` samples), so any replica's page shows every replica. One not
    heard from for ``expiry_seconds`` is shown as gone, and dropped ``forget_seconds``
    after its last beat.
    """

    heartbeat_seconds: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    """How often a replica samples its traffic and announces itself in the store."""
    expiry_seconds: float = Field(default=15.0, gt=0, allow_inf_nan=False)
    """A replica not heard from for this long is shown as gone (more than one heartbeat)."""
    forget_seconds: float = Field(default=3600.0, gt=0, allow_inf_nan=False)
    """A gone replica is dropped from the view this long after its last heartbeat."""
    history_samples: int = Field(default=60, ge=2, le=720)
    """Samples kept per replica for the charts (60 x 5 s: the last 5 minutes)."""

    @model_validator(mode="after")
    def _windows(self) -> Self:
        if self.expiry_seconds <= self.heartbeat_seconds:
            raise ValueError(f"expiry_seconds ({self.expiry_seconds:g}) must be longer than "
                             f"heartbeat_seconds ({self.heartbeat_seconds:g}), or a live "
                             "replica would be shown as gone between two beats")
        if self.forget_seconds < self.expiry_seconds:
            raise ValueError(f"forget_seconds ({self.forget_seconds:g}) must be at least "
                             f"expiry_seconds ({self.expiry_seconds:g})")
        return self


class VmcpConfig(_Frozen):
    """The whole configuration.

    Besides each section's own checks, backend names must be unique, ``priority_order`` and
    the keys of ``aggregation.tools`` must name configured backends, and ``prefix`` mode with
    several backends needs ``{backend}`` in ``prefix_format``.
    """

    server: ServerConfig = Field(default_factory=ServerConfig)
    """Where and how the gateway listens."""
    session: SessionConfig = Field(default_factory=SessionConfig)
    """Where session metadata lives, and for how long."""
    backends: tuple[BackendConfig, ...] = ()
    """The backend MCP servers (name and url required)."""
    aggregation: AggregationConfig = Field(default_factory=AggregationConfig)
    """How the backends' names are merged into one namespace."""
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    """Resource limits."""
    auth: AuthConfig = Field(default_factory=AuthConfig)
    """Who may call the gateway."""
    health: HealthConfig = Field(default_factory=HealthConfig)
    """Backend health probes and the circuit breaker."""
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    """Trace export."""
    stateless: StatelessConfig = Field(default_factory=StatelessConfig)
    """Serving clients of the stateless revision (2026-07-28)."""
    status: StatusConfig = Field(default_factory=StatusConfig)
    """The operator's view of every replica on /status and /ui."""

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


