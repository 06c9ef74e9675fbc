"""Writing audit events without ever holding a request up.

:meth:`AuditTrail.emit` puts an event on a bounded queue and returns at once; a
background thread turns events into JSON lines and writes them to the sink (standard
output, or a file opened for appending). When the queue is full the event is dropped and
counted (:attr:`AuditTrail.dropped`, exported as ``vmcp_audit_events_dropped``): a slow
disk must cost audit events, never calls. A thread rather than a task, so that a
blocking write cannot stall the event loop either. :meth:`aclose` drains what is queued.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sys
import threading
from typing import IO, Any

import anyio

from vmcp.config import AuditConfig
from vmcp.errors import ConfigError

logger = logging.getLogger(__name__)

_STOP = object()


class AuditTrail:
    """One process's audit writer; an async context manager owned by the app's lifespan."""

    def __init__(self, config: AuditConfig, *, stream: IO[str] | None = None) -> None:
        """Opens a ``file:`` sink now (``ConfigError`` if it cannot be), so that a gateway
        that cannot write its audit trail does not start."""
        self.config = config
        self.event_types = frozenset(config.event_types)
        self.redact_keys = frozenset(config.redact_keys)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=config.queue_size)
        self._stream = stream
        self._owned: IO[str] | None = None
        if stream is None and config.sink != "stdout":
            path = config.sink.partition(":")[2]
            try:
                self._owned = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by aclose)
            except OSError as exc:
                raise ConfigError(f"audit.sink: cannot open {path}: {exc.strerror}") from None
            self._stream = self._owned
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.written = 0
        self.write_errors = 0

    def wants(self, event_type: str) -> bool:
        return event_type in self.event_types

    def emit(self, event: dict[str, Any]) -> bool:
        """Queue ``event``; False (and counted) if the queue is full."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    async def __aenter__(self) -> AuditTrail:
        if self._stream is None:
            self._stream = sys.stdout
        self._thread = threading.Thread(target=self._write_loop, name="vmcp-audit",
                                        daemon=True)
        self._thread.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Write what is queued, then stop (bounded: a stuck sink is abandoned after 5 s)."""
        thread = self._thread
        if thread is None:
            return
        self._thread = None
        await anyio.to_thread.run_sync(self._queue.put, _STOP)
        await anyio.to_thread.run_sync(thread.join, 5.0)
        if self._owned is not None:
            self._owned.close()

    def _write_loop(self) -> None:
        stream = self._stream
        assert stream is not None
        while True:
            event = self._queue.get()
            if event is _STOP:
                break
            try:
                stream.write(json.dumps(event, ensure_ascii=False, default=str) + "\n")
                if self._queue.empty():
                    stream.flush()
                self.written += 1
            except (OSError, ValueError) as exc:
                self.write_errors += 1
                logger.warning("audit event not written: %s", exc)
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
