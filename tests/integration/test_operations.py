"""The operational routes of a running gateway: health, readiness, status, metrics."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx2
import yaml

from tests.support.mcp_http import RawSession
from tests.support.processes import VMCP_EXECUTABLE, ManagedProcess
from tests.support.redis_server import free_port


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{") or line.startswith(f"{name} "):
            series, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in series for k, v in labels.items()) or not wanted:
                return float(value)
    return 0.0


def test_health_readiness_and_status(gateway: ManagedProcess) -> None:
    assert httpx2.get(f"{gateway.base_url}/healthz").json() == {"status": "ok"}
    assert httpx2.get(f"{gateway.base_url}/readyz").json() == {"status": "ready"}
    status = httpx2.get(f"{gateway.base_url}/status").json()
    assert {b["name"] for b in status["backends"]} == {"notes", "weather"}
    assert status["store"] == "memory"
    assert {"replica_id", "version", "cache", "live_sessions", "upstream_sessions"} <= set(status)


def test_metrics_count_requests_store_calls_and_sessions(gateway: ManagedProcess) -> None:
    url = f"{gateway.base_url}/metrics"
    before = httpx2.get(url).text
    with httpx2.Client(timeout=10) as http:
        session = RawSession.open(http, gateway.url)
        session.tool_names()
        session.result("tools/call", {"name": "notes_list_notes", "arguments": {}})
        session.rpc("no/such/method")
        after_calls = httpx2.get(url).text
        session.delete()
    assert (metric(after_calls, "vmcp_requests_total", method="tools/list", status="200")
            == metric(before, "vmcp_requests_total", method="tools/list", status="200") + 1)
    assert metric(after_calls, "vmcp_requests_total", method="other", status="200") >= 1
    assert "no/such/method" not in after_calls
    assert metric(after_calls, "vmcp_store_operations_total", op="load", outcome="ok") > 0
    assert metric(after_calls, "vmcp_live_sessions") >= 1
    assert metric(after_calls, "vmcp_upstream_sessions_opened_total", backend="notes") >= 1
    assert metric(after_calls, "vmcp_backend_calls_total", backend="notes", outcome="ok") >= 1


def test_check_config_probe_reports_each_backend(
    gateway: ManagedProcess, demo_backends: dict[str, ManagedProcess], tmp_path: Path
) -> None:
    config = tmp_path / "probe.yaml"
    backends = [{"name": n, "url": b.url} for n, b in demo_backends.items()]
    backends.append({"name": "offline", "url": f"http://127.0.0.1:{free_port()}/mcp",
                     "connect_timeout_seconds": 2})
    config.write_text(yaml.safe_dump({"backends": backends}))
    result = subprocess.run([str(VMCP_EXECUTABLE), "check-config", str(config), "--probe"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr   # one backend is down
    rows = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()
            if line.split() and line.split()[0] in ("notes", "weather", "offline")
            and len(line.split()) > 3}
    assert rows == {"notes": "ok", "weather": "ok", "offline": "FAILED"}, result.stdout
    assert "Traceback" not in result.stderr


def test_the_demo_curl_lines_open_a_session_and_call_a_tool(gateway: ManagedProcess) -> None:
    from vmcp.demo import demo_session_commands

    script = "set -e\n" + "\n".join(demo_session_commands(gateway.url)) + '\necho "SID=$SID"\n'
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                            timeout=30, check=True)
    assert '"result"' in result.stdout
    assert "hello" in result.stdout
    assert '"isError":true' not in result.stdout.replace(" ", "")
    assert result.stdout.rstrip().rpartition("SID=")[2]           # a session id was read


def test_the_readme_shows_the_demo_curl_lines() -> None:
    from vmcp.demo import demo_session_commands

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    for line in demo_session_commands("http://127.0.0.1:4483/mcp"):
        assert line in readme
