"""The backends section, and how their names are merged into one namespace."""


from __future__ import annotations

import re
import string
from typing import Annotated, Self

from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from vmcp.config._checks import (
    _BACKEND_NAME_PATTERN,
    _HEADER_NAME_PATTERN,
    _PREFIX_LITERAL_PATTERN,
    _RESERVED_HEADERS,
    ConflictMode,
    Transport,
    _check_backend_url,
    _check_exposed_name,
    _Frozen,
)
from vmcp.config.auth import (
    OutgoingAuthConfig,
)

_ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class EnvFrom(_Frozen):
    """A stdio server's environment variable taken from the gateway's own environment."""

    value_env: str
    """The gateway's environment variable whose value is passed (read when the process
    starts; unset is an error the backend's health shows)."""

    @field_validator("value_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not _ENV_NAME_PATTERN.match(value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value


class BackendConnectionsConfig(_Frozen):
    """The connections one replica may hold to one backend, in budgets of their own.

    Every backend has its own pools, so a backend that is saturated or hangs delays only
    its own callers: calls (POST, DELETE), long-lived streams (GET streams and the SSE
    transport's event stream) and health probes each draw on a separate budget, and probes
    never wait behind traffic. A request that finds its budget in use waits at most
    ``acquire_timeout_seconds`` for a connection, then fails with an error naming the backend
    as busy. Descriptors per replica: the sum over backends of ``calls + streams + health``.
    """

    calls: int = Field(default=100, ge=1)
    """Connections for calls (requests waiting for an answer) to this backend."""
    streams: int = Field(default=500, ge=1)
    """Connections for long-lived streams from this backend (one per listening session)."""
    health: int = Field(default=2, ge=1)
    """Connections for this backend's health probes."""
    acquire_timeout_seconds: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    """How long a request waits for a free connection of its budget before it fails as busy."""
    lean_calls: bool = True
    """Calls to a plain-http backend go over vmcp's lean HTTP/1.1 pool, which costs a
    third of a call's CPU less; false: over httpx2's general one (as https backends do)."""


class BackendConfig(_Frozen):
    """One backend MCP server.

    An HTTP backend (``streamable-http``, ``sse``) has a ``url``. A ``stdio`` backend has
    a ``command`` instead (with ``args``, ``env`` and ``cwd``): each replica runs ONE
    process of it, shared by all its client sessions, so it suits servers without
    per-session state or a single replica (see docs/stdio.md).

    ``name`` (``[a-z0-9_-]``, unique) is what the gateway's prefixes, routes and logs use.
    ``headers`` are sent with every request to the backend (for example an API key); headers
    the transport manages itself (``Host``, ``Mcp-Session-Id``, ``MCP-Protocol-Version``, ...)
    are refused, and so are those ``auth`` sets. ``call_timeout_seconds`` bounds each call
    to this backend; ``limits.call_timeout_seconds`` caps it for every backend.
    """

    name: str
    """The backend's name ([a-z0-9_-], unique): prefixes, routes, logs and metrics use it."""
    transport: Transport = "streamable-http"
    """streamable-http, sse (the older HTTP+SSE transport) or stdio (a command vmcp runs)."""
    url: str = Field(default="", validate_default=True)
    """The backend's MCP endpoint (http:// or https://); not for stdio."""
    command: str | None = None
    """stdio: the program to run (looked up on PATH), e.g. npx or uvx."""
    args: tuple[str, ...] = ()
    """stdio: the program's arguments."""
    env: dict[str, str | EnvFrom] = Field(default_factory=dict)
    """stdio: environment variables for the process, a literal value or {value_env: NAME}
    to pass one of the gateway's (the process gets only these and a minimal PATH/HOME
    set, not the gateway's whole environment)."""
    cwd: str | None = None
    """stdio: the process's working directory (default: the gateway's)."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Headers sent with every request to the backend (not those the transport or auth set).
    vmcp names itself `vmcp/<version>` in `User-Agent`, and keeps no cookie a backend sets:
    one client carries every session's requests."""
    connect_timeout_seconds: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    """Bound on opening (or re-attaching) a session on this backend."""
    call_timeout_seconds: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    """Bound on each call to this backend (limits.call_timeout_seconds caps it)."""
    auth: OutgoingAuthConfig = Field(default_factory=OutgoingAuthConfig)
    """How the gateway authenticates to this backend."""
    connections: BackendConnectionsConfig = Field(default_factory=BackendConnectionsConfig)
    """This backend's own connection budgets (calls, streams, health probes)."""

    @model_validator(mode="after")
    def _address(self) -> Self:
        if self.transport == "stdio":
            if not self.command:
                raise ValueError("transport stdio needs a command")
            if self.headers or self.auth.type != "none":
                raise ValueError("a stdio backend takes no headers or auth (use env)")
        elif self.command or self.args or self.env or self.cwd:
            raise ValueError("command, args, env and cwd are for transport: stdio only")
        return self

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
    def _url(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("transport") == "stdio":
            if value:
                raise ValueError("a stdio backend has a command, not a url")
            return value
        if not value:
            raise ValueError("Field required (or transport: stdio with a command)")
        return _check_backend_url(value)

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str | EnvFrom]) -> dict[str, str | EnvFrom]:
        bad = sorted(key for key in value if not _ENV_NAME_PATTERN.match(key))
        if bad:
            raise ValueError(f"not environment variable names: {', '.join(bad)}")
        return value

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
    visible: bool = True
    """false: left out of tools/list and refused to clients, yet callable from composite
    tools' steps."""

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if self.name is None and self.description is None and self.visible:
            raise ValueError("an override needs a name, a description or visible: false")
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
