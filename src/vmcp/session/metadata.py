"""The keys of a stored session record, and how to read them.

A record is a flat dict of strings (the store contract). ``{}`` is a placeholder written
at ``initialize`` time; the ``identity`` key marks a full session. A full session holds:

- ``identity``: the caller's binding (see ``vmcp.identity.binding_for``);
- ``backends``: every backend the session may use, sorted and comma-separated (fixed at
  ``initialize``; changed only by a reload, a recovery or a backend's expiry);
- ``backend:<name>``: present exactly for the backends that have an upstream session for
  this client session, holding its state as JSON (``BackendState.to_json``: the upstream
  ``Mcp-Session-Id``, the negotiated protocol version and the backend's initialize
  result). Upstream sessions are opened on first use, so a backend of ``backends``
  without this key has none: nothing to re-attach to, nothing to end.

Whatever ends a session's upstream sessions (a terminate, an expiry sweep) ends exactly
the ``backend:<name>`` entries. Each is written with :func:`claim_backend_state` or
:func:`record_backend_state`, which change that one field atomically (``merge``) so that
replicas opening different backends of one session concurrently keep each other's entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from vmcp.backend.contract import BackendState
from vmcp.errors import BackendProtocolError, SessionNotFound
from vmcp.store.base import Merged, SessionStore

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


async def claim_backend_state(store: SessionStore, session_id: str, backend: str,
                              state: str) -> str:
    """Record a backend's new upstream session, unless another one is recorded already.

    Returns the state that holds now: ``state`` if this call recorded it, else the state
    another replica recorded first (the caller then ends its own upstream session and
    re-attaches to that one, so one client session never holds two upstream sessions on
    one backend). Raises ``SessionNotFound`` if the session ended, is not a full session
    or no longer has ``backend``: the caller ends its upstream session.
    """
    record = await store.load(session_id)
    _require_backend(session_id, record, backend)
    key = backend_state_key(backend)
    if key in record:
        return record[key]
    merged = await store.merge(session_id, {key: state},
                               expect={key: None, **_unchanged(record)})
    if merged.applied:
        return state
    current = _current(session_id, merged)
    _require_backend(session_id, current, backend)
    if key in current:
        return current[key]
    # The backend list changed meanwhile (a reload) but still has the backend: once more.
    return await claim_backend_state(store, session_id, backend, state)


async def stored_backend_state(store: SessionStore, session_id: str, backend: str
                               ) -> str | None:
    """The recorded upstream session of ``backend`` (None: it has none yet); raises
    ``SessionNotFound`` like :func:`claim_backend_state`."""
    record = await store.load(session_id)
    _require_backend(session_id, record, backend)
    return record.get(backend_state_key(backend))


async def record_backend_state(store: SessionStore, session_id: str, backend: str,
                               state: str, *, replaces: str | None = None) -> bool:
    """Store a backend's new state (its new session id after a re-initialize, B37).

    Set-if-present: returns False, writing nothing, if the session ended meanwhile or
    no longer has ``backend``. Only that backend's field changes (``merge``), so a
    concurrent change to another field is never lost. Needs nothing but the store, so
    that whatever connects backends can record it without knowing the session manager.

    And only over the upstream session it replaces (``replaces``, that session's id):
    when a backend comes back, every replica holding a copy of the session may
    re-initialize it, each opening an upstream session of its own. The first to record
    wins; writing over it would leave its upstream session known to nobody, never ended
    (a chaos run found them). The others get False and end their own when they close.
    """
    try:
        record = await store.load(session_id)
        _require_backend(session_id, record, backend)
    except SessionNotFound:
        return False
    key = backend_state_key(backend)
    current = record.get(key)
    if current is not None and replaces is not None and _upstream_id(current) != replaces:
        return False
    merged = await store.merge(session_id, {key: state},
                               expect={key: current, **_unchanged(record)})
    return merged.applied


def _upstream_id(state: str) -> str | None:
    """The upstream session id in a recorded backend state (None if it has none or is
    unreadable)."""
    try:
        return BackendState.from_json(state).session_id
    except BackendProtocolError:
        return None


async def drop_backend(store: SessionStore, session_id: str, backend: str) -> None:
    """Take ``backend`` out of a session's list and forget its upstream session (B29):
    two fields, only if the list is still the one read (others' entries stay)."""
    try:
        record = await store.load(session_id)
    except SessionNotFound:
        return
    if is_terminated(record) or BACKENDS not in record:
        return
    names = parse_backend_list(record[BACKENDS])
    if backend not in names:
        return
    await store.merge(session_id, {BACKENDS: backend_list(n for n in names if n != backend)},
                      remove=[backend_state_key(backend)],
                      expect={BACKENDS: record[BACKENDS], TERMINATED: None})


async def seal(store: SessionStore, session_id: str, record: dict[str, str]
               ) -> dict[str, str]:
    """Mark a full session terminated and return its final record: no upstream session
    can be recorded after this (claims expect it not terminated), so whoever ends the
    session knows every one to end. ``record`` is what was read, for a session gone
    meanwhile."""
    merged = await store.merge(session_id, {TERMINATED: "true"},
                               expect={IDENTITY: record[IDENTITY]})
    return merged.record if merged.record is not None else record


def still_session(record: Mapping[str, str]) -> dict[str, str | None]:
    """Merge expectations: the record is still the full session that was read."""
    return {IDENTITY: record[IDENTITY], TERMINATED: None}


def _unchanged(record: Mapping[str, str]) -> dict[str, str | None]:
    """Expectations that the record is still the same full session with the same list."""
    return {IDENTITY: record[IDENTITY], BACKENDS: record[BACKENDS], TERMINATED: None}


def _require_backend(session_id: str, record: Mapping[str, str], backend: str) -> None:
    if not is_full_session(record) or backend not in parse_backend_list(record[BACKENDS]):
        raise SessionNotFound(session_id)


def _current(session_id: str, merged: Merged) -> dict[str, str]:
    if merged.record is None:
        raise SessionNotFound(session_id)
    return merged.record
