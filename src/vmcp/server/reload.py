"""SIGHUP: the configuration file read again and applied to a running replica.

What a reload may change without a restart: the backends, the aggregation, the composite
tools, health settings and the authorization policies. Everything else needs a restart,
and the log says so. A reload that does not load changes nothing.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2

from vmcp.auth.outgoing import OutgoingAuth, build_outgoing_auth
from vmcp.authz import AllowAll, CedarAuthorizer, PolicyBundle, load_bundle
from vmcp.backend import BackendTarget, StdioProcesses, target_of
from vmcp.backend.health import HealthMonitor
from vmcp.backend.http_client import follow_backends
from vmcp.composite import CompositeRegistry
from vmcp.config import VmcpConfig, load_config
from vmcp.errors import ConfigError
from vmcp.session import SessionManager
from vmcp.session.connector import BackendConnector
from vmcp.stateless.subscriptions import ChangeHub
from vmcp.stateless.watch import BackendWatch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reloadable:
    """The parts of a running replica that a reload changes."""

    connector: BackendConnector
    manager: SessionManager
    monitor: HealthMonitor | None
    outgoing: OutgoingAuth
    authorizer: AllowAll | CedarAuthorizer
    changes: ChangeHub
    watch: BackendWatch
    stdio: StdioProcesses
    composites: CompositeRegistry
    clients: Sequence[httpx2.AsyncClient]
    """The backend HTTP clients, whose connection budgets follow the backends."""


async def reload_on_sighup(path: Path, parts: Reloadable) -> None:
    """SIGHUP re-reads the configuration file and applies its backends, aggregation and
    composite tools to this replica without a restart (other sections need one), and
    re-reads the policy files. Live sessions gain the added backends, end their sessions
    on the removed ones, and are sent ``list_changed``, as they are when the composite
    tools change (a run under way finishes with the definition it started with). A
    configuration or policy set that is invalid changes nothing: the running one stays,
    and the log says why."""
    with anyio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            await reload_once(path, parts)


async def reload_once(path: Path, parts: Reloadable) -> None:
    """Read ``path`` and apply it (see ``reload_on_sighup``)."""
    try:
        loaded = load_config(path)
        reloaded_auth = build_outgoing_auth(loaded)
        policies = _reload_policies(parts.authorizer, loaded)
    except ConfigError as exc:
        logger.error("configuration reload refused, keeping the running one:\n%s", exc)
        return
    current = parts.connector.config
    if any(getattr(loaded, part) != getattr(current, part)
           for part in ("server", "session", "limits")) or (
            loaded.auth.model_copy(update={"authz": None})
            != current.auth.model_copy(update={"authz": None})):
        logger.warning("reload applies backends, aggregation, composite tools, health and "
                       "policies only; restart to change the other sections")
    if policies is not None and isinstance(parts.authorizer, CedarAuthorizer):
        parts.authorizer.adopt(policies)
        logger.info("authorization policies loaded: %d policies, sha256 %s",
                    policies.count, policies.sha256)
    updated = current.model_copy(update={"backends": loaded.backends,
                                         "aggregation": loaded.aggregation,
                                         "composite_tools": loaded.composite_tools})
    composites_changed = parts.composites.replace(loaded.composite_tools)
    parts.outgoing.adopt(reloaded_auth)
    for client in parts.clients:
        follow_backends(client, updated.backends)
    parts.connector.reconfigure(updated)
    parts.stdio.reconcile(backend_targets(updated, parts.outgoing))
    if parts.monitor is not None:
        parts.monitor.set_targets(backend_targets(updated, parts.outgoing))
    parts.watch.reconcile(restart=True)
    parts.changes.changed()
    changed = await parts.manager.reconcile_live_sessions(parts.connector.reconcile)
    if composites_changed:
        parts.manager.announce_to_live_sessions("notifications/tools/list_changed")
    logger.info("configuration reloaded: %d backends, %d composite tools; %d live "
                "sessions updated", len(updated.backends), len(updated.composite_tools),
                changed)


def _reload_policies(authorizer: AllowAll | CedarAuthorizer, loaded: VmcpConfig
                     ) -> PolicyBundle | None:
    """The policy set the reloaded configuration names, read and checked (not yet in
    force); None without authorization. Raises ``ConfigError`` if it is invalid."""
    authz = loaded.auth.authz
    if not isinstance(authorizer, CedarAuthorizer):
        if authz is not None:
            logger.warning("auth.authz was added: restart to turn authorization on")
        return None
    if authz is None:
        logger.warning("auth.authz was removed: authorization stays on until a restart")
        return None
    try:
        return load_bundle(authz)
    except ConfigError as exc:
        raise ConfigError(f"policies not reloaded, still in force: sha256 "
                          f"{authorizer.bundle.sha256}\n{exc}") from None

def backend_targets(config: VmcpConfig, outgoing: OutgoingAuth) -> list[BackendTarget]:
    """What the health probes and the stdio processes need of each configured backend."""
    return [target_of(b, {**b.headers, **outgoing.static_headers(b.name)})
            for b in config.backends]
