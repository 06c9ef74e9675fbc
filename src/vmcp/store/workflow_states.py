"""Composite tool runs waiting for the user's answer, kept where every replica finds them.

A workflow that asks the user (an elicitation step) may get the answer on any replica,
and the replica that asked may be gone by then. So what the run needs to go on (its
snapshot and question) is written here under a key that names a one-use handle, with
the time the answer may take as TTL. Whoever gets the answer ``take``s the record: that
read deletes it, so exactly one replica continues the run, a handle presented twice finds
nothing, and a record nobody came back for expires.

Keys are built by the caller from the handle and what the handle is bound to (the
identity and tool, or the session), hashed: presenting a handle under another identity
looks for another key, and the owner's record stays untouched.

Writes follow the store's discipline: ``create`` only if absent (``SET NX``), and the
only other change is the ``take`` (``GETDEL``); every call has its own deadline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import anyio
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from vmcp.store._redis_errors import translated_store_errors
from vmcp.store.base import validate_timeout, validate_ttl

__all__ = ["MemoryWorkflowStates", "RedisWorkflowStates", "WorkflowStates"]


class WorkflowStates(Protocol):
    """Waiting workflow runs by key. Raises ``StoreError`` (``StoreTimeout``,
    ``StoreUnavailable``) when the store cannot answer within its deadline."""

    async def create(self, key: str, record: Mapping[str, Any], ttl_seconds: float) -> bool:
        """Keep ``record`` (JSON) under ``key`` for ``ttl_seconds`` unless the key exists;
        False if it did."""
        ...

    async def take(self, key: str) -> dict[str, Any] | None:
        """The record under ``key``, deleted in the same step; None if there is none
        (never written, taken already, expired)."""
        ...


class MemoryWorkflowStates:
    """``WorkflowStates`` in this process (the embedded store: one replica)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._records: dict[str, tuple[float, str]] = {}

    async def create(self, key: str, record: Mapping[str, Any], ttl_seconds: float) -> bool:
        validate_ttl(ttl_seconds)
        data = json.dumps(record, separators=(",", ":"))
        now = self._clock()
        self._sweep(now)
        if key in self._records:
            return False
        self._records[key] = (now + ttl_seconds, data)
        return True

    async def take(self, key: str) -> dict[str, Any] | None:
        self._sweep(self._clock())
        entry = self._records.pop(key, None)
        return None if entry is None else _decoded(entry[1])

    def __len__(self) -> int:
        self._sweep(self._clock())
        return len(self._records)

    def _sweep(self, now: float) -> None:
        for key in [k for k, (expires, _) in self._records.items() if expires <= now]:
            del self._records[key]


class RedisWorkflowStates:
    """``WorkflowStates`` on Redis: ``SET NX PX`` and ``GETDEL`` under ``prefix + key``.

    Neither is sent twice after a lost reply: a second ``SET NX`` could not tell its own
    landed write from another's, and a second ``GETDEL`` would report a record the first
    already took as missing. The caller sees a ``StoreError`` instead.
    """

    def __init__(self, client: aioredis.Redis | RedisCluster, prefix: str, *,
                 timeout_seconds: float) -> None:
        if not prefix.endswith(":"):
            raise ValueError(f"prefix must end with ':', got {prefix!r}")
        self._client = client
        self._prefix = prefix
        self._timeout = validate_timeout(timeout_seconds)

    async def create(self, key: str, record: Mapping[str, Any], ttl_seconds: float) -> bool:
        ttl_ms = max(1, round(validate_ttl(ttl_seconds) * 1000))
        data = json.dumps(record, separators=(",", ":"))
        with translated_store_errors("set"), anyio.fail_after(self._timeout):
            return bool(await self._client.set(self._prefix + key, data, px=ttl_ms, nx=True))

    async def take(self, key: str) -> dict[str, Any] | None:
        with translated_store_errors("getdel"), anyio.fail_after(self._timeout):
            raw = await self._client.getdel(self._prefix + key)
        if raw is None:
            return None
        return _decoded(raw.decode() if isinstance(raw, bytes) else str(raw))


def _decoded(data: str) -> dict[str, Any] | None:
    """A stored record; one that is not a JSON object counts as missing."""
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
