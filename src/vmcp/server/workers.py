"""``vmcp serve --workers N``: N gateway processes on one port, each a replica.

Python runs one request at a time per process, so one process uses one core. Here a
parent binds the sockets (the public one and the admin listener), starts N worker
processes that each serve both, and supervises them with uvicorn's own multiprocess
supervisor (a well-kept implementation of exactly this; the version is pinned):

* the kernel hands each new connection to one of the workers blocked in ``accept`` on
  the shared socket, so no port is ever unbound while a worker restarts;
* a worker that dies (or stops answering the supervisor's health pings) is replaced;
* ``SIGHUP`` restarts the workers one at a time, each reading the configuration file
  anew: the replacement serves before the old worker is told to stop, and the old one
  drains like any replica on ``SIGTERM`` (``vmcp.server.serving``);
* ``SIGTERM``/``SIGINT`` to the parent drain every worker and end it.

Each worker is a replica in every sense: its own backend connections, session cache and
metrics, and a ``replica_id`` of its own (the configured one plus its process id), so
/status and logs tell them apart. Sessions are shared through the store, which is why
more than one worker needs a shared store: with the memory store each worker would
hold its own sessions, and a client's next request, landing on another worker, would
find none. That configuration is refused at start (:func:`check_workers`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Protocol

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from vmcp import logs
from vmcp.config import VmcpConfig, load_config
from vmcp.errors import ConfigError

logger = logging.getLogger(__name__)

class Build(Protocol):
    """How a worker builds its server (``vmcp.server.serving.build_server``; a module-level
    function, so that it reaches the worker process by name)."""

    def __call__(self, config: VmcpConfig, *, log_level: str, config_path: Path | None,
                 sockets: list[socket.socket] | None = None) -> uvicorn.Server: ...


HEALTHCHECK_SECONDS = 60
"""How long a worker may take to answer the supervisor's ping (a thread of its own, so a
busy event loop does not delay it) and to be ready after a restart before it is taken for
hung and replaced. Generous: a new process on a loaded machine can take many seconds to
get as far as answering, and one that exits is replaced at once whatever this says."""


def check_workers(config: VmcpConfig, workers: int) -> None:
    """Refuse ``workers`` > 1 on the memory store: sessions would not be shared."""
    if workers > 1 and config.session.store == "memory":
        raise ConfigError([
            f"--workers {workers} needs a shared session store (session.store: redis://...): "
            "with the memory store each worker would keep its own sessions, and a session's "
            "next request, handed to another worker, would not find it"])


class _Worker(Process):
    """One worker: builds the gateway app in its own process, then serves the sockets it
    inherited (uvicorn's ``Process`` would build a plain server from an import string)."""

    def __init__(self, parent: uvicorn.Config, sockets: list[socket.socket],
                 gateway: VmcpConfig, log_level: str, log_format: str,
                 config_path: Path | None, build: Build) -> None:
        self._build = build
        self._gateway = gateway
        self._log_level = log_level
        self._log_format = log_format
        self._config_path = config_path
        super().__init__(parent, sockets)

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # pragma: no cover
        # Answer the supervisor's pings from the start: building the app takes seconds, and
        # a worker that does not answer in time is taken for hung and replaced. The
        # supervisor's end of the pipe came along with this object: closed here, so that
        # the pipe ends when the supervisor does.
        self.parent_conn.close()
        threading.Thread(target=self.always_pong, daemon=True).start()
        logs.configure(self._log_level, self._log_format)
        try:
            gateway = _as_worker(_current(self._gateway, self._config_path))
            self._server = self._build(gateway, log_level=self._log_level,
                                       config_path=self._config_path, sockets=sockets or [])
        except Exception:
            # What fails here fails the same way in every replacement: the supervisor
            # stops on this exit status instead of restarting workers forever.
            logger.exception("worker %d could not start", os.getpid())
            sys.exit(STARTUP_FAILURE)
        self._server.run(sockets=sockets)

    def always_pong(self) -> None:  # pragma: no cover - runs in the child
        """Answer pings until the supervisor is gone (its end of the pipe closes: it was
        killed), then drain and stop like a replica told to: no orphan keeps serving."""
        try:
            while True:
                self.pong()
        except (EOFError, OSError):
            os.kill(os.getpid(), signal.SIGTERM)

    def pong(self) -> None:
        """One health ping: whether this worker serves yet (False while it builds)."""
        self.child_conn.recv()
        server = self._server
        self.child_conn.send(bool(server is not None and server.started))


def _current(config: VmcpConfig, path: Path | None) -> VmcpConfig:
    """The configuration file as it reads now, on the sockets the supervisor bound: a
    SIGHUP's rolling restart applies an edited file, as a single process's SIGHUP
    re-reads it. A file that no longer loads leaves the worker on the one it started
    with (logged)."""
    if path is None:
        return config
    try:
        fresh = load_config(path)
    except ConfigError as exc:
        logger.error("configuration file not applied, serving the previous one: %s", exc)
        return config
    if fresh.session.store != config.session.store:
        logger.error("session.store changed in the file: restart the whole process to change "
                     "stores; the workers keep %s", config.session.store_kind)
        return config
    kept = {"host": config.server.host, "port": config.server.port,
            "replica_id": config.server.replica_id}
    return fresh.model_copy(update={"server": fresh.server.model_copy(update=kept)})


def _as_worker(config: VmcpConfig) -> VmcpConfig:
    """This worker's configuration: a replica id of its own."""
    replica = f"{config.server.replica_id}-{os.getpid()}"
    return config.model_copy(update={
        "server": config.server.model_copy(update={"replica_id": replica})})


class _WorkerFactory:
    def __init__(self, parent: uvicorn.Config, sockets: list[socket.socket],
                 gateway: VmcpConfig, log_level: str, log_format: str,
                 config_path: Path | None, build: Build) -> None:
        self._args = (parent, sockets, gateway, log_level, log_format, config_path, build)

    def __call__(self) -> _Worker:
        return _Worker(*self._args)


def run_workers(config: VmcpConfig, sockets: list[socket.socket], workers: int, *,
                build: Build, log_level: str, log_format: str,
                config_path: Path | None) -> None:
    """Supervise ``workers`` processes serving ``sockets`` until SIGTERM/SIGINT
    (:func:`check_workers` first); each builds its server with ``build``."""
    # The parent never serves: its uvicorn configuration only carries the supervisor's
    # settings (an import string stands in for the app, which each worker builds).
    parent = uvicorn.Config("vmcp.server.app:create_app", workers=workers,
                            log_config=None, log_level=log_level,
                            timeout_worker_healthcheck=HEALTHCHECK_SECONDS)
    _use_factory(_WorkerFactory(parent, sockets, config, log_level, log_format, config_path,
                                build))
    supervisor = Multiprocess(parent, sockets)
    logger.info("supervising %d workers on http://%s:%d (SIGHUP restarts them one at a time)",
                workers, config.server.host, sockets[0].getsockname()[1])
    supervisor.run()


def _use_factory(factory: _WorkerFactory) -> None:
    """uvicorn's supervisor builds each worker - at start, for a dead one, on SIGHUP - as
    ``Process(config, sockets)`` by that name in its module; in this parent process, which
    does nothing but supervise, the name stands for :class:`_Worker` (rather than a copy
    of the supervisor's three loops that do it)."""
    import uvicorn.supervisors.multiprocess as module

    module.Process = lambda _config, _sockets: factory()  # type: ignore[misc,assignment]
