"""The configuration models: one frozen pydantic model per section."""

from __future__ import annotations

import secrets
import typing
from collections.abc import Mapping
from typing import Annotated, Self

from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from vmcp.config._checks import (
    _CROSS_CHECKED,
    _REPLICA_ID_PATTERN,
    AUDIT_EVENT_TYPES,
    StoreKind,
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
)
from vmcp.config.backends import AggregationConfig, BackendConfig
from vmcp.config.composite import CompositeToolConfig
from vmcp.config.cross_checks import cross_section_problems

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
    max_connections: int = Field(default=1000, ge=1)
    """Open client connections this replica keeps (both listeners); one more is answered 503
    with Retry-After and closed at once. Keep it below the process's file-descriptor limit
    less the backend connections (the gateway raises its soft limit to the hard one)."""
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    """Largest request head (request line and headers) accepted; 431 beyond."""
    header_timeout_seconds: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    """A request head must arrive whole within this time of its first byte (or of the
    connection's opening); 408 and the connection closed otherwise."""
    body_timeout_seconds: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    """A request body must arrive whole within this time after its head; 408 otherwise."""
    keep_alive_seconds: int = Field(default=75, ge=1)
    """How long an idle client connection stays open: longer than a balancer keeps idle
    connections to the replicas (60 s for nginx and cloud balancers), else a balancer may
    send a request on a connection just as the replica closes it, and answer 502."""
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
    ``redis+cluster://host:port[,host:port]`` - which every replica must share.
    ``ttl_seconds`` is a sliding idle timeout; it is a float so tests can use sub-second
    values.
    """

    store: str = "memory"
    """memory (one process only) or the Redis URL every replica shares: redis://, rediss://,
    unix://, redis+sentinel://h:p[,h:p]/service[/db], redis+cluster://h:p[,h:p]."""
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
    """How often expired sessions are looked for: the memory store drops them, and their
    upstream sessions are ended (by one replica, whichever claims each first)."""
    catalog_ttl_seconds: float = Field(default=30.0, ge=0, allow_inf_nan=False)
    """How long what a backend offers (its capabilities and listed tools/resources/prompts)
    is reused on this replica by new sessions, listings of backends a session has not used
    yet, and restores (0: fetched again every time, over a short-lived upstream session).
    ``list_changed`` refreshes at once."""
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


class AuditConfig(_Frozen):
    """An audit trail: one JSON event per MCP operation and per refused request, in the
    shape ToolHive emits (``type``, ``loggedAt``, ``outcome``, ``subjects``, ``source``,
    ``target``, ``metadata``). Off by default.

    Writing never holds a call up: events go through a bounded queue to a background
    writer, and what does not fit is dropped and counted (``vmcp_audit_events_dropped``).
    Call arguments are left out unless ``include_arguments``; then the values of keys named
    in ``redact_keys`` (any depth, case-insensitive) are replaced by ``"[REDACTED]"`` and the
    whole is cut to ``max_data_bytes``.
    """

    enabled: bool = False
    """Write audit events."""
    sink: str = "stdout"
    """Where: stdout, or file:PATH (appended to, one JSON event per line)."""
    event_types: tuple[str, ...] = AUDIT_EVENT_TYPES
    """The event types written (default: all)."""
    include_arguments: bool = False
    """Also record the arguments of calls (redacted and capped)."""
    redact_keys: tuple[str, ...] = ("password", "secret", "token", "api_key", "apikey",
                                    "authorization", "credential", "private_key")
    """Argument keys whose values are replaced by [REDACTED]."""
    max_data_bytes: int = Field(default=4096, ge=64, le=1_048_576)
    """Cap on the recorded arguments of one event (bytes of JSON)."""
    queue_size: int = Field(default=10_000, ge=1, le=1_000_000)
    """Events waiting to be written; beyond this they are dropped and counted."""

    @field_validator("sink")
    @classmethod
    def _sink(cls, value: str) -> str:
        if value == "stdout":
            return value
        kind, sep, path = value.partition(":")
        if kind != "file" or not sep or not path.strip():
            raise ValueError("must be 'stdout' or 'file:PATH'")
        return value

    @field_validator("event_types")
    @classmethod
    def _event_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in AUDIT_EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event types {', '.join(unknown)} "
                             f"(known: {', '.join(AUDIT_EVENT_TYPES)})")
        return tuple(dict.fromkeys(value))

    @field_validator("redact_keys")
    @classmethod
    def _redact_keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(key.lower() for key in value if key))


class LimitsConfig(_Frozen):
    """Resource limits.

    ``max_sessions_per_identity`` caps the live sessions one authenticated identity
    (issuer and subject) may hold across all replicas; an ``initialize`` beyond it is
    refused with 429. ``max_initializes_in_flight`` caps the ``initialize`` requests one
    replica serves at once; beyond it they get 503 with ``Retry-After``.
    ``call_timeout_seconds`` caps every backend call (a backend's own
    ``call_timeout_seconds`` can only lower it): a call still running then is cancelled
    at the backend and answered with an error naming it. Each request's response stream
    holds at most ``response_buffer_events`` / ``response_buffer_bytes`` that the client
    has not read; beyond that the gateway stops reading the backend's response, and a
    stream still full after ``slow_client_seconds`` is ended with a JSON-RPC error
    (-32000) as the request's answer.
    """

    max_concurrent_backend_connects: int = Field(default=8, ge=1)
    """Backend sessions this replica opens at once (the others wait)."""
    max_sessions_per_identity: int = Field(default=100, ge=0)
    """Live sessions one authenticated identity may hold across replicas (0: no cap); an
    initialize beyond it gets 429. Anonymous callers all share one identity, so the cap does
    not apply to them (max_initializes_in_flight and session.cache_capacity bound them)."""
    max_initializes_in_flight: int = Field(default=64, ge=1)
    """Initialize requests this replica serves at once; more get 503 with Retry-After."""
    call_timeout_seconds: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    """Bound on every backend call; a call still running is cancelled at the backend and answered
    with an error."""
    abandoned_call_grace_seconds: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    """A call whose client closed its connection before the answer, and did not resume the
    stream (Last-Event-ID) within this time, is cancelled at the backend. Only with the
    memory store: with Redis the client may resume on another replica, and the call runs
    to its end or its timeout."""
    max_streams_per_session: int = Field(default=4, ge=1)
    """GET streams one session may hold open on a replica at once; one more gets 429 with
    Retry-After."""
    max_streams: int = Field(default=500, ge=1)
    """GET streams a replica holds open in all (each also holds a stream from every backend of
    its session); one more gets 503 with Retry-After."""
    response_buffer_events: int = Field(default=1000, ge=1)
    """Events a request's response stream holds for a client that reads slowly; beyond it the
    backend's response is no longer read until the client catches up."""
    response_buffer_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Bytes a request's response stream holds for a client that reads slowly (as
    response_buffer_events)."""
    slow_client_seconds: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    """How long a response stream may stay full, or a write wait for the client, before the
    request is ended with a -32000 error (or the connection closed; the client may resume)."""


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
    max_resource_subscriptions: int = Field(default=64, ge=1)
    """Resource URIs one listen request may subscribe to; more is refused (-32602)."""


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
    """The backend MCP servers (name and url required; a stdio backend has a command instead
    of a url)."""
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
    audit: AuditConfig = Field(default_factory=AuditConfig)
    """The audit trail of MCP operations and refusals."""
    composite_tools: tuple[CompositeToolConfig, ...] = ()
    """Tools served by running a workflow over the backends' tools."""

    @model_validator(mode="after")
    def _cross_section(self, info: ValidationInfo) -> Self:
        if isinstance(info.context, Mapping) and info.context.get(_CROSS_CHECKED):
            return self
        problems = cross_section_problems(self.model_dump())
        if problems:
            raise ValueError("; ".join(_format_loc(loc) + ": " + msg for loc, msg in problems))
        return self

    def backend(self, name: str) -> BackendConfig | None:
        """The backend called ``name``, if configured."""
        return next((b for b in self.backends if b.name == name), None)
