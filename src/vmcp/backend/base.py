"""The half of a backend connection that does not depend on the transport.

:class:`BaseBackend` turns a transport's four primitives (send one request, send one
notification, open a session, end it) into the :class:`~vmcp.backend.BackendConnection`
contract: request ids, deadlines, cancellation notices, the shared re-initialization
after the backend forgot the session, draining on close and the counters. It also holds
what both session transports say in their handshake (:meth:`BaseBackend._initialize`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, TypeVar

import anyio
import httpx2

from vmcp.backend.contract import (
    BackendRpcError,
    BackendState,
    BackendStatistics,
    BackendTarget,
    MessageHandler,
    ReinitializedHook,
)
from vmcp.backend.wire import encode, replayable, request_ids
from vmcp.errors import (
    BackendError,
    BackendSessionExpired,
    BackendTimeout,
    SessionClosed,
)

logger = logging.getLogger(__name__)

CANCEL_NOTICE_TIMEOUT: Final = 2.0
"""Time allowed for the ``notifications/cancelled`` sent when a caller gives up."""

TERMINATE_TIMEOUT: Final = 5.0
"""Upper bound on the DELETE (or stream teardown) that ends a backend session."""

DEFAULT_RETRY: Final = 1.0
"""Seconds to wait before reconnecting a dropped stream when the backend named no ``retry``."""

LISTEN_BACKOFF_MAX: Final = 30.0
"""Upper bound of the delay between two attempts to reopen a ``listen`` stream."""

T = TypeVar("T")

NO_HEADERS: Final[Mapping[str, str]] = MappingProxyType({})
"""The per-call headers of a call that carries no credentials of its own."""

INITIALIZED: Final = encode({"jsonrpc": "2.0", "method": "notifications/initialized"})
"""The notification that completes a handshake."""


class _SessionGone(Exception):
    """Internal signal: the backend no longer knows the session we named.

    Raised by a transport only when resending the same message to a fresh session is
    safe, that is, before the backend can have acted on it.
    """


@dataclass(slots=True)
class _Flight:
    """One re-initialization in progress; the callers that hit the same 404 wait on it."""

    done: anyio.Event
    error: BackendError | None = None


@dataclass(frozen=True, slots=True)
class Call:
    """One encoded request, with what its transport needs to send it and route its answer."""

    id: int
    body: bytes
    params: dict[str, Any] | None
    on_message: MessageHandler | None
    headers: Mapping[str, str]
    """The call's own headers (its caller's credentials), below the transport's."""
    replayable: bool = False  # sending it twice changes nothing (``wire.replayable``)


class BaseBackend:
    """The part of a backend connection that does not depend on the transport.

    A transport subclass implements ``listen`` and the four ``_``-prefixed coroutines
    below the divider. This class turns them into the :class:`BackendConnection`
    contract: ids, deadlines, cancellation notices, the singleflight
    re-initialization, draining on close and the counters.

    A new instance has no live session yet: :meth:`open_session` or
    :meth:`resume_session` gives it one (see :func:`vmcp.backend.connect` and
    :func:`vmcp.backend.attach`).
    """

    def __init__(
        self,
        target: BackendTarget,
        http: httpx2.AsyncClient,
        *,
        client_info: Mapping[str, Any],
        capabilities: Mapping[str, Any],
        timeout: float,
        on_reinitialized: ReinitializedHook | None,
        state: BackendState,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.target = target
        self._http = http
        # What this client says about itself in every ``initialize``.
        self._hello = {"capabilities": dict(capabilities), "clientInfo": dict(client_info)}
        self._timeout = timeout
        self._on_reinitialized = on_reinitialized
        self._state = state
        self._generation = 0
        self._ids = request_ids()
        self._flight: _Flight | None = None
        self._closed = False
        self._close_done: anyio.Event | None = None
        self._inflight: set[anyio.CancelScope] = set()
        self._notices: set[asyncio.Future[None]] = set()
        self._unrecorded = False  # an upstream session the store never heard of
        self._drained: anyio.Event | None = None
        self._interruptible_scopes: set[anyio.CancelScope] = set()
        self.stream_opened = anyio.Event()
        """Set once the backend accepted a ``listen`` stream of this session: from then
        on, what it announces on that stream reaches this connection."""
        self._latest_headers: Mapping[str, str] = NO_HEADERS
        self._requests = 0
        self._errors = 0
        self._rpc_errors = 0
        self._reinitializations = 0
        self._setup()

    def _setup(self) -> None:
        """Transport-specific set-up, run at the end of construction; none by default."""

    async def open_session(self, headers: Mapping[str, str] | None) -> None:
        """Open a new backend session, offering the version of the initial state, with the
        transport's handshake (``initialize`` then ``notifications/initialized``; for
        legacy SSE, the stream and its endpoint first), all within the timeout.

        The ``InitializeResult`` is validated, and the negotiated version must be one
        this client speaks. A missing ``Mcp-Session-Id`` means a stateless backend.
        ``headers`` are the credentials of the request that opens the session.
        """
        extra = self._call_headers(headers)
        try:
            with anyio.fail_after(self._timeout):
                state = await self._handshake(self._state.protocol_version, extra)
        except TimeoutError:
            raise BackendTimeout(
                self.target.name, f"initialize not answered within {self._timeout:g}s"
            ) from None
        self._install(state)

    async def resume_session(self, headers: Mapping[str, str] | None) -> None:
        """Take over the session of the initial state, without wire traffic.

        If the backend has forgotten it, the first call finds out (404) and
        re-initializes. ``headers`` are the credentials of the request that resumes the
        session (kept only to end the session if no call follows).
        """
        self._call_headers(headers)

    @property
    def state(self) -> BackendState:
        return self._state

    @property
    def closed(self) -> bool:
        return self._closed

    def statistics(self) -> BackendStatistics:
        return BackendStatistics(
            requests=self._requests,
            errors=self._errors,
            rpc_errors=self._rpc_errors,
            reinitializations=self._reinitializations,
        )

    async def request(self, method: str, params: dict[str, Any] | None, *,
                      on_message: MessageHandler | None = None,
                      timeout: float | None = None,  # noqa: ASYNC109 - the contract's deadline
                      headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        if self._closed:
            raise self._closed_error()
        extra = self._call_headers(headers)
        request_id = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        call = Call(request_id, encode(message), params, on_message, extra, replayable(method))

        async def attempt() -> dict[str, Any]:
            return await self._call(call)

        self._requests += 1
        try:
            return await self._guarded(
                lambda: self._with_recovery(attempt, extra),
                self._timeout if timeout is None else timeout,
                cancel_id=request_id,
                headers=extra,
            )
        except BackendRpcError:
            self._rpc_errors += 1
            raise
        except BackendError:
            self._errors += 1
            raise

    async def notify(self, method: str, params: dict[str, Any] | None, *,
                     headers: Mapping[str, str] | None = None) -> None:
        extra = self._call_headers(headers)
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        body = encode(message)

        async def attempt() -> None:
            await self._send(body, extra)

        await self._guarded(lambda: self._with_recovery(attempt, extra), self._timeout)

    async def respond(self, message: dict[str, Any], *,
                      headers: Mapping[str, str] | None = None) -> None:
        extra = self._call_headers(headers)
        body = encode({**message, "jsonrpc": "2.0"})

        async def attempt() -> None:
            try:
                await self._send(body, extra)
            except _SessionGone:
                # The request being answered belonged to the forgotten session.
                raise BackendSessionExpired(
                    self.target.name, "backend forgot the session"
                ) from None

        await self._guarded(attempt, self._timeout)

    async def aclose(self, *, timeout: float | None = None,  # noqa: ASYNC109
                     end_session: bool = True) -> None:
        if self._closed:
            if self._close_done is not None:
                await self._close_done.wait()
            return
        self._closed = True
        self._close_done = anyio.Event()
        end_session = end_session or self._unrecorded
        try:
            for scope in list(self._interruptible_scopes):
                scope.cancel()
            if self._inflight:
                self._drained = anyio.Event()
                with anyio.move_on_after(self._timeout if timeout is None else timeout):
                    await self._drained.wait()
                for scope in list(self._inflight):
                    scope.cancel()
        finally:
            if self._notices:  # each bounded by CANCEL_NOTICE_TIMEOUT
                await asyncio.wait(list(self._notices))
            with anyio.move_on_after(TERMINATE_TIMEOUT if end_session else 0, shield=True):
                try:
                    if end_session:
                        await self._terminate()
                except Exception:
                    logger.warning(
                        "backend %r: ending the session failed", self.target.name, exc_info=True
                    )
            self._close_done.set()

    # -- the shared mechanics ------------------------------------------------

    def _closed_error(self) -> SessionClosed:
        return SessionClosed(f"backend {self.target.name!r}: connection closed")

    def _call_headers(self, headers: Mapping[str, str] | None) -> Mapping[str, str]:
        """One call's own headers; the latest are kept for ending the session on close."""
        if not headers:
            return NO_HEADERS
        extra = MappingProxyType(dict(headers))
        self._latest_headers = extra
        return extra

    def _initialize(self, protocol_version: str) -> tuple[int, bytes]:
        """The id and body of the ``initialize`` request that opens a session."""
        request_id = next(self._ids)
        params = {"protocolVersion": protocol_version, **self._hello}
        message = {"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": params}
        return request_id, encode(message)

    @asynccontextmanager
    async def _opening(self, undo: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
        """Wraps the steps of a handshake after the backend session exists.

        If any fails, ``undo`` ends that session (shielded, bounded), so none is left
        half-made on the backend. A backend that forgets it at once has expired it.
        """
        try:
            try:
                yield
            except _SessionGone:
                raise BackendSessionExpired(
                    self.target.name, "backend forgot the session it just opened"
                ) from None
        except BaseException:
            with anyio.move_on_after(TERMINATE_TIMEOUT, shield=True):
                await undo()
            raise

    def _install(self, state: BackendState) -> None:
        """Make ``state`` current. Every call issued from now on uses it."""
        self._state = state
        self._generation += 1

    async def _guarded(self, operation: Callable[[], Awaitable[T]], seconds: float, *,
                       cancel_id: int | None = None, headers: Mapping[str, str] = NO_HEADERS,
                       ) -> T:
        """Run one call under the connection's rules.

        The call is refused after close, bounded by ``seconds`` and cancellable by
        :meth:`aclose`. If the request ``cancel_id`` is abandoned (the caller was
        cancelled or the deadline passed), the backend is told with
        ``notifications/cancelled``.
        """
        if self._closed:
            raise self._closed_error()
        # One scope for the deadline and aclose (each scope costs CPU on every call); as in
        # ``anyio.fail_after``, a cancel at or past the deadline is the deadline's.
        scope = anyio.CancelScope(deadline=anyio.current_time() + seconds)
        self._inflight.add(scope)
        try:
            with scope:
                return await operation()
        except anyio.get_cancelled_exc_class():
            if cancel_id is not None and not scope.cancel_called:
                self._notify_cancelled(cancel_id, "cancelled", headers)
            raise
        finally:
            self._inflight.discard(scope)
            if self._drained is not None and not self._inflight:
                self._drained.set()
        if anyio.current_time() < scope.deadline:
            raise self._closed_error()  # aclose cancelled it
        if cancel_id is not None:
            self._notify_cancelled(cancel_id, "timed out", headers)
        raise BackendTimeout(self.target.name, f"no answer within {seconds:g}s")

    def _notify_cancelled(self, request_id: int, reason: str,
                          headers: Mapping[str, str]) -> None:
        """Send ``notifications/cancelled`` in the background: the caller's answer (the
        timeout error, or its own cancellation) must not wait for it, and under load the
        notice itself may wait for a connection (up to ``CANCEL_NOTICE_TIMEOUT``). A plain
        task, since the call's scope is ending; ``aclose`` waits for the notices left."""
        task = asyncio.ensure_future(self._cancel_upstream(request_id, reason, headers))
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    async def _cancel_upstream(self, request_id: int, reason: str,
                               headers: Mapping[str, str] = NO_HEADERS) -> None:
        """Tell the backend we gave up on ``request_id``; best effort, shielded, bounded."""
        body = encode(
            {
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": request_id, "reason": reason},
            }
        )
        with anyio.move_on_after(CANCEL_NOTICE_TIMEOUT, shield=True):
            try:
                await self._send(body, headers)
            except (BackendError, _SessionGone) as exc:
                logger.debug(
                    "backend %r: cancellation notice not delivered: %s", self.target.name, exc
                )

    async def _with_recovery(self, attempt: Callable[[], Awaitable[T]],
                             headers: Mapping[str, str] = NO_HEADERS) -> T:
        """Run ``attempt``; if the backend forgot the session, re-initialize (with the
        call's ``headers``) and retry once."""
        generation = self._generation
        try:
            return await attempt()
        except _SessionGone:
            pass
        await self._recover(generation, headers)
        try:
            return await attempt()
        except _SessionGone:
            raise BackendSessionExpired(
                self.target.name, "backend forgot the session again right after re-initialization"
            ) from None

    async def _recover(self, generation: int, headers: Mapping[str, str] = NO_HEADERS) -> None:
        """Make sure the session seen at ``generation`` has been replaced.

        Singleflight: the first caller runs ``initialize`` and the others wait for it. A
        caller that arrives after the replacement returns at once and just retries.
        If the leader fails with a backend error, every waiter gets that error instead
        of trying again itself. If the leader was cancelled, the next waiter takes over.
        """
        while self._generation == generation:
            flight = self._flight
            if flight is None:
                await self._lead_recovery(headers)
                return
            await flight.done.wait()
            if flight.error is not None and self._generation == generation:
                raise flight.error

    async def _lead_recovery(self, headers: Mapping[str, str]) -> None:
        flight = _Flight(anyio.Event())
        self._flight = flight
        replaced = self._state
        try:
            state = await self._handshake(self._state.protocol_version, headers)
            self._install(state)
            self._reinitializations += 1
        except BackendError as exc:
            flight.error = exc
            raise
        finally:
            self._flight = None
            flight.done.set()
        logger.info("backend %r: session re-initialized", self.target.name)
        if self._on_reinitialized is not None:
            # Until the hook says the store has it (not if it fails, is cancelled, or finds
            # the session ended or changed), nobody else knows this upstream session: this
            # connection ends it when it closes, even when it closes only for this replica
            # (``end_session=False``). The live connection works either way.
            self._unrecorded = True
            try:
                self._unrecorded = not await self._on_reinitialized(replaced, state)
            except Exception:
                logger.exception("backend %r: on_reinitialized hook failed", self.target.name)

    async def _recover_quietly(self, generation: int,
                               headers: Mapping[str, str] = NO_HEADERS) -> bool:
        """:meth:`_recover` for a ``listen`` stream, which retries later instead of failing."""
        try:
            await self._recover(generation, headers)
        except BackendError as exc:
            logger.debug(
                "backend %r: re-initialization for listen failed: %s", self.target.name, exc
            )
            return False
        return True

    @contextmanager
    def _interruptible(self) -> Iterator[anyio.CancelScope]:
        """A scope that :meth:`aclose` cancels; wraps each wait of a ``listen`` iterator.

        ``listen`` is an async generator and must never yield inside a cancel scope.
        So each wait gets its own short-lived scope, and a cancelled one means "closed,
        stop".
        """
        scope = anyio.CancelScope()
        if self._closed:
            scope.cancel()
        self._interruptible_scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._interruptible_scopes.discard(scope)

    # -- implemented by each transport ---------------------------------------

    async def _call(self, call: Call) -> dict[str, Any]:
        """Send the encoded request once (with the call's headers) and return its result.

        Raises _SessionGone if the backend refused it for an unknown session.
        """
        raise NotImplementedError

    async def _send(self, body: bytes, headers: Mapping[str, str]) -> None:
        """Send an encoded notification or response; _SessionGone as for _call."""
        raise NotImplementedError

    async def _handshake(self, protocol_version: str, headers: Mapping[str, str]) -> BackendState:
        """Open a fresh backend session (``initialize`` + ``initialized``) with ``headers``."""
        raise NotImplementedError

    async def _terminate(self) -> None:
        """End the backend session (with the latest call's headers); called once,
        shielded and bounded, by aclose."""
        raise NotImplementedError
