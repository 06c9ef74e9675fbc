"""The session store contract, and the input checks every implementation shares."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from vmcp.errors import InvalidMetadata, InvalidSessionId

MAX_SESSION_ID_LENGTH = 128


class SessionStore(Protocol):
    """Session metadata (a flat dict of str → str) per session id, with a sliding TTL.

    There is deliberately no unconditional write. ``create`` only sets an absent key and
    ``update`` only a present one, so a write racing a ``delete`` on another replica can
    never bring an ended session back.

    Every method has its own deadline (set at construction): a slow call cannot eat the
    budget of the next one. Errors:

    - ``SessionNotFound`` (from ``load`` only): the id has no record.
    - ``StoreTimeout``: the call's deadline passed; the outcome of a write is unknown.
    - ``StoreUnavailable``: the store refused, dropped the connection, or replied with
      something the contract does not allow (e.g. a value that is not a JSON object).
    - ``InvalidSessionId`` / ``InvalidMetadata``: bad input, raised before any I/O.
    """

    async def create(self, session_id: str, metadata: Mapping[str, str]) -> bool:
        """Store ``metadata`` only if ``session_id`` is absent; True if this call created it."""
        ...

    async def update(self, session_id: str, metadata: Mapping[str, str]) -> bool:
        """Replace the record only if present; False (and nothing written) if absent."""
        ...

    async def merge(self, session_id: str, fields: Mapping[str, str], *,
                    remove: Collection[str] = (),
                    expect: Mapping[str, str | None] | None = None) -> Merged:
        """Change some fields of a present record in one atomic step, keeping the others.

        Sets ``fields`` and drops the keys in ``remove``, but only if the record exists
        and every key of ``expect`` currently holds the given value (None: the key must
        be absent); restarts the TTL window when it writes. Unlike ``load`` then
        ``update``, two replicas changing different fields of one record concurrently
        both keep their change. A retry after a lost reply recognises its own write.
        """
        ...

    async def load(self, session_id: str) -> dict[str, str]:
        """Return a copy of the record and restart its TTL window."""
        ...

    async def delete(self, session_id: str) -> None:
        """Remove the record; deleting an absent id is not an error."""
        ...

    async def ping(self) -> None:
        """Raise a ``StoreError`` if the store cannot answer now (for readiness probes)."""
        ...

    async def aclose(self) -> None:
        """Release connections and background work; idempotent."""
        ...


@dataclass(frozen=True)
class Merged:
    """What a ``merge`` did: ``applied`` (written), or not because the record is absent
    (``record`` None) or an expectation failed (``record``: the record as it is)."""

    applied: bool
    record: dict[str, str] | None


def merged_fields(record: Mapping[str, str], fields: Mapping[str, str],
                  remove: Collection[str]) -> dict[str, str]:
    """``record`` with ``fields`` set and ``remove`` dropped (what a merge writes)."""
    changed = {k: v for k, v in record.items() if k not in remove}
    changed.update(fields)
    return changed


def expectations_hold(record: Mapping[str, str],
                      expect: Mapping[str, str | None] | None) -> bool:
    return all(record.get(key) == value for key, value in (expect or {}).items())


def shows_own_write(record: Mapping[str, str], fields: Mapping[str, str],
                    remove: Collection[str]) -> bool:
    """Whether ``record`` already holds what a merge of ``fields``/``remove`` writes: a
    retried merge whose first try landed (its reply lost) must report it applied."""
    return (all(record.get(k) == v for k, v in fields.items())
            and not any(k in record for k in remove))


def validate_session_id(session_id: object) -> str:
    """Accept 1-128 visible ASCII characters (0x21-0x7E), as MCP requires of session ids.

    Checked before any store call so that a hostile id never reaches Redis as a key.
    """
    if not isinstance(session_id, str) or not session_id:
        raise InvalidSessionId("session id must be a non-empty string")
    if len(session_id) > MAX_SESSION_ID_LENGTH:
        raise InvalidSessionId(f"session id longer than {MAX_SESSION_ID_LENGTH} characters")
    # isascii + isprintable leave exactly 0x20-0x7E; the space is the one to exclude.
    if not (session_id.isascii() and session_id.isprintable()) or " " in session_id:
        raise InvalidSessionId("session id must be visible ASCII")
    return session_id


def validate_metadata(metadata: object) -> dict[str, str]:
    """Return a plain-dict copy of ``metadata`` after checking it is a flat str → str map."""
    if not isinstance(metadata, Mapping):
        raise InvalidMetadata("session metadata must be a mapping")
    copy: dict[str, str] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidMetadata(
                f"session metadata must map str to str, got {type(key).__name__}: "
                f"{type(value).__name__}"
            )
        copy[key] = value
    return copy


def validate_ttl(ttl_seconds: float) -> float:
    """Refuse a TTL that would make every record expire at once (or never)."""
    if not ttl_seconds > 0:
        raise ValueError(f"ttl_seconds must be > 0, got {ttl_seconds!r}")
    return float(ttl_seconds)


def validate_timeout(timeout_seconds: float) -> float:
    """Refuse a per-call deadline that cannot be met."""
    if not timeout_seconds > 0:
        raise ValueError(f"timeout_seconds must be > 0, got {timeout_seconds!r}")
    return float(timeout_seconds)


class ClosedOnExit:
    """A store is an async context manager that closes itself on exit."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        raise NotImplementedError
