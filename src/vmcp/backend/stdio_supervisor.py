"""One MCP server started as a command and spoken to over stdio, kept running.

Shared by ``vmcp bridge`` (which drives the process with the SDK's ``ClientSession``) and
the gateway's ``transport: stdio`` backends (which multiplex many client sessions over it
with :class:`~vmcp.backend.stdio_link.StdioLink`): the supervisor only needs a *link* that
can ``initialize`` and ``send_ping``, made from the process's message streams.

Most MCP servers in the wild are a command (``npx …``, ``uvx …``) that speaks JSON-RPC
on its stdin and stdout. :class:`StdioSupervisor` starts it with the SDK's stdio
client (which puts it in a process group of its own and, on the way out, closes its
stdin, then terminates and kills the whole group, so nothing is left behind), performs
the handshake under a deadline, and then checks it with a ``ping`` every few seconds.
Whatever goes wrong (it exits, it cannot be started, it prints something that is not
JSON-RPC, it does not answer the handshake or a ping) ends that run with a sentence
saying so, kept as :attr:`last_error` for the health report and for the errors
requests get meanwhile; it is started again after a growing delay.

Its stderr is the server's own log: each line is logged here (bounded in length and in
rate, so a server flooding stderr costs a counter, not memory).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shlex
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Generic, Protocol, TextIO, TypeVar

import anyio
import anyio.to_thread
import pydantic
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared import _stream_protocols as _streams  # the stdio client's stream types
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp_types import (
    Implementation,
    InitializeResult,
    PromptListChangedNotification,
    ResourceListChangedNotification,
    ToolListChangedNotification,
)

from vmcp import __version__

logger = logging.getLogger(__name__)

__all__ = ["Link", "LinkFactory", "ServerDown", "StdioSupervisor", "client_session_link"]

RESTART_DELAYS: Final = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Delays before the 1st, 2nd, … restart in a row; a run that stayed up a minute resets them."""
STABLE_SECONDS: Final = 60.0
STDERR_LINE_CHARS: Final = 2000
STDERR_LINES_PER_SECOND: Final = 50
"""stderr lines logged per second at most; the rest are counted and reported once."""
CLIENT_INFO: Final = Implementation(name="vmcp-bridge", version=__version__)

ReadStream = _streams.ReadStream[SessionMessage | Exception]
WriteStream = _streams.WriteStream[SessionMessage]


class MessageCallback(Protocol):
    """Given what the link cannot place itself: a parse error (an ``Exception``: the server
    wrote something that is not JSON-RPC) or a notification outside any request."""

    async def __call__(self, message: Any) -> None: ...


class Link(Protocol):
    """What the supervisor needs of the client end it drives the process through."""

    async def initialize(self) -> InitializeResult: ...

    async def send_ping(self) -> Any: ...


L = TypeVar("L", bound=Link)
LinkFactory = Callable[[ReadStream, WriteStream, MessageCallback],
                       AbstractAsyncContextManager[L]]


def client_session_link(read: ReadStream, write: WriteStream,
                        on_message: MessageCallback) -> ClientSession:
    """The SDK's own client session, one request at a time per caller (the bridge's link)."""
    return ClientSession(read, write, message_handler=on_message, client_info=CLIENT_INFO)


class ServerDown(Exception):
    """The stdio server is not running now; the message says why."""


class StdioSupervisor(Generic[L]):
    """Runs one stdio MCP server, restarting it with backoff, until cancelled."""

    def __init__(self, command: Sequence[str], *, link: LinkFactory[L],
                 env: dict[str, str] | None = None,
                 cwd: str | None = None, initialize_seconds: float = 30.0,
                 ping_seconds: float = 5.0, restart_delays: Sequence[float] = RESTART_DELAYS
                 ) -> None:
        if not command:
            raise ValueError("a command is needed")
        self.command = list(command)
        self._link = link
        self._params = StdioServerParameters(command=command[0], args=list(command[1:]),
                                             env=env, cwd=cwd)
        self._initialize_seconds = initialize_seconds
        self._ping_seconds = ping_seconds
        self._delays = tuple(restart_delays)
        self._session: L | None = None
        self.on_state_change: Callable[[], None] | None = None
        """Told when the server starts running or stops (for health)."""
        self._up = anyio.Event()
        self._fault: str | None = None
        self._faulted = anyio.Event()
        self.on_notification: Callable[[Any], Awaitable[None]] | None = None
        """Given every notification the server sends outside a request (a list change)."""
        self.initialize_result: InitializeResult | None = None
        self.last_error: str | None = None
        self.starts = 0

    @property
    def name(self) -> str:
        return shlex.join(self.command)

    @property
    def running(self) -> bool:
        return self._session is not None

    def status(self) -> dict[str, Any]:
        """What the health report shows."""
        return {"command": self.name, "running": self.running, "starts": self.starts,
                "last_error": self.last_error}

    async def session(self, wait_seconds: float = 0.0) -> L:
        """The running server's session (waiting up to ``wait_seconds`` for its first
        start); raises :class:`ServerDown` naming the last failure otherwise (a server
        that failed is not waited for: its restart may be far off)."""
        if self._session is None and wait_seconds > 0 and self.last_error is None:
            with anyio.move_on_after(wait_seconds):
                await self._up.wait()
        if self._session is None:
            raise ServerDown(f"the stdio server ({self.name}) is not running"
                             + (f": {self.last_error}" if self.last_error else ""))
        return self._session

    def fail(self, reason: str) -> None:
        """A request found the server broken (its connection closed): restart it now."""
        if self._fault is None:
            self._fault = reason
            self._faulted.set()

    async def run(self) -> None:
        """Start, watch and restart the server until cancelled (which stops it)."""
        failures = 0
        while True:
            began = time.monotonic()
            self.starts += 1
            try:
                await self._run_once()
            except Exception as exc:
                self.last_error = _describe(exc)
            finally:
                was_up, self._session = self._session is not None, None
                self._up = anyio.Event()
                if was_up and self.on_state_change is not None:
                    self.on_state_change()
            if time.monotonic() - began >= STABLE_SECONDS:
                failures = 0
            delay = self._delays[min(failures, len(self._delays) - 1)]
            failures += 1
            logger.warning("stdio server (%s) stopped: %s; starting it again in %.1fs",
                           self.name, self.last_error, delay)
            await anyio.sleep(delay)

    async def _run_once(self) -> None:
        self._fault = None
        self._faulted = anyio.Event()
        garbage: list[str] = []

        async def on_message(message: Any) -> None:
            if isinstance(message, Exception):
                text = _unreadable(message)
                garbage.append(text)
                self.fail(f"it wrote something that is not JSON-RPC on stdout ({text})")
            elif self.on_notification is not None:
                await self.on_notification(message)

        async with _stderr_to_log(self.name) as errlog, \
                stdio_client(self._params, errlog=errlog) as (read, write), \
                self._link(read, write, on_message) as session:
            try:
                with anyio.fail_after(self._initialize_seconds):
                    self.initialize_result = await session.initialize()
            except TimeoutError:
                why = (f"it wrote something that is not JSON-RPC on stdout ({garbage[0]})"
                       if garbage else "it did not answer")
                raise ServerDown(f"no answer to initialize within "
                                 f"{self._initialize_seconds:g}s: {why}") from None
            except MCPError as exc:
                raise ServerDown(f"initialize failed: {exc} (did it exit? its stderr is in "
                                 "the log)") from None
            self.last_error = None
            self._session = session
            self._up.set()
            if self.on_state_change is not None:
                self.on_state_change()
            if self.starts > 1 and self.on_notification is not None:
                # Restarted: whatever it lists now may differ from before.
                for changed in (ToolListChangedNotification(), PromptListChangedNotification(),
                                ResourceListChangedNotification()):
                    await self.on_notification(changed)
            info = self.initialize_result.server_info
            logger.info("stdio server (%s) running: %s %s", self.name, info.name, info.version)
            await self._watch(session)

    async def _watch(self, session: L) -> None:
        """Return (with :attr:`last_error` set) once the server stops being usable."""
        while self._fault is None:
            with anyio.move_on_after(self._ping_seconds):
                await self._faulted.wait()
            if self._fault is not None:
                break
            try:
                with anyio.fail_after(self._initialize_seconds):
                    await session.send_ping()
            except TimeoutError:
                self.fail(f"no answer to ping within {self._initialize_seconds:g}s")
            except MCPError as exc:
                self.fail(f"it stopped answering ({exc}; its stderr is in the log)")
        self.last_error = self._fault


@contextlib.asynccontextmanager
async def _stderr_to_log(name: str) -> AsyncIterator[TextIO]:
    """A file the server's stderr goes to; each line of it is logged (bounded)."""
    read_fd, write_fd = os.pipe()
    writer = io.TextIOWrapper(io.FileIO(write_fd, "w"), encoding="utf-8")
    reader = threading.Thread(target=_relay_stderr, args=(read_fd, name), daemon=True,
                              name="stdio-stderr")
    reader.start()
    try:
        yield writer
    finally:
        # The server has exited (the stdio client waits for that): with our end closed
        # too, the relay reads to the end and stops.
        writer.close()
        await anyio.to_thread.run_sync(reader.join, 5.0, abandon_on_cancel=True)


def _relay_stderr(fd: int, name: str) -> None:
    dropped = 0
    window_start, in_window = time.monotonic(), 0
    with open(fd, "rb", closefd=True) as stream:
        for raw in _lines(stream):
            now = time.monotonic()
            if now - window_start >= 1.0:
                if dropped:
                    logger.warning("stdio server (%s): %d stderr lines not logged (too many)",
                                   name, dropped)
                window_start, in_window, dropped = now, 0, 0
            in_window += 1
            if in_window > STDERR_LINES_PER_SECOND:
                dropped += 1
                continue
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            logger.info("stdio server stderr: %s", text[:STDERR_LINE_CHARS],
                        extra={"backend": name})
    if dropped:
        logger.warning("stdio server (%s): %d stderr lines not logged (too many)", name,
                       dropped)


def _lines(stream: io.BufferedReader) -> Iterator[bytes]:
    """Lines of ``stream``, each cut at a bounded length (a line without end costs no
    more memory than that)."""
    while True:
        line = stream.readline(STDERR_LINE_CHARS * 4)
        if not line:
            return
        if not line.endswith(b"\n"):
            # The rest of an over-long line is skipped, not kept.
            while (more := stream.readline(STDERR_LINE_CHARS * 4)) and not more.endswith(b"\n"):
                pass
        yield line


def _unreadable(exc: Exception) -> str:
    """What the server wrote instead of JSON-RPC, as far as the parse error tells."""
    if isinstance(exc, pydantic.ValidationError):
        errors = exc.errors()
        if errors and isinstance(errors[0].get("input"), str):
            return repr(errors[0]["input"][:120])
    first = str(exc).splitlines()
    return first[0][:200] if first else repr(exc)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ServerDown):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return f"cannot start it: {exc.strerror}: {exc.filename}"
    if isinstance(exc, OSError):
        return f"cannot start it: {exc}"
    if isinstance(exc, BaseExceptionGroup):
        inner = exc.exceptions[0] if exc.exceptions else exc
        return _describe(inner)
    return f"{type(exc).__name__}: {exc}"
