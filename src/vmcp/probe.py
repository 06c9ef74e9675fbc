"""``vmcp check-config --probe``: can the gateway reach and use each backend right now?"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import httpx2

from vmcp.aggregate import BackendCatalog, build_routing_table
from vmcp.backend import StdioProcesses, connect, target_of
from vmcp.composite.catalog_checks import catalog_problems
from vmcp.config import BackendConfig, VmcpConfig
from vmcp.errors import BackendError
from vmcp.upstream.discovery import CLIENT_CAPABILITIES, CLIENT_INFO, discover


@dataclass(frozen=True)
class ProbeResult:
    backend: str
    ok: bool
    seconds: float
    server: str = ""
    tools: int = 0
    resources: int = 0
    prompts: int = 0
    error: str = ""
    catalog: BackendCatalog | None = None


async def probe_backends(config: VmcpConfig,
                         on_result: Callable[[ProbeResult], None]) -> list[ProbeResult]:
    """Open a session on every backend at once, list what it offers, end the session."""
    results: list[ProbeResult] = []
    async with httpx2.AsyncClient() as http, StdioProcesses(
            client_info=CLIENT_INFO, capabilities=CLIENT_CAPABILITIES) as stdio, \
            anyio.create_task_group() as tg:
        async def one(backend: BackendConfig) -> None:
            result = await _probe(backend, http, stdio)
            results.append(result)
            on_result(result)

        for backend in config.backends:
            tg.start_soon(one, backend)
    return sorted(results, key=lambda r: r.backend)


async def _probe(backend: BackendConfig, http: httpx2.AsyncClient,
                 stdio: StdioProcesses) -> ProbeResult:
    started = time.perf_counter()
    target = target_of(backend)
    try:
        with anyio.fail_after(backend.connect_timeout_seconds):
            connection = await connect(target, http, client_info=CLIENT_INFO,
                                       capabilities=CLIENT_CAPABILITIES,
                                       timeout=backend.connect_timeout_seconds, stdio=stdio)
            try:
                catalog = await discover(connection)
            finally:
                await connection.aclose()
    except (BackendError, TimeoutError) as exc:
        message = str(exc) or f"no answer within {backend.connect_timeout_seconds:g}s"
        return ProbeResult(backend.name, False, time.perf_counter() - started, error=message)
    info = connection.state.initialize_result.get("serverInfo") or {}
    server = f"{info.get('name', '?')} {info.get('version', '')}".strip()
    return ProbeResult(backend.name, True, time.perf_counter() - started, server,
                       len(catalog.tools), len(catalog.resources) + len(
                           catalog.resource_templates), len(catalog.prompts), catalog=catalog)


def format_table(results: list[ProbeResult]) -> list[str]:
    width = max((len(r.backend) for r in results), default=7)
    lines = [f"{'backend':<{width}}  result  time      tools  resources  prompts  detail"]
    for r in results:
        detail = r.server if r.ok else r.error
        lines.append(f"{r.backend:<{width}}  {'ok' if r.ok else 'FAILED':<6}  "
                     f"{r.seconds * 1000:>6.0f}ms  {r.tools:>5}  {r.resources:>9}  "
                     f"{r.prompts:>7}  {detail}")
    return lines


def composite_problems(config: VmcpConfig, results: list[ProbeResult]) -> list[str]:
    """The composite tools' steps against the tools the reachable backends offer."""
    if not config.composite_tools:
        return []
    catalogs = {r.backend: r.catalog for r in results if r.catalog is not None}
    routing = build_routing_table(catalogs, config.aggregation)
    names = _step_tools(config)
    offered = {t["name"]: t for t in routing.tools}
    offered.update({name: tool for name in names if (tool := routing.tool(name)) is not None})
    problems = catalog_problems(config.composite_tools, offered)
    down = sorted(r.backend for r in results if not r.ok)
    if down and problems:
        problems.append(f"(backends not reached, whose tools are unknown: {', '.join(down)})")
    return problems


def _step_tools(config: VmcpConfig) -> set[str]:
    names: set[str] = set()
    for tool in config.composite_tools:
        names.update(tool.hide_tools)
        for step in tool.steps:
            names.update(n for n in (step.tool, step.step.tool if step.step else None) if n)
    return names
