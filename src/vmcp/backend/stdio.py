"""``transport: stdio`` backends: one supervised process per backend per replica.

:class:`StdioProcesses` (owned by the app's lifespan) runs one :class:`StdioProcess` per
configured stdio backend: the shared :class:`~vmcp.backend.stdio_supervisor.StdioSupervisor`
starts it, runs ``initialize`` once, pings it and restarts it with backoff, and its
:class:`~vmcp.backend.stdio_link.StdioLink` multiplexes every client session's requests
over its one stdin/stdout.

Each client session's :class:`StdioBackend` is a *virtual* upstream session on that
process: opening one waits for the process to be up and takes its ``InitializeResult``
(no wire traffic), re-attaching on restore is the same, and closing it leaves the
process running. List changes the process announces (and a restart, after which its
lists may differ) reach every session's :meth:`StdioBackend.listen`, which is where the
catalog refresh of the other transports starts too.

Limits, by design: the process and whatever state it keeps are shared by every session
of the replica, and a session restored on another replica meets another process. A
stateful stdio server behind several replicas belongs behind ``vmcp bridge`` as a
deployment of its own.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import AsyncGenerator, Callable, Mapping
from types import TracebackType
from typing import Any, Final

import anyio
import anyio.abc
import httpx2
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pydantic import BaseModel

from vmcp.backend import wire
from vmcp.backend.base import BaseBackend, Call
from vmcp.backend.contract import (
    DEFAULT_PROTOCOL_VERSION,
    BackendState,
    BackendTarget,
    StdioCommand,
)
from vmcp.backend.stdio_link import StdioLink
from vmcp.backend.stdio_supervisor import (
    MessageCallback,
    ReadStream,
    ServerDown,
    StdioSupervisor,
    WriteStream,
)
from vmcp.config import BackendConfig, EnvFrom
from vmcp.errors import BackendUnavailable

logger = logging.getLogger(__name__)

BROADCAST: Final = frozenset({
    "notifications/tools/list_changed", "notifications/prompts/list_changed",
    "notifications/resources/list_changed", "notifications/resources/updated",
})
"""Notifications outside any request that every session using the process is given."""
LISTENER_BUFFER: Final = 64


def stdio_command(backend: BackendConfig, environ: Mapping[str, str] | None = None
                  ) -> StdioCommand:
    """The command ``backend`` configures, its ``value_env`` variables read from
    ``environ`` (default: the gateway's environment) now."""
    source = os.environ if environ is None else environ
    env, missing = [], []
    for key, value in backend.env.items():
        if isinstance(value, EnvFrom):
            if value.value_env not in source:
                missing.append(value.value_env)
                continue
            value = source[value.value_env]
        env.append((key, value))
    return StdioCommand(backend.command or "", backend.args, tuple(env), backend.cwd,
                        tuple(missing), backend.connect_timeout_seconds)


class StdioProcess:
    """One stdio backend's supervised process, its link and who listens to it."""

    def __init__(self, name: str, command: StdioCommand, *, hello: Mapping[str, Any]) -> None:
        self.name = name
        self.command = command
        self._hello = dict(hello)
        self._listeners: dict[MemoryObjectReceiveStream[dict[str, Any]],
                              MemoryObjectSendStream[dict[str, Any]]] = {}
        self.supervisor: StdioSupervisor[StdioLink] = StdioSupervisor(
            command.argv(), link=self._link, env=dict(command.env) or None, cwd=command.cwd,
            initialize_seconds=command.initialize_seconds)
        self.supervisor.on_notification = self._broadcast
        if command.missing_env:
            self.supervisor.last_error = (
                "not started: environment variable(s) not set in the gateway: "
                + ", ".join(command.missing_env))

    def _link(self, read: ReadStream, write: WriteStream,
              on_message: MessageCallback) -> StdioLink:
        return StdioLink(self.name, read, write, on_message, hello=self._hello,
                         protocol_version=DEFAULT_PROTOCOL_VERSION,
                         on_closed=self.supervisor.fail)

    @property
    def running(self) -> bool:
        return self.supervisor.running

    async def link(self, wait_seconds: float) -> StdioLink:
        """The running process's link; ``BackendUnavailable`` (saying why) if it is down."""
        try:
            return await self.supervisor.session(wait_seconds)
        except ServerDown as exc:
            raise BackendUnavailable(self.name, str(exc)) from None

    async def run(self) -> None:
        if self.command.missing_env:
            logger.error("stdio backend %r %s", self.name, self.supervisor.last_error,
                         extra={"backend": self.name})
            await anyio.sleep_forever()
        await self.supervisor.run()

    def subscribe(self) -> MemoryObjectReceiveStream[dict[str, Any]]:
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](LISTENER_BUFFER)
        self._listeners[receive] = send
        return receive

    def unsubscribe(self, receive: MemoryObjectReceiveStream[dict[str, Any]]) -> None:
        send = self._listeners.pop(receive, None)
        if send is not None:
            send.close()
        receive.close()

    async def _broadcast(self, message: Any) -> None:
        if isinstance(message, BaseModel):  # the supervisor's "lists may differ" after a restart
            message = {"jsonrpc": "2.0", **message.model_dump(by_alias=True, exclude_none=True,
                                                               mode="json")}
        if not isinstance(message, dict):
            return
        if message.get("method") not in BROADCAST:
            logger.debug("stdio backend %r: %r outside any request dropped", self.name,
                         message.get("method"))
            return
        for listener in list(self._listeners.values()):
            try:
                listener.send_nowait(message)
            except anyio.WouldBlock:
                logger.warning("stdio backend %r: a session's listener is full; %r dropped "
                               "for it", self.name, message.get("method"))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # its session is ending; unsubscribe removes it


class StdioProcesses:
    """This replica's stdio processes, one per stdio backend; an async context manager
    (the lifespan's) whose exit stops them all, process groups included."""

    def __init__(self, *, client_info: Mapping[str, Any],
                 capabilities: Mapping[str, Any]) -> None:
        self._hello = {"capabilities": dict(capabilities), "clientInfo": dict(client_info)}
        self._processes: dict[str, tuple[StdioProcess, anyio.CancelScope]] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self.on_change: Callable[[str, bool], None] | None = None
        """Told a backend's name and whether its process now runs, each time that changes
        (health follows it: sessions take the backend in when it comes up)."""

    async def __aenter__(self) -> StdioProcesses:
        self._tg = await anyio.create_task_group().__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(exc_type, exc, tb)
        self._processes.clear()

    def reconcile(self, targets: list[BackendTarget]) -> None:
        """Start the stdio backends ``targets`` names (again, if their command changed);
        stop those it no longer names."""
        wanted = {t.name: t for t in targets if t.stdio is not None}
        for name in [n for n in self._processes if n not in wanted]:
            self._processes.pop(name)[1].cancel()
        for target in wanted.values():
            self.process(target)

    def process(self, target: BackendTarget) -> StdioProcess:
        """The process for ``target``, started now if it is not running its command."""
        assert target.stdio is not None
        current = self._processes.get(target.name)
        if current is not None and current[0].command == target.stdio:
            return current[0]
        if current is not None:
            current[1].cancel()
        if self._tg is None:
            raise BackendUnavailable(target.name, "stdio processes are not running")
        process = StdioProcess(target.name, target.stdio, hello=self._hello)
        process.supervisor.on_state_change = functools.partial(self._changed, process)
        scope = anyio.CancelScope()

        async def run() -> None:
            with scope:
                await process.run()

        self._processes[target.name] = (process, scope)
        self._tg.start_soon(run)
        return process

    def _changed(self, process: StdioProcess) -> None:
        if self.on_change is not None and self.get(process.name) is process:
            self.on_change(process.name, process.running)

    def get(self, name: str) -> StdioProcess | None:
        entry = self._processes.get(name)
        return entry[0] if entry is not None else None


class StdioBackend(BaseBackend):
    """One client session's virtual upstream session on a shared stdio process."""

    def __init__(self, target: BackendTarget, http: httpx2.AsyncClient, *,
                 process: StdioProcess, **options: Any) -> None:
        self._process = process
        super().__init__(target, http, **options)

    async def _handshake(self, protocol_version: str, headers: Mapping[str, str]
                         ) -> BackendState:
        link = await self._process.link(self._timeout)
        result = link.initialize_result
        return BackendState(None, str(result.get("protocolVersion", protocol_version)), result)

    async def _call(self, call: Call) -> dict[str, Any]:
        link = await self._process.link(self._timeout)
        # The base class hands over the encoded request; the link needs its parts.
        message = json.loads(call.body)
        answer = await link.request(message["method"], message.get("params"),
                                    on_message=call.on_message)
        return wire.result_of(self.target.name, answer)

    async def _send(self, body: bytes, headers: Mapping[str, str]) -> None:
        message = json.loads(body)
        if message.get("method") == "notifications/cancelled":
            # The link already cancelled the abandoned request under the id the process
            # knew it by; this one names the connection's own id, which it never saw.
            return
        link = await self._process.link(0)
        await link.send(message)

    async def _terminate(self) -> None:
        """Nothing to end: the process is shared and outlives this session."""

    async def listen(self, *, headers: Mapping[str, str] | None = None
                     ) -> AsyncGenerator[dict[str, Any], None]:
        receive = self._process.subscribe()
        try:
            while not self._closed:
                with self._interruptible() as scope:
                    message = await receive.receive()
                if scope.cancelled_caught:
                    return
                yield message
        finally:
            self._process.unsubscribe(receive)
