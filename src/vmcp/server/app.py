"""The ASGI application and its lifespan: what one vmcp process runs.

Resources are entered in dependency order by the lifespan and closed in reverse: the
store, the shared HTTP client for backends, then the session manager (closing it ends
this replica's backend sessions but keeps the stored records, so other replicas can
restore them).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from vmcp import __version__, logs, tracing
from vmcp.audit import workflows as audit_workflows
from vmcp.audit.trail import AuditTrail
from vmcp.auth.incoming import Authenticator, build_authenticator, metadata_paths
from vmcp.auth.outgoing import OutgoingAuth, build_outgoing_auth
from vmcp.authz import AllowAll, CedarAuthorizer, build_authorizer
from vmcp.backend import StdioProcesses
from vmcp.backend.health import HealthMonitor
from vmcp.backend.http_client import backend_http_client
from vmcp.composite import CompositeRegistry
from vmcp.config import VmcpConfig, stdio_warnings
from vmcp.config.models import SessionConfig
from vmcp.errors import INTERNAL_ERROR_CODE, AuthenticationError, StoreError
from vmcp.server import jsonrpc
from vmcp.server.overview import OperatorView, open_view
from vmcp.server.reload import Reloadable, backend_targets, reload_on_sighup
from vmcp.server.responses import send_json
from vmcp.server.security import RequestGuard
from vmcp.server.session_methods import SessionMethods
from vmcp.server.session_workflows import SessionQuestions
from vmcp.server.stateless import StatelessEndpoint
from vmcp.server.status import build_status, render_page
from vmcp.server.stream_limits import StreamLimits
from vmcp.server.transport import McpEndpoint
from vmcp.session import SessionManager
from vmcp.session.connector import BackendConnector
from vmcp.session.expiry import TrackedStore, sweep_expired
from vmcp.stateless.backends import StatelessBackends
from vmcp.stateless.subscriptions import ChangeHub
from vmcp.stateless.watch import BackendWatch
from vmcp.store import MemoryStore, RedisStore, open_store
from vmcp.store.base import SessionStore
from vmcp.store.event_log import RedisEventLog
from vmcp.store.expiry_index import ExpiryIndex, MemoryExpiryIndex, RedisExpiryIndex
from vmcp.store.identity_index import IdentityIndex, MemoryIdentityIndex, RedisIdentityIndex
from vmcp.store.pubsub import RedisChangeChannel, RedisEndedSessionBus, RedisSessionRelay
from vmcp.store.workflow_states import (
    MemoryWorkflowStates,
    RedisWorkflowStates,
    WorkflowStates,
)
from vmcp.telemetry import InstrumentedStore, Metrics
from vmcp.upstream.discovery import CLIENT_CAPABILITIES, CLIENT_INFO

logger = logging.getLogger(__name__)

# How long an interrupted response stream can be resumed on another replica.
STREAM_EVENTS_TTL = 300.0

def _indexes(store: MemoryStore | RedisStore, session: SessionConfig
             ) -> tuple[IdentityIndex, ExpiryIndex]:
    """The per-identity index (for the session cap) and the expiry index, beside ``store``."""
    if isinstance(store, RedisStore):
        prefix, ttl = session.key_prefix, session.ttl_seconds
        timeout = session.store_timeout_seconds
        return (RedisIdentityIndex(store, key_prefix=prefix, ttl_seconds=ttl,
                                   timeout_seconds=timeout),
                RedisExpiryIndex(store, key_prefix=prefix, ttl_seconds=ttl,
                                 timeout_seconds=timeout))
    return (MemoryIdentityIndex(store.exists, ttl_seconds=session.ttl_seconds),
            MemoryExpiryIndex(store.expires_at, ttl_seconds=session.ttl_seconds))


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
    """Holds the MCP endpoint while the lifespan runs.

    Without one (a request racing start-up or shutdown, or a lifespan ended by a failed
    background task) the answer is 503 with ``Retry-After``: the client retries, through
    the balancer, on a replica that serves. ``/healthz`` fails too, so that an
    orchestrator restarts a replica left in that state.
    """

    def __init__(self) -> None:
        self.app: McpEndpoint | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.app is None:
            await send_json(send, 503, jsonrpc.error(None, INTERNAL_ERROR_CODE,
                                                     "This replica is not serving; retry"),
                            extra=[(b"retry-after", b"1")])
            return
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
    authorizer = build_authorizer(config)
    audit = AuditTrail(config.audit) if config.audit.enabled else None
    if config.telemetry.otlp_endpoint:
        tracing.configure(config.telemetry.otlp_endpoint,
                          service_name=config.telemetry.service_name,
                          sample_ratio=config.telemetry.sample_ratio)
    state = Runtime()
    metrics = Metrics()
    if audit is not None:
        metrics.watch_audit(audit)

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
        stdio = StdioProcesses(client_info=CLIENT_INFO, capabilities=CLIENT_CAPABILITIES)
        async with store, backend_http_client(config.backends) as http, \
                backend_http_client(config.backends, kind="health") as probe_http, stdio, \
                anyio.create_task_group() as background:
            for warning in stdio_warnings(config):
                logger.warning("%s", warning)
            stdio.reconcile(backend_targets(config, outgoing))
            monitor = _health_monitor(config, probe_http, outgoing, stdio)
            identities, expiry = _indexes(store, session)
            recorded = InstrumentedStore(TrackedStore(store, expiry), metrics)
            connector = BackendConnector(
                config, http, relay=relay, event_log=event_log,
                store=recorded,
                is_healthy=monitor.usable_for_new_sessions if monitor else None,
                outgoing=outgoing, stdio=stdio)
            if monitor is not None:
                background.start_soon(monitor.run)
            manager = SessionManager(recorded, connector,
                                     cache_capacity=session.cache_capacity,
                                     ended_sessions=ended, identities=identities,
                                     max_sessions_per_identity=(
                                         config.limits.max_sessions_per_identity),
                                     max_initializes_in_flight=(
                                         config.limits.max_initializes_in_flight),
                                     expiry=expiry,
                                     liveness_interval=session.liveness_interval_seconds)
            metrics.watch(manager, connector.ledger, relay, monitor)
            if monitor is not None:
                def rejoin(name: str) -> None:
                    background.start_soon(_rejoin, name, manager, connector)

                monitor.on_recovered = rejoin
            background.start_soon(manager.follow_ended_sessions)
            background.start_soon(functools.partial(
                sweep_expired, expiry, manager.end_expired,
                interval_seconds=session.sweep_interval_seconds))
            if relay is not None:
                background.start_soon(relay.run)
            composites = CompositeRegistry(config.composite_tools)
            composites.observer = metrics.observe_composite
            if audit is not None:
                composites.step_events = audit_workflows.observer_for(
                    audit, replica_id=config.server.replica_id)
            workflow_states: WorkflowStates = (
                RedisWorkflowStates(store.client, session.key_prefix,
                                    timeout_seconds=session.store_timeout_seconds)
                if isinstance(store, RedisStore) else MemoryWorkflowStates())
            stateless = StatelessBackends(
                lambda: connector.config, http, outgoing=outgoing, ledger=connector.ledger,
                is_healthy=monitor.usable_for_new_sessions if monitor else None, relay=relay,
                stdio=stdio)
            background.start_soon(stateless.run)
            changes, watch = _change_delivery(config, store, stateless)
            metrics.watch_changes(changes)
            background.start_soon(changes.run)
            background.start_soon(watch.run)
            if monitor is not None:
                monitor.on_usability_change = lambda name: changes.changed(backend=name)
            endpoint.app = McpEndpoint(
                manager, SessionMethods(authorizer=authorizer, composites=composites,
                                        questions=SessionQuestions(workflow_states, relay)),
                RequestGuard(config.server), authenticator,
                max_body_bytes=config.server.max_body_bytes, metrics=metrics,
                stateless=StatelessEndpoint(stateless, authorizer=authorizer,
                                            composites=composites, subscriptions=changes,
                                            workflow_states=workflow_states,
                                            max_resource_subscriptions=(
                                                config.stateless.max_resource_subscriptions)),
                audit=audit, replica_id=config.server.replica_id,
                streams=StreamLimits(per_session=config.limits.max_streams_per_session,
                                     per_replica=config.limits.max_streams),
                abandon_grace=config.limits.abandoned_call_grace_seconds,
            )
            view = open_view(config, store, metrics, manager=manager, monitor=monitor,
                             connector=connector)
            background.start_soon(view.run)
            state.store, state.manager, state.connector, state.monitor, state.view = (
                store, manager, connector, monitor, view)
            if config_path is not None:
                background.start_soon(reload_on_sighup, config_path, Reloadable(
                    connector, manager, monitor, outgoing, authorizer, changes, watch, stdio,
                    composites, (http, probe_http)))
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
        if endpoint.app is None:
            return JSONResponse({"status": "not serving"}, status_code=503)
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
        document = build_status(connector.config if connector is not None else config,
                                state.manager,
                                connector.ledger if connector is not None else None,
                                state.monitor)
        document["authorization"] = policy_status(authorizer)
        return document

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
        async with contextlib.AsyncExitStack() as stack:
            if audit is not None:
                await stack.enter_async_context(audit)
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
                    outgoing: OutgoingAuth, stdio: StdioProcesses) -> HealthMonitor | None:
    health = config.health
    if not health.enabled or not config.backends:
        return None
    return HealthMonitor(backend_targets(config, outgoing), http, health,
                         needs_caller=outgoing.per_caller, stdio=stdio)


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


def policy_status(authorizer: AllowAll | CedarAuthorizer) -> dict[str, object] | None:
    """What ``/status`` shows of the policy set in force (None without authorization)."""
    status = authorizer.status()
    if status is None:
        return None
    return {"sha256": status.sha256, "policies": status.policies, "files": list(status.files),
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(status.loaded_at))}
