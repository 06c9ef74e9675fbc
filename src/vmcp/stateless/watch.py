"""Hearing the backends' own change notifications: one stream per backend per replica.

A backend of the stateless revision announces changes on a ``subscriptions/listen``
stream; a session-based one on the GET stream of an upstream session. Either way the
gateway holds one such stream per backend on each replica, as itself (the backend's
static headers; a backend that takes only callers' credentials refuses it, and its
changes are heard only during calls), shared by every listener here, and hands what it hears to
the :class:`~vmcp.stateless.subscriptions.ChangeHub` (which also tells the other
replicas). The streams open when the first listener arrives and stay until shutdown;
one that drops is opened again with backoff, and since changes may have been missed
meanwhile, the reopening itself counts as a change of every kind.

The same streams carry the resource updates this replica's listeners subscribed to
(:meth:`ChangeHub.subscribed`): a modern backend's listen names them in its
``resourceSubscriptions`` (a listen's filter is fixed, so when the set changes the
stream is opened again with the new one), and on a session-based backend's session they
are subscribed with ``resources/subscribe`` as the set grows (and unsubscribed when
the last listener of a URI goes).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, Final

import anyio
from anyio.streams.memory import MemoryObjectSendStream
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    PROTOCOL_VERSION_META_KEY,
)
from mcp_types.version import LATEST_MODERN_VERSION

from vmcp.backend import BackendConnection, BackendRpcError
from vmcp.backend.modern import NotModern
from vmcp.errors import METHOD_NOT_FOUND_CODE, BackendError
from vmcp.stateless.backends import StatelessBackends
from vmcp.stateless.pool import BackendKind
from vmcp.stateless.subscriptions import ALL_KINDS, ChangeHub
from vmcp.upstream.discovery import CLIENT_INFO

logger = logging.getLogger(__name__)

__all__ = ["BackendWatch"]

READY_SECONDS: Final = 2.0
"""How long a new listener's acknowledgement waits for the backends' streams to open."""
RETRY_DELAYS: Final = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
CHANGE_KINDS: Final = {
    "notifications/tools/list_changed": "tools",
    "notifications/prompts/list_changed": "prompts",
    "notifications/resources/list_changed": "resources",
}
ACKNOWLEDGED: Final = "notifications/subscriptions/acknowledged"
UPDATED: Final = "notifications/resources/updated"
SUBSCRIBE_SECONDS: Final = 10.0
EVERYTHING: Final = {"toolsListChanged": True, "promptsListChanged": True,
                     "resourcesListChanged": True}


class BackendWatch:
    """The upstream change streams of this replica, one per configured backend."""

    def __init__(self, backends: StatelessBackends, hub: ChangeHub) -> None:
        self._backends = backends
        self._hub = hub
        self._starts: MemoryObjectSendStream[str] | None = None
        self._watching: dict[str, tuple[anyio.CancelScope, anyio.Event]] = {}
        self._resubscribe: dict[str, anyio.Event] = {}
        self._upstream: dict[str, frozenset[str]] = {}
        self._progress = anyio.Event()
        hub.ready = self.ready
        hub.on_resources = self._resources_changed
        backends.on_list_changed = self._heard_in_call

    def _resources_changed(self, backend: str) -> None:
        event = self._resubscribe.get(backend)
        if event is not None:
            event.set()

    def _heard_in_call(self, backend: str, method: str) -> None:
        kind = CHANGE_KINDS.get(method)
        if kind is not None:
            self._hub.changed([kind], backend=backend)

    async def run(self) -> None:
        """Run the streams until cancelled. They start here, not in the request that
        asked for them, so they carry no caller's identity or credentials: a stream
        shared by every listener is the gateway's own."""
        starts, requested = anyio.create_memory_object_stream[str](math.inf)
        self._starts = starts
        try:
            async with anyio.create_task_group() as tg, requested:
                async for name in requested:
                    if name in self._watching:
                        scope, opened = self._watching[name]
                        tg.start_soon(self._watch, name, scope, opened)
        finally:
            self._starts = None
            starts.close()

    async def ready(self) -> None:
        """Open the streams not open yet and wait (bounded) until each is listening, with
        the resource subscriptions of every listener here."""
        self.reconcile(start=True)
        with anyio.move_on_after(READY_SECONDS):
            for _, opened in list(self._watching.values()):
                await opened.wait()
            # And until the resource URIs listeners here want are subscribed upstream.
            while any(not self._hub.subscribed(name) <= self._upstream.get(name, frozenset())
                      for name in self._watching):
                await self._progress.wait()

    def reconcile(self, *, start: bool = False, restart: bool = False) -> None:
        """Follow the configured backends: stop watching removed ones, and watch new ones
        if watching has begun (or ``start``); ``restart`` (a reload, which may have
        changed a backend's address or credentials) opens every stream again."""
        if self._starts is None:
            return
        names = set(self._backends.backend_names())
        gone = set(self._watching) if restart else set(self._watching) - names
        start = start or (restart and bool(self._watching))
        for name in gone:
            scope, _ = self._watching.pop(name)
            scope.cancel()
        if not (start or self._watching):
            return
        for name in sorted(names - set(self._watching)):
            scope, opened = anyio.CancelScope(), anyio.Event()
            self._watching[name] = (scope, opened)
            self._starts.send_nowait(name)

    @property
    def watching(self) -> list[str]:
        return sorted(self._watching)

    async def _watch(self, name: str, scope: anyio.CancelScope, opened: anyio.Event) -> None:
        attempt = 0
        with scope:
            while True:
                heard = False

                def listening() -> None:
                    nonlocal heard
                    heard = True
                    opened.set()

                try:
                    await self._listen_once(name, listening, reopened=attempt > 0)
                except NotModern:
                    self._backends.kinds.correct(name, BackendKind.SESSION)
                except BackendRpcError as exc:
                    if exc.code == METHOD_NOT_FOUND_CODE:
                        # It offers no change stream; its changes are heard during calls.
                        logger.info("backend %s offers no subscriptions/listen", name,
                                    extra={"backend": name})
                        opened.set()
                        await anyio.sleep_forever()
                    logger.info("change stream of backend %s: %s", name, exc,
                                extra={"backend": name})
                except (BackendError, TimeoutError) as exc:
                    logger.info("change stream of backend %s: %s", name, exc,
                                extra={"backend": name})
                except Exception:
                    logger.exception("change stream of backend %s failed", name)
                opened.set()  # a listener waits no longer for a stream that failed
                attempt = 1 if heard else attempt + 1
                await anyio.sleep(RETRY_DELAYS[min(attempt - 1, len(RETRY_DELAYS) - 1)])

    async def _listen_once(self, name: str, listening: Any, *, reopened: bool) -> None:
        kind = await self._backends.kinds.kind(name)
        headers = await self._backends.gateway_headers(name)

        def heard(message: Mapping[str, Any]) -> None:
            method = message.get("method")
            if method == ACKNOWLEDGED:
                listening()
                if reopened:
                    self._hub.changed(ALL_KINDS, backend=name)
            elif isinstance(method, str) and method in CHANGE_KINDS:
                self._hub.changed([CHANGE_KINDS[method]], backend=name)
            elif method == UPDATED:
                uri = (message.get("params") or {}).get("uri")
                if isinstance(uri, str):
                    self._hub.resource_updated(name, uri)

        if kind is BackendKind.MODERN:
            await self._listen_modern(name, headers, heard)
            return
        changed = anyio.Event()
        self._resubscribe[name] = changed
        connection = await self._backends.dial(name)
        try:
            # The session is open: its GET stream follows at once, and what the backend
            # changes from now on is announced on it.
            heard({"method": ACKNOWLEDGED})
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._follow_subscriptions, name, connection, headers, changed)
                async with contextlib.aclosing(connection.listen(headers=headers)) as messages:
                    async for message in messages:
                        if "id" in message and "method" in message:
                            await connection.respond({"jsonrpc": "2.0", "id": message["id"],
                                                      "error": {"code": -32601,
                                                                "message": "Method not found"}})
                        else:
                            heard(message)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await connection.aclose(timeout=2.0)

    async def _listen_modern(self, name: str, headers: Mapping[str, str],
                             heard: Callable[[Mapping[str, Any]], None]) -> None:
        """The backend's listen stream, opened again whenever the resource URIs wanted
        change: the new stream is acknowledged before the old one is closed, so no
        update falls between them (one may come twice: every update is a level trigger).
        Returns when the current stream ends."""
        async with anyio.create_task_group() as tg:
            previous: anyio.CancelScope | None = None
            while True:
                changed = anyio.Event()
                self._resubscribe[name] = changed
                wanted = self._hub.subscribed(name)
                scope, acked = anyio.CancelScope(), anyio.Event()
                tg.start_soon(self._one_listen, name, headers, wanted, heard, scope, acked,
                              tg.cancel_scope)
                await acked.wait()
                if previous is None:
                    heard({"method": ACKNOWLEDGED})
                else:
                    previous.cancel()
                previous = scope
                self._subscribed_upstream(name, wanted)
                await changed.wait()

    async def _one_listen(self, name: str, headers: Mapping[str, str], wanted: frozenset[str],
                          heard: Callable[[Mapping[str, Any]], None],
                          scope: anyio.CancelScope, acked: anyio.Event,
                          whole: anyio.CancelScope) -> None:
        async def on_message(message: dict[str, Any]) -> dict[str, Any] | None:
            if message.get("method") == ACKNOWLEDGED:
                acked.set()
            else:
                heard(message)
            return None

        meta = {PROTOCOL_VERSION_META_KEY: LATEST_MODERN_VERSION,
                CLIENT_INFO_META_KEY: CLIENT_INFO, CLIENT_CAPABILITIES_META_KEY: {}}
        notifications: dict[str, Any] = dict(EVERYTHING)
        if wanted:
            notifications["resourceSubscriptions"] = sorted(wanted)
        with scope:
            await self._backends.modern_client(name).listen(
                {"_meta": meta, "notifications": notifications}, headers=headers,
                on_message=on_message)
            whole.cancel()  # the backend ended the current stream: open it all again

    def _subscribed_upstream(self, name: str, uris: frozenset[str]) -> None:
        """``uris`` are now subscribed at ``name``: wake whoever waits for them."""
        self._upstream[name] = uris
        self._progress.set()
        self._progress = anyio.Event()

    async def _follow_subscriptions(self, name: str, connection: BackendConnection,
                                    headers: Mapping[str, str], changed: anyio.Event) -> None:
        """Keep the session's resource subscriptions equal to what listeners here want
        (a new session starts with none). Runs as long as the session's stream."""
        subscribed: set[str] = set()
        while True:
            wanted = set(self._hub.subscribed(name))
            for method, uris in (("resources/subscribe", wanted - subscribed),
                                 ("resources/unsubscribe", subscribed - wanted)):
                for uri in sorted(uris):
                    try:
                        await connection.request(method, {"uri": uri}, headers=headers,
                                                 timeout=SUBSCRIBE_SECONDS)
                    except (BackendError, TimeoutError) as exc:
                        logger.info("%s %s at backend %s: %s", method, uri, name, exc,
                                    extra={"backend": name})
                        continue
                    subscribed.symmetric_difference_update({uri})
            self._subscribed_upstream(name, frozenset(subscribed))
            await changed.wait()
            changed = anyio.Event()
            self._resubscribe[name] = changed

