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
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping
from typing import Any, Final

import anyio
from anyio.streams.memory import MemoryObjectSendStream
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    PROTOCOL_VERSION_META_KEY,
)
from mcp_types.version import LATEST_MODERN_VERSION

from vmcp.backend import BackendRpcError
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
EVERYTHING: Final = {"toolsListChanged": True, "promptsListChanged": True,
                     "resourcesListChanged": True}


class BackendWatch:
    """The upstream change streams of this replica, one per configured backend."""

    def __init__(self, backends: StatelessBackends, hub: ChangeHub) -> None:
        self._backends = backends
        self._hub = hub
        self._starts: MemoryObjectSendStream[str] | None = None
        self._watching: dict[str, tuple[anyio.CancelScope, anyio.Event]] = {}
        hub.ready = self.ready
        backends.on_list_changed = self._heard_in_call

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
        """Open the streams not open yet and wait (bounded) until each is listening."""
        self.reconcile(start=True)
        with anyio.move_on_after(READY_SECONDS):
            for _, opened in list(self._watching.values()):
                await opened.wait()

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

        if kind is BackendKind.MODERN:
            async def on_message(message: dict[str, Any]) -> dict[str, Any] | None:
                heard(message)
                return None

            meta = {PROTOCOL_VERSION_META_KEY: LATEST_MODERN_VERSION,
                    CLIENT_INFO_META_KEY: CLIENT_INFO, CLIENT_CAPABILITIES_META_KEY: {}}
            await self._backends.modern_client(name).listen(
                {"_meta": meta, "notifications": EVERYTHING}, headers=headers,
                on_message=on_message)
            return
        connection = await self._backends.dial(name)
        try:
            # The session is open: its GET stream follows at once, and what the backend
            # changes from now on is announced on it.
            heard({"method": ACKNOWLEDGED})
            async with contextlib.aclosing(connection.listen(headers=headers)) as messages:
                async for message in messages:
                    if "id" in message and "method" in message:
                        await connection.respond({"jsonrpc": "2.0", "id": message["id"],
                                                  "error": {"code": -32601,
                                                            "message": "Method not found"}})
                    else:
                        heard(message)
        finally:
            with anyio.CancelScope(shield=True):
                await connection.aclose(timeout=2.0)
