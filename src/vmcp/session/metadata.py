"""The keys of a stored session record, and how to read them.

A record is a flat dict of strings (the store contract). ``{}`` is a placeholder written
at ``initialize`` time; the ``identity`` key marks a full session.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from vmcp.errors import SessionNotFound
from vmcp.store.base import SessionStore

IDENTITY = "identity"
BACKENDS = "backends"
TERMINATED = "terminated"
CLIENT_CAPABILITIES = "client_capabilities"
"""The capabilities the client declared at ``initialize`` (names, comma-separated), so
that every replica knows what it may ask the client (an ``elicitation``)."""
BACKEND_STATE_PREFIX = "backend:"


def backend_state_key(backend: str) -> str:
    return BACKEND_STATE_PREFIX + backend


def is_terminated(metadata: Mapping[str, str]) -> bool:
    return metadata.get(TERMINATED) == "true"


def is_full_session(metadata: Mapping[str, str]) -> bool:
    """A restorable record: bound to an identity, with a backend list, not terminated."""
    return IDENTITY in metadata and BACKENDS in metadata and not is_terminated(metadata)


def backend_list(names: Iterable[str]) -> str:
    """The canonical form of a backend-id list: sorted, comma-separated."""
    return ",".join(sorted(names))


def client_capabilities(metadata: Mapping[str, str]) -> frozenset[str] | None:
    """The client's declared capabilities; None for a record written before they were
    kept (such a client is not refused anything it may have declared)."""
    value = metadata.get(CLIENT_CAPABILITIES)
    return None if value is None else frozenset(parse_backend_list(value))


def parse_backend_list(value: str) -> list[str]:
    return [name for name in value.split(",") if name]


def backend_states(metadata: Mapping[str, str]) -> dict[str, str]:
    """Per-backend stored state (e.g. the backend's own session id), by backend name."""
    return {
        key[len(BACKEND_STATE_PREFIX):]: value
        for key, value in metadata.items()
        if key.startswith(BACKEND_STATE_PREFIX)
    }


async def record_backend_state(store: SessionStore, session_id: str, backend: str,
                               state: str) -> bool:
    """Store a backend's new state (its new session id after a re-initialize, B37).

    Set-if-present: returns False, writing nothing, if the session ended meanwhile or
    no longer has ``backend``. Needs nothing but the store, so that whatever connects
    backends can record it without knowing the session manager.
    """
    try:
        record = await store.load(session_id)
    except SessionNotFound:
        return False
    if not is_full_session(record):
        return False
    if backend not in parse_backend_list(record[BACKENDS]):
        return False
    record[backend_state_key(backend)] = state
    return await store.update(session_id, record)
