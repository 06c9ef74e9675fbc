"""The health monitor and what it does to new sessions (B34), with real backends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

from tests.support.processes import NOTES_MODULE, ManagedProcess, running_backends
from tests.support.redis_server import free_port
from vmcp.backend import BackendTarget
from vmcp.backend.breaker import CircuitState
from vmcp.backend.health import HealthMonitor, HealthStatus
from vmcp.config import HealthConfig, VmcpConfig
from vmcp.errors import BackendError, BackendUnavailable
from vmcp.identity import ANONYMOUS
from vmcp.session.connector import BackendConnector

pytestmark = pytest.mark.anyio


@pytest.fixture
async def refusing_server() -> AsyncIterator[str]:
    """A loopback HTTP server that answers every request 401, like a backend whose
    credentials were revoked."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n"
                     b"connection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/mcp"
    server.close()
    await server.wait_closed()


def monitor_for(targets: list[BackendTarget], http: httpx2.AsyncClient) -> HealthMonitor:
    return HealthMonitor(targets, http, HealthConfig(
        interval_seconds=60, timeout_seconds=2, unhealthy_threshold=2, degraded_latency_seconds=5))


async def test_statuses_follow_probe_results(
    backends: dict[str, ManagedProcess], refusing_server: str
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/mcp"
    targets = [BackendTarget("notes", backends["notes"].url), BackendTarget("dead", dead),
               BackendTarget("locked", refusing_server)]
    async with httpx2.AsyncClient() as http:
        monitor = monitor_for(targets, http)
        assert {h.status for h in monitor.snapshot().values()} == {HealthStatus.UNKNOWN}
        assert monitor.usable_for_new_sessions("dead")          # unknown is tried
        await monitor.probe_all()
        first = monitor.snapshot()
        assert first["notes"].status is HealthStatus.HEALTHY
        assert first["notes"].latency_seconds is not None
        assert first["dead"].status is HealthStatus.DEGRADED     # one failure so far
        assert first["locked"].status is HealthStatus.UNAUTHENTICATED
        await monitor.probe_all()
        second = monitor.snapshot()
        assert second["dead"].status is HealthStatus.UNHEALTHY
        assert second["dead"].consecutive_failures == 2
        assert second["dead"].last_error
        assert monitor.usable_for_new_sessions("notes")
        assert not monitor.usable_for_new_sessions("dead")
        assert not monitor.usable_for_new_sessions("locked")


async def test_b34_new_sessions_skip_unhealthy_backends_but_restores_do_not(
    backends: dict[str, ManagedProcess]
) -> None:
    config = VmcpConfig.model_validate({"backends": [
        {"name": name, "url": managed.url} for name, managed in backends.items()]})
    async with httpx2.AsyncClient() as http:
        unhealthy = {"weather"}
        connector = BackendConnector(config, http, is_healthy=lambda n: n not in unhealthy)
        opened = await connector.open("s1", ANONYMOUS)
        assert opened.backend_names() == ["notes"]
        restored = await connector.restore("s1", ANONYMOUS, ["notes", "weather"], {})
        assert restored.backend_names() == ["notes", "weather"]
        unfiltered = BackendConnector(config, http)
        everything = await unfiltered.open("s2", ANONYMOUS)
        assert everything.backend_names() == ["notes", "weather"]
        for live in (opened, restored, everything):
            await live.aclose()


async def test_an_open_circuit_fails_calls_fast_until_a_trial_succeeds(
    tmp_path: Path,
) -> None:
    with running_backends({"notes": NOTES_MODULE}, tmp_path) as own:
        config = VmcpConfig.model_validate({
            "backends": [{"name": "notes", "url": own["notes"].url}],
            "health": {"breaker_failure_threshold": 1, "breaker_open_seconds": 60}})
        async with httpx2.AsyncClient() as http:
            connector = BackendConnector(config, http)
            session = await connector.open("s", ANONYMOUS)
            assert await session.call("notes", "tools/list", None, None)
            own["notes"].stop()
            with pytest.raises(BackendError):
                await session.call("notes", "tools/list", None, None)
            assert connector.breaker is not None
            assert connector.breaker.state("notes") is CircuitState.OPEN
            with pytest.raises(BackendUnavailable, match="circuit open"):
                await session.call("notes", "tools/list", None, None)
            await session.aclose()


async def test_a_backend_going_down_warns_at_its_first_failed_probe_and_drops_its_latency(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with running_backends({"notes": NOTES_MODULE}, tmp_path) as own:
        async with httpx2.AsyncClient() as http:
            monitor = monitor_for([BackendTarget("notes", own["notes"].url)], http)
            await monitor.probe_all()
            assert monitor.snapshot()["notes"].latency_seconds is not None
            own["notes"].stop()
            with caplog.at_level("INFO", logger="vmcp.backend.health"):
                await monitor.probe_all()
            after = monitor.snapshot()["notes"]
            assert after.status is HealthStatus.DEGRADED
            assert after.latency_seconds is None                # no stale figure on /ui
            warned = [r for r in caplog.records if r.levelname == "WARNING"]
            assert warned
            assert "probe failed (1 of 2" in warned[0].getMessage()
