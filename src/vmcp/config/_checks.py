"""Constants and value checks shared by the configuration models."""

from __future__ import annotations

import re
from typing import Annotated, Literal, TypeAlias
from urllib.parse import parse_qs, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
)

ENV_PREFIX = "VMCP_"
ENV_NESTED_DELIMITER = "__"

EXPOSED_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
"""What an MCP tool or prompt name may look like: 1-64 of ``A-Z a-z 0-9 _ . -``."""

_BACKEND_NAME_PATTERN = re.compile(r"^[a-z0-9_-]{1,64}$")
_REPLICA_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ORIGIN_PATTERN = re.compile(r"^[a-z][a-z0-9+.-]*://(\[[0-9a-f:.]+\]|[a-z0-9._~-]+)(:[0-9]{1,5})?$")
_HOST_HEADER_PATTERN = re.compile(r"^(\[[0-9a-f:.]+\]|[a-z0-9._~-]+)(:[0-9]{1,5})?$")
_HEADER_NAME_PATTERN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_PREFIX_LITERAL_PATTERN = re.compile(r"^[A-Za-z0-9_.-]*$")
_SHA256_HEX_PATTERN = re.compile(r"^[0-9a-fA-F]{64}$")
_ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

ASYMMETRIC_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "ES256K", "EdDSA",
)
"""The JWT signature algorithms incoming auth can accept: public-key ones only."""

DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA")

# Headers the transport itself sets per request; a configured value would corrupt the protocol.
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "mcp-session-id",
        "mcp-protocol-version",
        "last-event-id",
    }
)

# Headers that describe one HTTP hop, or that the MCP transport sets itself: copying a
# client's value to a backend would corrupt the connection or the protocol.
_HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
_TRANSPORT_HEADERS = frozenset(
    {"mcp-session-id", "mcp-protocol-version", "last-event-id", "accept", "content-type"}
)

AUDIT_EVENT_TYPES = (
    "mcp_initialize", "mcp_tool_call", "mcp_tools_list", "mcp_prompt_get", "mcp_prompts_list",
    "mcp_resource_read", "mcp_resources_list", "mcp_resource_templates_list",
    "mcp_completion", "mcp_ping", "mcp_logging", "mcp_notification", "mcp_discover",
    "mcp_session_end", "mcp_request", "mcp_composite_start", "mcp_composite_step",
    "mcp_composite_elicitation", "mcp_composite_end",
)
"""The audit event types, named as ToolHive names them (plus ``mcp_discover``,
``mcp_resource_templates_list``, ``mcp_session_end`` and the ``mcp_composite_*`` events
of composite tool runs, which it has no name for)."""

ConflictMode: TypeAlias = Literal["prefix", "priority", "manual"]
IncomingAuthType: TypeAlias = Literal["anonymous", "oidc", "static"]
OutgoingAuthType: TypeAlias = Literal["none", "header", "forward", "token_exchange"]
Transport: TypeAlias = Literal["streamable-http", "sse", "stdio"]
StoreKind: TypeAlias = Literal[
    "memory", "redis", "rediss", "unix", "redis+sentinel", "redis+cluster"
]
_STORE_SCHEMES: tuple[StoreKind, ...] = (
    "redis",
    "rediss",
    "unix",
    "redis+sentinel",
    "redis+cluster",
)

# Context flag for ``VmcpConfig.model_validate``: cross-section checks were already run on
# the raw data (so that they are reported together with field errors), skip them once more.
_CROSS_CHECKED = "vmcp_cross_checked"

Loc: TypeAlias = tuple[str | int, ...]


# --------------------------------------------------------------------------- value checks


def _check_origin(value: str) -> str:
    origin = value.strip().lower().rstrip("/")
    if not _ORIGIN_PATTERN.match(origin):
        raise ValueError(
            f"{value!r} is not an origin; expected scheme://host[:port] such as "
            "http://localhost:6274, without a path"
        )
    return origin


def _check_host_header(value: str) -> str:
    host = value.strip().lower()
    if not _HOST_HEADER_PATTERN.match(host):
        raise ValueError(
            f"{value!r} is not a Host header value; expected host or host:port, "
            "without scheme or path"
        )
    return host


def _check_db(text: str, what: str) -> None:
    if not text.isdigit():
        raise ValueError(f"{what} must be a database number, got {text!r}")


def _check_host_port(item: str, *, port_required: bool, what: str) -> None:
    if item.startswith("["):
        host, _, after = item.partition("]")
        host += "]"
        if after and not after.startswith(":"):
            raise ValueError(f"{what} has a malformed host")
        has_port, port = bool(after), after[1:]
    elif item.count(":") == 1:
        host, _, port = item.partition(":")
        has_port = True
    elif ":" in item:
        raise ValueError(f"{what} has an IPv6 address without brackets: use [addr]:port")
    else:
        host, port, has_port = item, "", False
    if host in ("", "[]") or any(c.isspace() or c in "/?#@," for c in host):
        raise ValueError(f"{what} has an empty or malformed host")
    if has_port and not (port.isdigit() and 0 < int(port) <= 65535):
        raise ValueError(f"{what} has an invalid port {port!r}")
    if port_required and not has_port:
        raise ValueError(f"{what} needs host:port with an explicit port")


def _check_store(value: str) -> str:
    """Accept ``memory`` or a Redis URL in one of the forms the Redis store can open.

    Messages name the scheme and the part at fault but never echo the URL, which may carry a
    password.
    """
    if value == "memory":
        return value
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in _STORE_SCHEMES:
        raise ValueError(
            "must be 'memory' or a URL: redis://host:port/db, rediss://host:port/db, "
            "unix:///path, redis+sentinel://host:port[,host:port]/service[/db] or "
            "redis+cluster://host:port[,host:port]"
        )
    if scheme == "unix":
        parts = urlsplit(value)
        if parts.netloc.rpartition("@")[2] or not parts.path.startswith("/") or parts.path == "/":
            raise ValueError("unix:// needs an absolute socket path: unix:///path/to/redis.sock")
        for db in parse_qs(parts.query).get("db", []):
            _check_db(db, "unix:// ?db=")
        return value
    netloc, _, path = rest.partition("/")
    path = path.split("?", 1)[0].split("#", 1)[0]
    hosts = netloc.rpartition("@")[2]
    segments = [p for p in path.split("/") if p]
    what = f"{scheme}:// URL"
    if scheme == "redis+sentinel":
        if not hosts:
            raise ValueError(f"{what} needs at least one sentinel host:port")
        for item in hosts.split(","):
            _check_host_port(item, port_required=True, what=f"{what} sentinel")
        if not segments:
            raise ValueError(f"{what} needs a service name: redis+sentinel://h:p/service[/db]")
        if len(segments) > 2:
            raise ValueError(f"{what} path must be /service or /service/db")
        if len(segments) == 2:
            _check_db(segments[1], f"{what} db")
        return value
    if scheme == "redis+cluster":
        # Several seed nodes: the client finds the cluster from any one that answers.
        for item in hosts.split(","):
            _check_host_port(item, port_required=False, what=f"{what} node")
    elif "," in hosts:
        raise ValueError(f"{what} takes a single host:port")
    else:
        _check_host_port(hosts, port_required=False, what=what)
    if len(segments) > 1:
        raise ValueError(f"{what} path must be empty or /db")
    if segments:
        _check_db(segments[0], f"{what} db")
        if scheme == "redis+cluster" and segments[0] != "0":
            raise ValueError("redis+cluster:// supports only database 0")
    return value


def _check_backend_url(value: str) -> str:
    """A backend's endpoint: an absolute http(s) URL with a host and no fragment."""
    return _check_http_url(value)


def _check_http_url(value: str, *, allow_query: bool = True) -> str:
    """An absolute http(s) URL with a host and no fragment, as used for auth endpoints."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} must be an http:// or https:// URL with a host")
    if port == 0 or any(c.isspace() or c in '"\\' for c in value):
        raise ValueError(f"{value!r} is not a usable URL")
    if parts.fragment or (parts.query and not allow_query):
        what = "a #fragment" if allow_query else "a ?query or #fragment"
        raise ValueError(f"{value!r} must not have {what}")
    return value


def _check_identity_part(value: str) -> str:
    """An issuer or subject a session can be bound to: non-empty, no control characters."""
    if not value or any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise ValueError("must be non-empty and free of control characters (NUL, line breaks)")
    return value


def _check_exposed_name(value: str) -> str:
    if not EXPOSED_NAME_PATTERN.match(value):
        raise ValueError(
            f"{value!r} is not a valid tool name: 1-64 characters of A-Z a-z 0-9 _ . -"
        )
    return value


_Origin = Annotated[str, AfterValidator(_check_origin)]
_HostHeader = Annotated[str, AfterValidator(_check_host_header)]


def redact_url(url: str) -> str:
    """``url`` with any password (in the user info or a ``password=`` query parameter)
    replaced by ``***``, for logs and summaries."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc, query = parts.netloc, parts.query
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}"
    query = re.sub(r"(^|&)(password=)[^&]*", r"\1\2***", query, flags=re.IGNORECASE)
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    # Rebuilt by hand: urlunsplit drops the "//" of an empty authority (unix:///path).
    return (
        f"{parts.scheme}://{netloc}{parts.path}"
        + (f"?{query}" if query else "")
        + (f"#{parts.fragment}" if parts.fragment else "")
    )


class _Frozen(BaseModel):
    """Every configuration model: immutable, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)
