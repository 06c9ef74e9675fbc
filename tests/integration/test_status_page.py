"""The status page in a real headless Chromium: every backend shown with its health."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.support.processes import (
    PROJECT_ROOT,
    ManagedProcess,
    gateway_config,
    running_gateway,
)
from tests.support.redis_server import free_port

ARTIFACTS = PROJECT_ROOT / "artifacts"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--no-first-run", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--hide-scrollbars",
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise RuntimeError("chromium not found: scripts/bootstrap installs Debian's chromium")
    return found


@pytest.fixture(scope="module")
def monitored_gateway(demo_backends: dict[str, ManagedProcess],
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    config = gateway_config(demo_backends, health={"interval_seconds": 0.3,
                                                   "unhealthy_threshold": 1,
                                                   "timeout_seconds": 1})
    config["backends"].append({"name": "offline", "url": f"http://127.0.0.1:{free_port()}/mcp"})
    with running_gateway(config, tmp_path_factory.mktemp("ui")) as gateway:
        deadline = time.monotonic() + 10
        while True:
            health = {b["name"]: b["health"] for b in
                      httpx2.get(f"{gateway.base_url}/status").json()["backends"]}
            if health == {"notes": "healthy", "weather": "healthy", "offline": "unhealthy"}:
                break
            assert time.monotonic() < deadline, health
            time.sleep(0.05)
        yield gateway


def run_chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=60, check=True)


def test_status_page_shows_each_backend_and_its_health(
    monitored_gateway: ManagedProcess, tmp_path: Path
) -> None:
    url = f"{monitored_gateway.base_url}/ui"
    # Let the page's own refresh run once (virtual time), then read the live DOM.
    dom = run_chromium(["--virtual-time-budget=4000", "--dump-dom", url],
                       tmp_path / "profile").stdout
    shown = dict(re.findall(r'<tr data-backend="([^"]+)">.*?data-health="([^"]+)"', dom))
    assert shown == {"notes": "healthy", "weather": "healthy", "offline": "unhealthy"}, dom
    assert 'id="live"' in dom
    assert "Recent errors" in dom

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "status-page.png"
    screenshot.unlink(missing_ok=True)
    run_chromium(["--window-size=1280,800", f"--screenshot={screenshot}", url],
                 tmp_path / "profile-shot")
    assert screenshot.stat().st_size > 10_000
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
