"""What this replica reports about itself: the ``/status`` document and the ``/ui`` page."""

from __future__ import annotations

import html
import shlex
from dataclasses import asdict
from typing import Any

from vmcp import __version__, logs
from vmcp.backend.health import HealthMonitor
from vmcp.config import BackendConfig, VmcpConfig, redact_url
from vmcp.server.overview_page import render_sections
from vmcp.session.manager import SessionManager
from vmcp.upstream.ledger import UpstreamLedger

REFRESH_MS = 3000


def build_status(config: VmcpConfig, manager: SessionManager | None,
                 ledger: UpstreamLedger | None, monitor: HealthMonitor | None) -> dict[str, Any]:
    stats = manager.statistics() if manager is not None else None
    return {
        "version": __version__,
        "replica_id": config.server.replica_id,
        "store": config.session.store_kind,
        "backends": [_backend(b, monitor) for b in config.backends],
        "cache": asdict(stats.cache) if stats else None,
        "live_sessions": stats.cache.size if stats else 0,
        "upstream_sessions": {
            name: {"opened": c.opened, "ended": c.ended, "open": c.open}
            for name, c in ledger.snapshot().items()
        } if ledger is not None else {},
        "security_events": stats.security_events if stats else 0,
        "recent_errors": logs.recent_problems(),
    }


def _backend(backend: BackendConfig, monitor: HealthMonitor | None) -> dict[str, Any]:
    where = (redact_url(backend.url) if backend.transport != "stdio"
             else "stdio: " + shlex.join([backend.command or "", *backend.args]))
    status: dict[str, Any] = {"name": backend.name, "url": where,
                              "transport": backend.transport, "health": "unmonitored"}
    health = monitor.snapshot().get(backend.name) if monitor is not None else None
    if health is not None:
        status.update(health=health.status.value, latency_seconds=health.latency_seconds,
                      last_error=health.last_error)
    return status


def render_page(status: dict[str, Any]) -> str:
    """The status page: server-rendered, charts included (readable without JavaScript),
    then refreshed in place every few seconds by a small inline script that fetches the
    page again and swaps its content. No build step, no external asset."""
    e = html.escape
    rows = "".join(
        f'<tr data-backend="{e(b["name"])}"><td>{e(b["name"])}</td>'
        f'<td class="health {e(b["health"])}" data-health="{e(b["health"])}">'
        f'{e(b["health"])}</td><td>{_ms(b.get("latency_seconds"))}</td>'
        f'<td>{e(b["transport"])}</td><td>{e(b["url"])}</td>'
        f'<td>{e(b.get("last_error") or "")}</td></tr>'
        for b in status["backends"])
    cache = status["cache"] or {}
    figures = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in cache.items())
    errors = "".join(f"<li>{e(p['time'])} {e(p['level'])} {e(p['message'])}</li>"
                     for p in status["recent_errors"]) or "<li>none</li>"
    return _PAGE.format(
        replica=e(status["replica_id"]), version=e(status["version"]), store=e(status["store"]),
        live=status["live_sessions"], security=status["security_events"], rows=rows,
        figures=figures, errors=errors, refresh=REFRESH_MS,
        deployment=render_sections(status))


def _ms(seconds: object) -> str:
    return f"{float(seconds) * 1000:.1f} ms" if isinstance(seconds, int | float) else "-"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vmcp {replica}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; vertical-align: top; }}
.healthy, .up {{ background: #d4f7d4; }} .degraded, .unknown {{ background: #fff3c4; }}
.unhealthy, .unauthenticated, .gone, .lost {{ background: #ffd6d6; }}
.unmonitored, .filtered {{ background: #eee; }} .renamed {{ background: #e6f0ff; }}
.problem {{ color: #a00; }}
#charts svg {{ margin: 0 12px 12px 0; }}
svg.chart text {{ font: 10px system-ui, sans-serif; fill: #555; }}
svg.chart .chart-title {{ font-size: 11px; fill: #222; }}
</style></head>
<body><main id="page">
<h1>vmcp replica <span id="replica">{replica}</span></h1>
<p>version {version} &middot; store {store} &middot; live sessions
<span id="live">{live}</span> &middot; security events <span id="security">{security}</span></p>
{deployment}
<h2>Backends (this replica)</h2>
<table id="backends"><thead><tr><th>name</th><th>health</th><th>probe latency</th>
<th>transport</th><th>url</th><th>last error</th></tr></thead><tbody>{rows}</tbody></table>
<h2>Session cache (this replica)</h2><table id="cache">{figures}</table>
<h2>Recent errors (this replica)</h2><ul id="errors">{errors}</ul>
</main>
<script>
setInterval(() => fetch(location.href, {{cache: "no-store"}}).then((r) => r.text()).then((t) => {{
  const fresh = new DOMParser().parseFromString(t, "text/html").getElementById("page");
  if (fresh) document.getElementById("page").replaceWith(fresh);
}}).catch(() => {{}}), {refresh});
</script></body></html>
"""
