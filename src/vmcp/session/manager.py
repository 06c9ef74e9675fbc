"""The lifecycle of MCP sessions across replicas: create, serve, restore, end.

The store holds the truth; each replica caches live sessions (open backend connections)
in a ``ValidatingCache``. Two rules keep replicas from disagreeing:

1. No unconditional write. Records are created with set-if-absent and changed only with
   set-if-present, so a write that races a ``terminate`` on another replica fails
   instead of bringing the session back.
2. The store is asked on every request (the cache's liveness check, one round trip that
   also slides the TTL). A session ended elsewhere answers "not found" here at the next
   request, and its local copy is closed.

A store that cannot answer is not a dead session: ``StoreError`` propagates (503, retry)
and a cached session keeps being served while its liveness cannot be checked.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import anyio

from vmcp.cache import CacheStatistics, EvictedWhileLoading, ValidatingCache
from vmcp.errors import (
    DecorationError,
    SessionNotFound,
    SessionNotYours,
    SessionTerminated,
    StoreError,
)
from vmcp.identity import (
    Principal,
    acting_for,
    binding_for,
    check_binding,
    current_caller,
)
from vmcp.session import metadata as md
from vmcp.session.admission import Admission
from vmcp.session.endings import UpstreamEndings, let_calls_finish
from vmcp.session.live import LiveSession, SessionFactory
from vmcp.store.base import SessionStore, validate_session_id
from vmcp.store.expiry_index import ExpiryIndex
from vmcp.store.identity_index import IdentityIndex
from vmcp.store.pubsub import EndedSessionBus

logger = logging.getLogger(__name__)

OUTDATED_CALLS_SECONDS = 60.0
"""How long the calls running on an outdated copy of a session may take to finish before
the copy closes anyway (and answers what is left "session not found")."""

GENERATE_ATTEMPTS = 2


@dataclass(eq=False)
class _Entry:
    """A cached live session with the stored facts its liveness check compares against."""

    live: LiveSession
    binding: str
    backends: str
    checked_at: float = field(default_factory=time.monotonic)
    outdated: bool = False
    """Replaced because another replica changed the session's backend list: the session
    lives on, so the calls running on this copy are let finish before it closes."""


@dataclass(frozen=True)
class ManagerStatistics:
    cache: CacheStatistics
    security_events: int


class SessionManager:
    """Creates, serves, restores and ends sessions over a ``SessionStore``.

    ``get`` is the request path: one store round trip on a cache hit. Every method that
    takes a ``Principal`` enforces the session's identity binding before any backend is
    touched; a mismatch raises ``SessionNotYours`` (answered like an unknown session) and
    leaves the owner's session alone.
    """

    def __init__(
        self,
        store: SessionStore,
        factory: SessionFactory,
        *,
        cache_capacity: int = 1000,
        ended_sessions: EndedSessionBus | None = None,
        liveness_interval: float = 0.0,
        identities: IdentityIndex | None = None,
        max_sessions_per_identity: int = 0,
        max_initializes_in_flight: int = 0,
        expiry: ExpiryIndex | None = None,
    ) -> None:
        self._store = store
        self._factory = factory
        self._endings = UpstreamEndings(factory, ended_sessions, expiry)
        self._liveness_interval = liveness_interval
        self._admission = Admission(identities, max_per_identity=max_sessions_per_identity,
                                    max_in_flight=max_initializes_in_flight)
        self._cache: ValidatingCache[str, _Entry] = ValidatingCache(
            capacity=cache_capacity, load=self._restore, check=self._is_alive,
            on_evict=self._close, on_displace=self._displace,
        )
        self._security_events = 0
        self._reconciling = asyncio.Lock()
        self._closing = anyio.Event()

    # -- creation -------------------------------------------------------------------

    async def initialize(self, principal: Principal,
                         client_capabilities: Iterable[str] = ()) -> LiveSession:
        """Serve an ``initialize``: a new id, then a full session bound to ``principal``.

        The binding is computed first, so an unusable identity stores nothing (B40). Then
        the caps (``Admission``): beyond the replica's initializes under way,
        ``ReplicaBusy`` (503) before anything is stored; beyond the identity's cap,
        ``TooManySessions`` (429) before any backend is contacted, the placeholder ended.
        """
        binding = binding_for(principal)
        with self._admission.initializing():
            session_id = await self.generate()
            if not self._admission.counts(binding):
                return await self.create_session(session_id, principal, client_capabilities)
            try:
                await self._admission.reserve(binding, session_id)
                return await self.create_session(session_id, principal, client_capabilities)
            except BaseException:
                # A reservation may have landed before an error; a placeholder left
                # (marked terminated) must not count either.
                await _shielded(self._mark_terminated(session_id))
                await _shielded(self._admission.release(binding, session_id))
                raise

    async def generate(self) -> str:
        """Reserve a fresh random id with a ``{}`` placeholder (create-if-absent)."""
        for _ in range(GENERATE_ATTEMPTS):
            session_id = uuid.uuid4().hex
            if await self._store.create(session_id, {}):
                return session_id
        raise SessionTerminated("could not reserve a unique session id")

    async def create_session(self, session_id: str, principal: Principal,
                             client_capabilities: Iterable[str] = ()) -> LiveSession:
        """Turn the placeholder ``session_id`` into a full, cached session.

        Backends are contacted only if the placeholder is still there and not ended
        (B17). If it was ended while backends connected, the new session is closed and
        nothing is written (B18). If opening fails, the placeholder is marked terminated
        so the id can never be completed later (B19).
        """
        validate_session_id(session_id)
        binding = binding_for(principal)
        await self._require_open_placeholder(session_id)
        try:
            live = await self._factory.open(session_id, principal)
        except BaseException:
            await _shielded(self._mark_terminated(session_id))
            raise
        try:
            await self._require_open_placeholder(session_id)
            live.client_capabilities = frozenset(client_capabilities)
            record = {
                md.IDENTITY: binding,
                md.BACKENDS: md.backend_list(live.backend_names()),
                md.CLIENT_CAPABILITIES: md.backend_list(live.client_capabilities),
                **{md.backend_state_key(k): v for k, v in live.backend_states().items()},
            }
            if not await self._store.update(session_id, record):
                raise SessionNotFound(session_id)
        except BaseException:
            await _shielded(live.aclose())
            raise
        self._cache.set(session_id, _Entry(live, binding, record[md.BACKENDS]))
        return live

    async def _require_open_placeholder(self, session_id: str) -> None:
        record = await self._store.load(session_id)
        if md.is_terminated(record) or md.IDENTITY in record:
            raise SessionTerminated(session_id)

    async def _mark_terminated(self, session_id: str) -> None:
        try:
            await self._store.update(session_id, {md.TERMINATED: "true"})
        except Exception:
            logger.warning("could not mark placeholder terminated",
                           extra={"session_id": session_id}, exc_info=True)

    # -- the request path -----------------------------------------------------------

    async def get(self, session_id: str, principal: Principal) -> LiveSession:
        """The live session for a request by ``principal`` (B20, B24, B41-B45).

        Raises ``SessionNotFound`` / ``SessionTerminated`` (404), ``SessionNotYours``
        (404, counted as a security event), or ``StoreError`` (503).
        """
        validate_session_id(session_id)
        cached = self._cache.peek(session_id)
        if cached is not None:
            self._check_caller(session_id, cached.binding, principal)
        else:
            # Check the caller before a restore: a stranger must never make this replica
            # open backend connections, nor fail a flight that the owner shares.
            record = await self._store.load(session_id)
            if not md.is_full_session(record):
                raise SessionNotFound(session_id)
            self._check_caller(session_id, record.get(md.IDENTITY), principal)
        # The cache restores in a task of its own (so a cancelled request cannot cancel
        # work others wait on); the task copies this context, so the restore keeps the
        # caller's identity for outgoing auth without inheriting its cancellation.
        with acting_for(principal):
            try:
                entry = await self._cache.get(session_id)
            except EvictedWhileLoading as exc:
                raise SessionNotFound(session_id) from exc
        self._check_caller(session_id, entry.binding, principal)
        return entry.live

    def _check_caller(self, session_id: str, binding: str | None, principal: Principal) -> None:
        try:
            check_binding(binding, principal)
        except SessionNotYours as exc:
            self._security_events += 1
            logger.warning("session identity mismatch: %s", exc,
                           extra={"session_id": session_id, "security_event": True})
            raise

    # -- ending ---------------------------------------------------------------------

    async def terminate(self, session_id: str, principal: Principal) -> bool:
        """End a session (DELETE): gone from the store first, then closed here (B21, B22).

        True if a full session of ``principal``'s was ended. False, with nothing to end,
        for an unknown or already ended id, or a placeholder (which no client has been
        told yet): the caller answers those exactly like a stranger's attempt on a live
        session (``SessionNotYours``), so that a DELETE cannot tell a live id from a
        made-up one. Only the owner may end a full session; a placeholder is marked
        terminated rather than deleted, so that a ``create_session`` still connecting
        backends sees it and gives up.
        """
        validate_session_id(session_id)
        try:
            record = await self._store.load(session_id)
        except SessionNotFound:
            self._cache.evict(session_id)
            return False
        ended = md.IDENTITY in record
        claimed = False
        if ended:
            self._check_caller(session_id, record[md.IDENTITY], principal)
            # Claimed before the record goes, so an expiry sweep cannot take it too.
            claimed = await self._endings.claim(session_id)
            record = await md.seal(self._store, session_id, record)
            try:
                await self._store.delete(session_id)
                await self._admission.release(record[md.IDENTITY], session_id)
            except StoreError:
                # Sealed, it is over everywhere: its upstream sessions end now (the end is
                # claimed, so a DELETE sent again after this 503 could not end them).
                await self._end_here(session_id, record, claimed)
                await self._endings.announce(session_id)
                raise
        elif not md.is_terminated(record):
            await self._store.update(session_id, {**record, md.TERMINATED: "true"})
        await self._end_here(session_id, record, claimed)
        await self._endings.announce(session_id)
        return ended

    async def _end_here(self, session_id: str, record: dict[str, str], claimed: bool) -> None:
        """Close this replica's copy; with ``claimed``, end every recorded upstream session
        (B38): the copy's through its connections as it closes, the rest (opened on other
        replicas, or by a copy dropped for capacity) re-attached from ``record``. Copies
        elsewhere then close without ending them again (``follow_ended_sessions``)."""
        copy = self._cache.peek(session_id)
        held = copy.live.backend_states() if copy is not None else {}
        if claimed:
            self._endings.hold(session_id)
        if not self._cache.evict(session_id):
            self._endings.release(session_id)
            held = {}
        if claimed:
            await self._endings.end_upstream(session_id, {
                name: state for name, state in md.backend_states(record).items()
                if held.get(name) != state})

    async def end_expired(self, session_id: str, record: dict[str, str]) -> None:
        """A session whose record expired, claimed by this replica's sweep: end its
        upstream sessions (once, here) and tell the others to drop their copies."""
        await self._end_here(session_id, record, claimed=True)
        await self._endings.announce(session_id)

    async def follow_ended_sessions(self) -> None:
        """Close this replica's copies of sessions ended on any replica, as announced
        (a lifespan task: runs until cancelled)."""
        await self._endings.follow(self.evict_local)

    def evict_local(self, session_id: str) -> bool:
        """Close this replica's copy now (the session ended elsewhere); True if held."""
        return self._cache.evict(session_id)

    # -- changes to a live session ----------------------------------------------------

    async def notify_backend_expired(self, session_id: str, backend: str) -> None:
        """Drop ``backend`` from the stored session (B29).

        Never creates a record and ignores placeholders and ended sessions. Other replicas
        see the changed backend list at their next check and rebuild their copies.
        """
        await md.drop_backend(self._store, session_id, backend)

    async def decorate_session(
        self,
        session_id: str,
        decorate: Callable[[LiveSession], Awaitable[LiveSession | None]],
    ) -> LiveSession:
        """Replace the cached live session with ``decorate(live)`` and persist it (B30).

        The decorated value usually wraps the original, so the swap does not close the
        original. If the session ends while decorating, the write-back (set-if-present)
        fails and the decorated session is closed: nothing is resurrected.
        """
        validate_session_id(session_id)
        entry = self._cache.peek(session_id)
        if entry is None:
            raise SessionNotFound(session_id)
        decorated = await decorate(entry.live)
        if decorated is None or decorated.session_id != session_id:
            raise DecorationError(f"decorator must return session {session_id!r}")
        self._cache.set(session_id, _Entry(decorated, entry.binding, entry.backends),
                        release_previous=False)
        try:
            record = await self._store.load(session_id)
            states = {md.backend_state_key(k): v for k, v in decorated.backend_states().items()}
            if not md.is_full_session(record) or not (await self._store.merge(
                session_id, states, expect=md.still_session(record))).applied:
                raise SessionNotFound(session_id)
        except SessionNotFound:
            self._cache.evict(session_id)
            raise
        return decorated

    def announce_to_live_sessions(self, method: str) -> int:
        """Send the notification ``method`` to the client of every session live here (on
        its GET stream); how many. Each replica tells its own sessions' clients."""
        told = 0
        for session_id in self._cache.cached_keys():
            entry = self._cache.peek(session_id)
            if entry is not None:
                entry.live.announce(method)
                told += 1
        return told

    async def reconcile_live_sessions(
        self, reconcile: Callable[[LiveSession], Awaitable[bool]]
    ) -> int:
        """Apply ``reconcile`` to every session live here (a configuration reload) and
        store each changed session's new backend list (set-if-present: a session ended
        meanwhile stays ended). Returns how many sessions changed.

        One pass at a time (a reload and a recovering backend may ask together): two
        passes over one session would both connect the backend it lacks."""
        async with self._reconciling:
            return await self._reconcile_live_sessions(reconcile)

    async def _reconcile_live_sessions(
        self, reconcile: Callable[[LiveSession], Awaitable[bool]]
    ) -> int:
        changed = 0
        for session_id in self._cache.cached_keys():
            entry = self._cache.peek(session_id)
            if entry is None or not await reconcile(entry.live):
                continue
            if self._cache.peek(session_id) is not entry:
                # Rebuilt from the store (or ended) while the backends connected: this
                # copy is closed, and the newer one already has what the store says.
                continue
            changed += 1
            names = entry.live.backend_names()
            backends = md.backend_list(names)
            try:
                record = await self._store.load(session_id)
                states = {md.backend_state_key(k): v
                          for k, v in entry.live.backend_states().items()}
                # Only the removed backends' entries go; others' upstream sessions stay.
                gone = [k for k in record if k.startswith(md.BACKEND_STATE_PREFIX)
                        and k[len(md.BACKEND_STATE_PREFIX):] not in names]
                if md.is_full_session(record) and (await self._store.merge(
                        session_id, {**states, md.BACKENDS: backends}, remove=gone,
                        expect=md.still_session(record))).applied:
                    self._cache.set(session_id, _Entry(entry.live, entry.binding, backends),
                                    release_previous=False)
            except (SessionNotFound, StoreError) as exc:
                logger.warning("could not store a reloaded session: %s", exc,
                               extra={"session_id": session_id})
        return changed

    # -- cache callbacks ------------------------------------------------------------

    async def _restore(self, session_id: str) -> _Entry:
        """Rebuild a session another replica created (cache miss; B23-B27, B44)."""
        caller = current_caller()
        if caller is None:
            raise RuntimeError("a restore runs on behalf of a caller (see get)")
        principal = caller.principal
        record = await self._store.load(session_id)
        if not md.is_full_session(record):
            raise SessionNotFound(session_id)
        binding = record[md.IDENTITY]
        check_binding(binding, principal)
        live = await self._factory.restore(
            session_id, principal, md.parse_backend_list(record[md.BACKENDS]),
            md.backend_states(record),
        )
        live.client_capabilities = md.client_capabilities(record)
        try:
            # Only the states that changed while re-attaching, merged (others' entries stay);
            # an empty merge still tells whether the session ended meanwhile (B25).
            states = {md.backend_state_key(k): v for k, v in live.backend_states().items()
                      if record.get(md.backend_state_key(k)) != v}
            if not (await self._store.merge(session_id, states,
                                            expect=md.still_session(record))).applied:
                raise SessionNotFound(session_id)
        except BaseException:
            await _shielded(live.aclose())
            raise
        return _Entry(live, binding, record[md.BACKENDS])

    async def _is_alive(self, session_id: str, entry: _Entry) -> bool:
        """The liveness check of a cache hit; raises ``StoreError`` if it cannot tell."""
        now = time.monotonic()
        if now - entry.checked_at < self._liveness_interval:
            return True
        try:
            record = await self._store.load(session_id)
        except SessionNotFound:
            return False
        entry.checked_at = now
        # Only the backend list counts: per-backend session ids differ between replicas
        # after a re-initialize, and must not make them evict each other (B28).
        if not md.is_full_session(record):
            return False
        entry.outdated = record[md.BACKENDS] != entry.backends
        return not entry.outdated

    async def _close(self, session_id: str, entry: _Entry) -> None:
        if entry.outdated:
            # The rebuilt copy serves new requests; the calls already running here would
            # otherwise be answered "session not found" for a session that lives on.
            await let_calls_finish(entry.live, self._closing, OUTDATED_CALLS_SECONDS)
            await entry.live.aclose()
            return
        if (self._closing.is_set() and self._endings.shared
                and not self._endings.holds(session_id)):
            # This replica stops (a rolling upgrade), the session does not: with a shared
            # store another replica restores it and re-attaches to its upstream sessions,
            # which must keep their state (B38). With a store of this process alone
            # nobody can, and they are ended below.
            await entry.live.aclose(end_upstream=False)
            return
        # The session ended (or this replica stops and takes it along): its upstream
        # sessions are ended by whoever claims that end, here or elsewhere, exactly once.
        await entry.live.aclose(end_upstream=await self._endings.take(session_id))

    async def _displace(self, session_id: str, entry: _Entry) -> None:
        """LRU pressure drops a copy of a session that is still valid (B38): its
        connections close, its backend sessions stay for its next request to re-attach."""
        await entry.live.aclose(end_upstream=False)

    # -- housekeeping ---------------------------------------------------------------

    def is_cached(self, session_id: str) -> bool:
        return session_id in self._cache

    def statistics(self) -> ManagerStatistics:
        return ManagerStatistics(self._cache.statistics(), self._security_events)

    async def wait_closed(self) -> None:
        """Wait until every live session released so far has finished closing."""
        await self._cache.wait_released()

    async def aclose(self) -> None:
        """Close every live session of this replica; stored records stay for the others."""
        self._closing.set()
        await self._cache.aclose()


async def _shielded(awaitable: Awaitable[None]) -> None:
    """Run cleanup to the end even if the caller is being cancelled."""
    await asyncio.shield(asyncio.ensure_future(awaitable))
