"""Who a stateless request comes from: an identity binding and the request's envelope."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    LOG_LEVEL_META_KEY,
    PROTOCOL_VERSION_META_KEY,
)
from mcp_types.version import LATEST_MODERN_VERSION

from vmcp.upstream.discovery import CLIENT_INFO

LOG_LEVELS: Final = ("debug", "info", "notice", "warning", "error", "critical", "alert",
                     "emergency")


@dataclass(frozen=True)
class Caller:
    """Who a stateless request comes from: the identity binding, and the request's envelope."""

    binding: str
    meta: Mapping[str, Any]

    @property
    def capabilities(self) -> Mapping[str, Any]:
        value = self.meta.get(CLIENT_CAPABILITIES_META_KEY)
        return value if isinstance(value, Mapping) else {}

    @property
    def log_level(self) -> str | None:
        value = self.meta.get(LOG_LEVEL_META_KEY)
        return value if value in LOG_LEVELS else None

    def listing_meta(self) -> dict[str, Any]:
        """The envelope of the gateway's own listing requests made for this caller."""
        meta: dict[str, Any] = {
            PROTOCOL_VERSION_META_KEY: LATEST_MODERN_VERSION,
            CLIENT_CAPABILITIES_META_KEY: dict(self.capabilities),
        }
        info = self.meta.get(CLIENT_INFO_META_KEY)
        meta[CLIENT_INFO_META_KEY] = info if isinstance(info, Mapping) else CLIENT_INFO
        return meta


RESERVED_META_PREFIX: Final = "io.modelcontextprotocol/"


def without_envelope(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` without the 2026-07-28 envelope's reserved ``_meta`` keys, as a
    handshake-era server takes them (other ``_meta`` keys, a progress token, stay)."""
    data = dict(params)
    meta = data.get("_meta")
    if isinstance(meta, Mapping):
        kept = {k: v for k, v in meta.items() if not k.startswith(RESERVED_META_PREFIX)}
        if kept:
            data["_meta"] = kept
        else:
            del data["_meta"]
    return data
