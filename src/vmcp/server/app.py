"""The ASGI application and its lifespan: what one vmcp process runs.

Resources are entered in dependency order by the lifespan and closed in reverse: the
store, the shared HTTP client for backends, then the session manager (closing it ends
this replica's backend sessions but keeps the stored records, so other replicas can
restore them).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from vmcp import __version__, logs, tracing
from vmcp.auth.incoming import Authenticator, build_authenticator, metadata_paths
from vmcp.auth.outgoing import OutgoingAuth, build_outgoing_auth
from vmcp.backend.connection import BackendTarget
from vmcp.backend.health import HealthMonitor
from vmcp.backend.http_client import backend_http_client
from vmcp.config import VmcpConfig, load_config, unmatched_env_warnings
from vmcp.errors import AuthenticationError, ConfigError, StoreError
from vmcp.server.overview import OperatorView, open_view
from vmcp.server.security import RequestGuard
from vmcp.server.session_methods import SessionMethods
from vmcp.server.stateless import StatelessEndpoint
from vmcp.server.status import build_status, render_page
from vmcp.server.transport import McpEndpoint
from vmcp.session import SessionManager
from vmcp.session.connector import BackendConnector
from vmcp.session.metadata import record_backend_state
from vmcp.stateless.backends import StatelessBackends
from vmcp.stateless.subscriptions import ChangeHub
from vmcp.stateless.watch import BackendWatch
from vmcp.store import RedisStore, open_store
from vmcp.store.base import SessionStore
from vmcp.store.event_log import RedisEventLog
from vmcp.store.identity_index import IdentityIndex, MemoryIdentityIndex, RedisIdentityIndex
from vmcp.store.pubsub import RedisChangeChannel, RedisEndedSessionBus, RedisSessionRelay
from vmcp.telemetry import InstrumentedStore, Metrics

logger = logging.getLogger(__name__)

# How long an interrupted response stream can be resumed on another replica.
STREAM_EVENTS_TTL = 300.0

DRAIN_SECONDS = 10
"""After SIGTERM, how long in-flight requests may take to finish before they are cut (an
orchestrator's grace period must be longer; deploy/kubernetes is checked against it)."""

ANSWER_SECONDS = 3
"""The end of the drain window kept for answering what is still open: this replica's
live sessions are closed then, so every open request gets its final answer (``-32001``)
and every open stream its end before the cut. Their stored records stay for the other
replicas."""


@dataclass
class Runtime:
    """What the lifespan has started, for the routes that report on it (None before
    start-up and after shutdown)."""

    store: SessionStore | None = None
    manager: SessionManager | None = None
    connector: BackendConnector | None = None
    monitor: HealthMonitor | None = None
    view: OperatorView | None = None
    listening: anyio.Event | None = None


class _Endpoint:
    """Holds the MCP endpoint once the lifespan has built it."""

    def __init__(self) -> None:
        self.app: McpEndpoint | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.app is None:
            raise RuntimeError("the MCP endpoint is used before start-up finished")
        await self.app(scope, receive, send)


def create_app(config: VmcpConfig, *, config_path: Path | None = None) -> GatewayApp:
    """The whole gateway as one ASGI app (also what tests run in-process).

    Raises ``ConfigError`` if incoming or outgoing auth cannot be set up (a ``token_env``
    or ``value_env`` variable unset, an unreadable ``jwks_file``), before anything is
    started.
    """
    endpoint = _Endpoint()
    logs.set_replica(config.server.replica_id)
    authenticator = build_authenticator(config)
    outgoing = build_outgoing_auth(config)
    if config.telemetry.otlp_endpoint:
        tracing.configure(config.telemetry.otlp_endpoint,
                          service_name=config.telemetry.service_name,
                          sample_ratio=config.telemetry.sample_ratio)
    state = Runtime()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        session = config.session
        store = open_store(session.store, key_prefix=session.key_prefix,
                           ttl_seconds=session.ttl_seconds,
                           timeout_seconds=session.store_timeout_seconds,
                           sweep_interval_seconds=session.sweep_interval_seconds)
        ended: RedisEndedSessionBus | None = None
        relay: RedisSessionRelay | None = None
        event_log: RedisEventLog | None = None
        if isinstance(store, RedisStore):
            event_log = RedisEventLog(store.client, session.key_prefix + "events:",
                                      ttl_seconds=STREAM_EVENTS_TTL, max_events=10_000,
                                      timeout_seconds=session.store_timeout_seconds)
            ended = RedisEndedSessionBus(store.client, session.key_prefix + "ended",
                                         timeout_seconds=session.store_timeout_seconds)
            relay = RedisSessionRelay(store.client, session.key_prefix + "relay:",
                                      timeout_seconds=session.store_timeout_seconds)
        async with store, backend_http_client() as http, \
                anyio.create_task_group() as background:
            monitor = _health_monitor(config, http, outgoing)
            recorded = InstrumentedStore(store, metrics)
            connector = BackendConnector(
                config, http, relay=relay, event_log=event_log,
                record_state=functools.partial(record_backend_state, recorded),
                is_healthy=monitor.usable_for_new_sessions if monitor else None,
                outgoing=outgoing)
            if monitor is not None:
                background.start_soon(monitor.run)
            identities: IdentityIndex = (
                RedisIdentityIndex(store, key_prefix=session.key_prefix,
                                   ttl_seconds=session.ttl_seconds,
                                   timeout_seconds=session.store_timeout_seconds)
                if isinstance(store, RedisStore)
                else MemoryIdentityIndex(store.exists, ttl_seconds=session.ttl_seconds))
            manager = SessionManager(recorded, connector,
                                     cache_capacity=session.cache_capacity,
                                     ended_sessions=ended, identities=identities,
                                     max_sessions_per_identity=(
                                         config.limits.max_sessions_per_identity),
                                     liveness_interval=session.liveness_interval_seconds)
            metrics.watch(manager, connector.ledger, relay, monitor)
            if monitor is not None:
                def rejoin(name: str) -> None:
                    background.start_soon(_rejoin, name, manager, connector)

                monitor.on_recovered = rejoin
            background.start_soon(manager.follow_ended_sessions)
            if relay is not None:
                background.start_soon(relay.run)
            stateless = StatelessBackends(
                lambda: connector.config, http, outgoing=outgoing, ledger=connector.ledger,
                is_healthy=monitor.usable_for_new_sessions if monitor else None, relay=relay)
            background.start_soon(stateless.run)
            changes, watch = _change_delivery(config, store, stateless)
            metrics.watch_changes(changes)
            background.start_soon(changes.run)
            background.start_soon(watch.run)
            if monitor is not None:
                monitor.on_usability_change = lambda name: changes.changed(backend=name)
            endpoint.app = McpEndpoint(
                manager, SessionMethods(), RequestGuard(config.server), authenticator,
                max_body_bytes=config.server.max_body_bytes, metrics=metrics,
                stateless=StatelessEndpoint(stateless, subscriptions=changes),
            )
            view = open_view(config, store, metrics, manager=manager, monitor=monitor,
                             connector=connector)
            background.start_soon(view.run)
            state.store, state.manager, state.connector, state.monitor, state.view = (
                store, manager, connector, monitor, view)
            if config_path is not None:
                background.start_soon(_reload_on_sighup, config_path, connector, manager,
                                      monitor, outgoing, changes, watch)
            state.listening = anyio.Event()
            background.start_soon(_log_when_ready, config, state.listening, monitor)
            try:
                yield
            finally:
                endpoint.app = None
                await view.withdraw()
                state.store = state.manager = state.connector = state.monitor = state.view = None
                await manager.aclose()
                await stateless.aclose()
                changes.close_all()
                background.cancel_scope.cancel()
                if relay is not None:
                    await relay.aclose()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        store = state.store
        if store is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        try:
            await store.ping()
        except StoreError as exc:
            # The store's address is for the log, not for whoever probes the port.
            logger.warning("not ready: %s", exc)
            return JSONResponse({"status": "store unavailable"}, status_code=503)
        monitor = state.monitor
        if monitor is not None and not monitor.probed:
            return JSONResponse({"status": "backends not probed yet"}, status_code=503)
        return JSONResponse({"status": "ready"})

    def snapshot() -> dict[str, object]:
        connector = state.connector
        return build_status(connector.config if connector is not None else config,
                            state.manager, connector.ledger if connector is not None else None,
                            state.monitor)

    async def full_snapshot() -> dict[str, object]:
        """This replica's snapshot and, once running, the whole deployment's view."""
        document = snapshot()
        if state.view is not None:
            document.update(await state.view.document())
        return document

    async def status(request: Request) -> Response:
        return JSONResponse(await full_snapshot())

    async def status_page(request: Request) -> Response:
        return HTMLResponse(render_page(await full_snapshot()))

    async def resource_metadata(request: Request) -> Response:
        """RFC 9728 protected-resource metadata; 404 without an authorization server."""
        document = authenticator.protected_resource_metadata(request.headers)
        if document is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        # Public by design; browser-based clients fetch it from another origin.
        return JSONResponse(document, headers={"access-control-allow-origin": "*"})

    @contextlib.asynccontextmanager
    async def authenticated(app: Starlette) -> AsyncIterator[None]:
        async with authenticator, outgoing, lifespan(app):
            yield

    async def metrics_route(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    probes = [Route("/healthz", healthz), Route("/readyz", readyz)]
    ops = [Route("/metrics", metrics_route), Route("/status", status),
           Route("/ui", status_page)]
    admin = None
    if config.server.admin.port is not None:
        # The ops endpoints move to the admin listener; the probes stay where they were.
        admin = Starlette(routes=[*probes, *ops])
        ops = []
    elif config.auth.incoming.type != "anonymous":
        logger.warning("/status, /metrics and /ui are on the public port and answer only "
                       "requests with a valid credential: set server.admin.port to serve "
                       "them on a listener of their own")
        ops = [Route(route.path, _with_credentials(route.endpoint, authenticator))
               for route in ops]
    routes = [
        Route(config.server.path, endpoint=endpoint),
        *probes,
        *ops,
        *(Route(path, resource_metadata, methods=["GET"]) for path in metadata_paths(config)),
    ]

    def mark_listening() -> None:
        if state.listening is not None:
            state.listening.set()

    async def close_sessions() -> None:
        if state.manager is not None:
            await state.manager.aclose()

    return GatewayApp(Starlette(routes=routes, lifespan=authenticated), config.server.path,
                      endpoint, mark_listening, admin, close_sessions)


def _with_credentials(handler: Callable[[Request], Awaitable[Response]],
                      authenticate: Authenticator) -> Callable[[Request], Awaitable[Response]]:
    """``handler``, answering 401 (with the challenge) to a request without a credential
    the gateway's incoming auth accepts: ops endpoints on the public port show backend
    URLs and recent errors, which are not for anyone who can reach the port."""
    async def guarded(request: Request) -> Response:
        try:
            await authenticate(request.headers)
        except AuthenticationError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.http_status,
                                headers=dict(exc.response_headers()))
        return await handler(request)

    return guarded


class GatewayApp:
    """Sends requests for the MCP path straight to the endpoint, everything else (other
    routes, lifespan) to Starlette. The endpoint answers every error itself, so Starlette's
    routing and middleware add nothing there but cost on every call (bench profile).

    ``mark_listening`` is called by the server once its sockets are bound; only then is
    the replica announced as ready in the log. ``close_sessions`` is called when a drain
    runs out of time: it answers every request still open. With an admin listener, requests that
    arrive on ``admin_port`` (set once it is bound) go to the ``admin`` app alone."""

    def __init__(self, app: Starlette, path: str, endpoint: _Endpoint,
                 mark_listening: Callable[[], None], admin: Starlette | None = None,
                 close_sessions: Callable[[], Awaitable[None]] | None = None) -> None:
        self.app = app
        self._path = path
        self._endpoint = endpoint
        self.mark_listening = mark_listening
        self.close_sessions = close_sessions
        self.admin = admin
        self.admin_port: int | None = None

    def begin_drain(self) -> None:
        """The server stopped accepting: end the streams that only listen."""
        if self._endpoint.app is not None:
            self._endpoint.app.drain()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.admin is not None and self.admin_port is not None \
                and (scope.get("server") or ("", None))[1] == self.admin_port:
            await self.admin(scope, receive, send)
        elif scope["type"] == "http" and scope["path"] == self._path:
            await self._endpoint(scope, receive, send)
        else:
            await self.app(scope, receive, send)


async def _rejoin(backend: str, manager: SessionManager, connector: BackendConnector) -> None:
    """A backend answers again: the sessions live here that were created while it was down
    take it in (and their clients are sent ``list_changed``), as after a reload. Each
    replica does this for the sessions it holds; the stored backend list follows, so a
    replica restoring one later gets the backend too."""
    changed = await manager.reconcile_live_sessions(connector.reconcile)
    logger.info("backend %s recovered: %d live sessions took it in", backend, changed,
                extra={"backend": backend})


async def _log_when_ready(config: VmcpConfig, listening: anyio.Event,
                          monitor: HealthMonitor | None) -> None:
    """One line once the port is bound and every backend has been probed once: what an
    operator looks for after a start. A replica that reaches no backend says so loudly."""
    await listening.wait()
    server = config.server
    where = f"http://{server.host}:{server.port}{server.path}"
    if monitor is None:
        logger.info("vmcp %s replica %s ready at %s: %d backends (not probed), store %s",
                    __version__, server.replica_id, where, len(config.backends),
                    config.session.store_kind)
        return
    await monitor.first_round()
    health = monitor.snapshot()
    reachable = sorted(name for name in health if monitor.usable_for_new_sessions(name))
    down = sorted(set(health) - set(reachable))
    level = logging.WARNING if down else logging.INFO
    logger.log(level, "vmcp %s replica %s ready at %s: %d of %d backends reachable%s, store %s",
               __version__, server.replica_id, where, len(reachable), len(health),
               f" (down: {', '.join(down)})" if down else "", config.session.store_kind)


def _health_monitor(config: VmcpConfig, http: httpx2.AsyncClient,
                    outgoing: OutgoingAuth) -> HealthMonitor | None:
    health = config.health
    if not health.enabled or not config.backends:
        return None
    return HealthMonitor(_targets(config, outgoing), http,
                         interval_seconds=health.interval_seconds,
                         timeout_seconds=health.timeout_seconds,
                         unhealthy_threshold=health.unhealthy_threshold,
                         degraded_latency_seconds=health.degraded_latency_seconds,
                         needs_caller=outgoing.per_caller)


def _change_delivery(config: VmcpConfig, store: SessionStore,
                     backends: StatelessBackends) -> tuple[ChangeHub, BackendWatch]:
    """What delivers list changes to stateless clients' listen streams: this replica's hub
    (over Redis, the other replicas' too) and its watch over the backends' own streams."""
    settings = config.stateless
    channel = (RedisChangeChannel(store.client, config.session.key_prefix + "changes",
                                  timeout_seconds=config.session.store_timeout_seconds)
               if isinstance(store, RedisStore) else None)
    hub = ChangeHub(max_listeners=settings.max_listeners, buffer=settings.listener_buffer,
                    coalesce_seconds=settings.coalesce_seconds,
                    replica=config.server.replica_id,
                    channel=channel, on_change=backends.catalogs.forget)
    return hub, BackendWatch(backends, hub)


async def _reload_on_sighup(path: Path, connector: BackendConnector, manager: SessionManager,
                            monitor: HealthMonitor | None, outgoing: OutgoingAuth,
                            changes: ChangeHub, watch: BackendWatch) -> None:
    """SIGHUP re-reads the configuration file and applies its backends and aggregation to
    this replica without a restart (other sections need one). Live sessions gain the added
    backends, end their sessions on the removed ones, and are sent ``list_changed``."""
    with anyio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            try:
                loaded = load_config(path)
                reloaded_auth = build_outgoing_auth(loaded)
            except ConfigError as exc:
                logger.error("configuration reload refused, keeping the running one:\n%s", exc)
                continue
            current = connector.config
            if any(getattr(loaded, part) != getattr(current, part)
                   for part in ("server", "session", "auth", "limits")):
                logger.warning("reload applies backends, aggregation and health only; "
                               "restart to change the other sections")
            updated = current.model_copy(update={"backends": loaded.backends,
                                                 "aggregation": loaded.aggregation})
            outgoing.adopt(reloaded_auth)
            connector.reconfigure(updated)
            if monitor is not None:
                monitor.set_targets(_targets(updated, outgoing))
            watch.reconcile(restart=True)
            changes.changed()
            changed = await manager.reconcile_live_sessions(connector.reconcile)
            logger.info("configuration reloaded: %d backends; %d live sessions updated",
                        len(updated.backends), changed)


def _targets(config: VmcpConfig, outgoing: OutgoingAuth) -> list[BackendTarget]:
    return [BackendTarget(b.name, b.url, b.transport,
                          {**b.headers, **outgoing.static_headers(b.name)})
            for b in config.backends]


def serve(config: VmcpConfig, *, log_level: str = "info", log_format: str = "auto",
          config_path: Path | None = None) -> None:
    """Run the gateway until SIGINT/SIGTERM (uvicorn finishes in-flight requests)."""
    logs.configure(log_level, log_format)
    for warning in unmatched_env_warnings():
        logger.warning("%s", warning)
    app = create_app(config, config_path=config_path)
    server = _Server(uvicorn.Config(app, host=config.server.host, port=config.server.port,
                                    log_level=log_level, log_config=None, lifespan="on",
                                    timeout_graceful_shutdown=DRAIN_SECONDS), app)
    admin = config.server.admin
    if admin.port is None:
        server.run()
        return
    sockets = [_bind(config.server.host, config.server.port), _bind(admin.host, admin.port)]
    app.admin_port = sockets[1].getsockname()[1]
    logger.info("admin listener (/status, /metrics, /ui) on http://%s:%d", admin.host,
                app.admin_port)
    server.run(sockets=sockets)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host.strip("[]"), port), family=family)


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
