"""Running the gateway: uvicorn, its sockets (the public one and the admin listener), and
a drain on SIGTERM that answers what is still open before the cut."""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from vmcp import logs
from vmcp.config import VmcpConfig, unmatched_env_warnings
from vmcp.server.app import GatewayApp, create_app
from vmcp.server.front_door import FrontDoorLimits, GuardedHttpToolsProtocol

logger = logging.getLogger(__name__)

DRAIN_SECONDS = 10
"""After SIGTERM, how long in-flight requests may take to finish before they are cut (an
orchestrator's grace period must be longer; deploy/kubernetes is checked against it)."""
ANSWER_SECONDS = 3
"""The end of the drain window kept for answering what is still open: this replica's
live sessions are closed then, so every open request gets its final answer (``-32001``)
and every open stream its end before the cut. Their stored records stay for the other
replicas."""


def server_config(app: ASGIApp, config: VmcpConfig, log_level: str = "info"
                  ) -> uvicorn.Config:
    """How uvicorn serves the gateway: the drain on SIGTERM, the front door's limits
    (``front_door``), and idle connections kept open longer than a balancer keeps them
    (``server.keep_alive_seconds``).

    uvloop and httptools (the guarded protocol is httptools') by name, both from
    ``uvicorn[standard]``: a missing one fails at start rather than silently doubling the
    front door's cost. No uvicorn access log: the gateway logs each request itself
    (``server/request_log``), and uvicorn's second line per request cost CPU on every
    answer even when its level filtered it out.
    """
    server = config.server
    limits = FrontDoorLimits(max_connections=server.max_connections,
                             max_header_bytes=server.max_header_bytes,
                             header_timeout_seconds=server.header_timeout_seconds,
                             body_timeout_seconds=server.body_timeout_seconds)
    return uvicorn.Config(app, host=server.host, port=server.port,
                          log_level=log_level, log_config=None, lifespan="on",
                          loop="uvloop", http=GuardedHttpToolsProtocol.bind(limits),
                          access_log=False,
                          timeout_graceful_shutdown=DRAIN_SECONDS,
                          timeout_keep_alive=server.keep_alive_seconds)


def raise_file_limit() -> None:
    """Raise the soft limit on open files to the hard one: each client connection and each
    backend connection holds a descriptor, and the usual soft limit (1,024) is below what
    ``server.max_connections`` and the backends' budgets together allow."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-file limit from %d: %s", soft, exc)


def serve(config: VmcpConfig, *, log_level: str = "info", log_format: str = "auto",
          config_path: Path | None = None, workers: int = 1) -> None:
    """Run the gateway until SIGINT/SIGTERM (uvicorn finishes in-flight requests); with
    ``workers`` > 1, that many replica processes on the same sockets
    (:mod:`vmcp.server.workers`)."""
    logs.configure(log_level, log_format)
    raise_file_limit()
    for warning in unmatched_env_warnings():
        logger.warning("%s", warning)
    admin = config.server.admin
    if workers > 1:
        from vmcp.server.workers import check_workers, run_workers

        check_workers(config, workers)
        sockets = [_bind(config.server.host, config.server.port)]
        if admin.port is not None:
            sockets.append(_bind(admin.host, admin.port))
        run_workers(config, sockets, workers, build=build_server, log_level=log_level,
                    log_format=log_format, config_path=config_path)
        return
    if admin.port is None:
        build_server(config, log_level=log_level, config_path=config_path).run()
        return
    sockets = [_bind(config.server.host, config.server.port), _bind(admin.host, admin.port)]
    build_server(config, log_level=log_level, config_path=config_path,
                 sockets=sockets).run(sockets=sockets)


def build_server(config: VmcpConfig, *, log_level: str, config_path: Path | None,
                 sockets: list[socket.socket] | None = None) -> uvicorn.Server:
    """The gateway app and the server that runs it; ``sockets`` (already bound) are the
    public one and, second, the admin listener's, when there is one."""
    app = create_app(config, config_path=config_path)
    server = _Server(server_config(app, config, log_level), app)
    if sockets is not None and len(sockets) > 1:
        app.admin_port = sockets[1].getsockname()[1]
        logger.info("admin listener (/status, /metrics, /ui) on http://%s:%d",
                    config.server.admin.host, app.admin_port)
    return server


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host.strip("[]"), port), family=family)


ACCEPTED_GRACE_SECONDS = 0.5
"""At shutdown, how long the loop keeps reading after the listeners close and before idle
connections are closed. A connection accepted just before has its request on the way
(or already in the socket buffer, unread): uvicorn would close it as idle, and its client
would get no answer. With ``--workers``, other workers go on accepting on the same socket,
so a restart loses no request this way."""


class _Server(uvicorn.Server):
    """uvicorn's server, telling the app when its sockets are bound, and answering what is
    still open before its drain deadline instead of cutting it.

    uvicorn waits for open connections up to ``timeout_graceful_shutdown`` and then
    cancels their handlers: a call still running (or a stream still open) would get no
    answer at all. Here the wait is split: requests may finish on their own until
    ``ANSWER_SECONDS`` before the deadline, then the live sessions are closed, which
    finishes every open request with ``-32001`` and ends every stream, and uvicorn's own
    wait sees the connections end. Streams that only listen end as the drain begins.
    (Overrides uvicorn's ``_wait_tasks_to_complete``, the
    one step of its shutdown that waits; the version is pinned.)
    """

    def __init__(self, config: uvicorn.Config, app: GatewayApp) -> None:
        super().__init__(config)
        self._app = app
        self._closing: asyncio.Future[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._app.mark_listening()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        await asyncio.sleep(ACCEPTED_GRACE_SECONDS)
        await super().shutdown(sockets)

    async def _wait_tasks_to_complete(self) -> None:
        self._app.begin_drain()
        window = max(0, (self.config.timeout_graceful_shutdown or 0) - ANSWER_SECONDS)
        try:
            await asyncio.wait_for(super()._wait_tasks_to_complete(), timeout=window)
            return
        except TimeoutError:
            pass
        if self._app.close_sessions is not None:
            logger.warning("drain deadline near: closing this replica's live sessions to "
                           "answer the requests still open")
            # In the background: closing answers at once, while backend sessions may take
            # longer to end (the lifespan's shutdown waits for that).
            self._closing = asyncio.ensure_future(self._app.close_sessions())
        await super()._wait_tasks_to_complete()
