"""The ops endpoints (/status, /metrics, /ui) are never open to anyone on the public port
of a gateway with authentication: without an admin listener they need a credential, with
one they leave the public port. /healthz and /readyz stay on the public port for probes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx2

from tests.support.mcp_http import BASE_HEADERS, initialize_body
from tests.support.processes import ManagedProcess, gateway_config, running_gateway
from tests.support.redis_server import free_port

TOKEN = "ops-test-token-0123456789"
STATIC_AUTH = {"incoming": {"type": "static", "tokens": [
    {"token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest(), "issuer": "local",
     "subject": "ops"}]}}
OPS = ("/status", "/metrics", "/ui")


def test_with_auth_and_no_admin_listener_ops_endpoints_need_a_credential(
        demo_backends: dict[str, ManagedProcess], tmp_path: Path) -> None:
    config = gateway_config(demo_backends, auth=STATIC_AUTH)
    with running_gateway(config, tmp_path) as gateway:
        for path in OPS:
            refused = httpx2.get(gateway.base_url + path)
            assert refused.status_code == 401, path
            assert "backends" not in refused.text
            allowed = httpx2.get(gateway.base_url + path,
                                 headers={"authorization": f"Bearer {TOKEN}"})
            assert allowed.status_code == 200, path
        assert httpx2.get(gateway.base_url + "/healthz").status_code == 200
        assert "set server.admin.port" in gateway.log_tail(200)


def test_an_admin_listener_takes_the_ops_endpoints_off_the_public_port(
        demo_backends: dict[str, ManagedProcess], tmp_path: Path) -> None:
    admin_port = free_port()
    config = gateway_config(demo_backends, auth=STATIC_AUTH,
                            server={"admin": {"port": admin_port}})
    with running_gateway(config, tmp_path) as gateway:
        admin = f"http://127.0.0.1:{admin_port}"
        for path in OPS:
            assert httpx2.get(gateway.base_url + path, headers={
                "authorization": f"Bearer {TOKEN}"}).status_code == 404, path
            assert httpx2.get(admin + path).status_code == 200, path
        for path in ("/healthz", "/readyz"):
            assert httpx2.get(gateway.base_url + path).status_code in (200, 503), path
            assert httpx2.get(admin + path).status_code in (200, 503), path
        assert httpx2.get(gateway.base_url + "/healthz").json() == {"status": "ok"}
        assert httpx2.post(admin + "/mcp", json={}).status_code == 404
        # the MCP endpoint is where it was, behind its authentication
        assert httpx2.post(gateway.url, json=initialize_body(1),
                           headers=BASE_HEADERS).status_code == 401
        assert f"admin listener (/status, /metrics, /ui) on http://127.0.0.1:{admin_port}" in (
            gateway.log_tail(200))
