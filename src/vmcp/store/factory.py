"""Choose a store from the configured URL."""

from __future__ import annotations

from vmcp.store.base import SessionStore
from vmcp.store.memory import MemoryStore
from vmcp.store.redis import RedisStore


def open_store(
    url: str,
    *,
    key_prefix: str,
    ttl_seconds: float,
    timeout_seconds: float,
    sweep_interval_seconds: float = 30.0,
) -> MemoryStore | RedisStore:
    """``memory`` gives the embedded store; any Redis URL gives a ``RedisStore``."""
    if url == "memory":
        return MemoryStore(ttl_seconds=ttl_seconds, sweep_interval_seconds=sweep_interval_seconds)
    return RedisStore.from_url(
        url, key_prefix=key_prefix, ttl_seconds=ttl_seconds, timeout_seconds=timeout_seconds
    )


__all__ = ["SessionStore", "open_store"]
