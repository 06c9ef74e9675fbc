"""Cedar authorization end to end: real ``vmcp serve`` replicas on Redis, real tokens from
a real identity provider (groups and roles in the token), both protocol revisions, and
the audit events the replicas write."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support.identity_provider import AUDIENCE, IdentityProvider
from tests.support.mcp_http import BASE_HEADERS, INVALID_PARAMS, RawSession, initialize_body
from tests.support.processes import (
    VMCP_EXECUTABLE,
    ManagedProcess,
    gateway_config,
    running_gateways,
    write_config,
)
from tests.support.redis_server import RedisServer

MODERN = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientInfo": {"name": "modern-test", "version": "9"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
WAIT_SECONDS = 10.0

TOOLHIVE_EXAMPLES = [
    # "Allow clients with a specific role to call any tool" and "Allow a specific client to
    # call any tool", from ToolHive's docs/authz.md, unchanged.
    'permit(principal, action == Action::"call_tool", resource) when { principal.claim_roles.contains("admin") };',  # noqa: E501
    'permit(principal == Client::"user123", action == Action::"call_tool", resource);',
]
POLICIES = "\n".join(TOOLHIVE_EXAMPLES) + """

// A group (or any group below it, see the entities file) may use a whole backend.
@id("staff-use-notes")
permit(principal in THVGroup::"staff", action, resource in Backend::"notes");

// Interns may not search, whatever else permits it: forbid beats permit.
@id("interns-no-search")
forbid(principal in THVGroup::"interns", action, resource == Tool::"notes_search");

// A condition on an argument.
@id("forecast-paris")
permit(principal in THVGroup::"eng", action == Action::"call_tool",
       resource == Tool::"weather_forecast")
  when { context has arg_city && context.arg_city == "Paris" };
"""
ENTITIES = [{"uid": {"type": "THVGroup", "id": "eng"}, "attrs": {},
             "parents": [{"type": "THVGroup", "id": "staff"}]}]
REFUSAL = {"code": INVALID_PARAMS, "message": "Not found or not permitted"}


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider("authz") as provider:
        yield provider


def authz_files(workdir: Path, policies: str = POLICIES) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "policies.cedar").write_text(policies, encoding="utf-8")
    (workdir / "entities.json").write_text(json.dumps(ENTITIES), encoding="utf-8")
    return {"policies_file": str(workdir / "policies.cedar"),
            "entities_file": str(workdir / "entities.json"),
            "group_claims": ["groups", "realm_access.roles"]}


@pytest.fixture(scope="module")
def replicas(demo_backends: dict[str, ManagedProcess], idp: IdentityProvider,
             redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[dict[str, ManagedProcess]]:
    """Two replicas on one Redis, one policy set, each writing audit events to a file."""
    workdir = tmp_path_factory.mktemp("authz")
    authz = authz_files(workdir / "policy")
    session = {"store": redis_server.url, "key_prefix": f"authz:{uuid.uuid4().hex[:8]}:"}
    incoming = {"type": "oidc", "issuer": idp.issuer, "audience": AUDIENCE,
                "jwks_url": idp.jwks_url}
    configs = {
        name: gateway_config(
            demo_backends, session=session,
            server={"replica_id": name},
            auth={"incoming": incoming, "authz": authz},
            audit={"enabled": True, "sink": f"file:{workdir / f'audit-{name}.jsonl'}",
                   "include_arguments": True, "redact_keys": ["body"]})
        for name in ("a", "b")}
    with running_gateways(configs, workdir) as started:
        yield started


@pytest.fixture
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=15.0) as client:
        yield client


def token(idp: IdentityProvider, subject: str, *, groups: list[str] | None = None,
          roles: list[str] | None = None, **claims: Any) -> str:
    return idp.mint(subject, groups=groups or [], roles=roles or [], **claims)


def open_session(http: httpx2.Client, url: str, bearer: str) -> RawSession:
    headers = {**BASE_HEADERS, "Authorization": f"Bearer {bearer}"}
    response = http.post(url, json=initialize_body(1), headers=headers)
    assert response.status_code == 200, response.text
    session = RawSession(http, url, response.headers["mcp-session-id"])
    notified = http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                         headers=session.headers({"Authorization": f"Bearer {bearer}"}))
    assert notified.status_code == 202, notified.text
    return session


class Caller:
    """One identity's session, sending its token with every request."""

    def __init__(self, http: httpx2.Client, url: str, bearer: str) -> None:
        self.bearer = bearer
        self.session = open_session(http, url, bearer)
        self.auth = {"Authorization": f"Bearer {bearer}"}

    def post(self, message: dict[str, Any], *, url: str | None = None) -> httpx2.Response:
        return self.session.http.post(url or self.session.url, json=message,
                                      headers=self.session.headers(self.auth))

    def names(self, method: str, key: str, field: str = "name", *,
              url: str | None = None) -> list[str]:
        response = self.post({"jsonrpc": "2.0", "id": 1, "method": method, "params": {}},
                             url=url)
        assert response.status_code == 200, response.text
        return [item[field] for item in response.json()["result"][key]]

    def call(self, name: str, arguments: dict[str, Any] | None = None, *,
             request_id: int = 5, url: str | None = None) -> httpx2.Response:
        return self.post({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                          "params": {"name": name, "arguments": arguments or {}}}, url=url)


def refused(response: httpx2.Response, request_id: int = 5) -> bool:
    return response.status_code == 403 and response.json() == {
        "jsonrpc": "2.0", "id": request_id, "error": REFUSAL}


def audit_events(workdir: Path, name: str) -> list[dict[str, Any]]:
    path = workdir / f"audit-{name}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_events(workdir: Path, name: str, match: Any) -> list[dict[str, Any]]:
    """The replica's audit events once one satisfies ``match`` (the writer is a thread)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        found = [e for e in audit_events(workdir, name) if match(e)]
        if found:
            return found
        assert time.monotonic() < deadline, f"no such audit event on {name}"
        time.sleep(0.05)


def test_listings_show_what_each_group_may_use_on_both_replicas(
        replicas: dict[str, ManagedProcess], idp: IdentityProvider,
        http: httpx2.Client) -> None:
    a, b = replicas["a"].url, replicas["b"].url
    admin = Caller(http, a, token(idp, "carol", roles=["admin"]))
    full_tools = admin.names("tools/list", "tools")
    # The admin may call every tool (ToolHive's role example), but the policies grant
    # prompts and resources to staff only.
    assert {"notes_add_note", "notes_search", "weather_forecast", "weather_search"} <= set(
        full_tools)
    assert admin.names("prompts/list", "prompts") == []

    eng = Caller(http, a, token(idp, "alice", groups=["eng"]))
    for url in (a, b):  # the session moves between replicas; the decisions do not change
        tools = eng.names("tools/list", "tools", url=url)
        # Staff (eng is below staff) may use the whole notes backend; the forecast tool
        # is permitted only with a Paris argument, so no listing (without arguments) shows it.
        assert tools == [t for t in full_tools if t.startswith("notes_")], tools
        assert eng.names("prompts/list", "prompts", url=url) == ["notes_summarize_notes"]
        assert eng.names("resources/list", "resources", "uri", url=url) == ["notes://index"]
        assert eng.names("resources/templates/list", "resourceTemplates", "uriTemplate",
                         url=url) == ["notes://{id}"]

    intern = Caller(http, b, token(idp, "ivan", groups=["eng", "interns"]))
    assert intern.names("tools/list", "tools") == [
        t for t in full_tools if t.startswith("notes_") and t != "notes_search"]

    nobody = Caller(http, b, token(idp, "dave"))
    for method, key in (("tools/list", "tools"), ("prompts/list", "prompts"),
                        ("resources/list", "resources")):
        assert nobody.names(method, key) == [], method    # default deny


def test_denied_hidden_and_unknown_names_get_one_answer_before_any_backend(
        replicas: dict[str, ManagedProcess], idp: IdentityProvider,
        http: httpx2.Client) -> None:
    eng = Caller(http, replicas["a"].url, token(idp, "alice", groups=["eng"]))
    permitted = eng.call("notes_add_note", {"title": "t", "body": "b"})
    assert permitted.status_code == 200, permitted.text
    assert "result" in permitted.json(), permitted.text
    assert eng.call("weather_forecast", {"city": "Paris"}).json()["result"]["content"]

    denied = eng.call("weather_forecast", {"city": "London"})      # the argument condition
    hidden = eng.call("weather_search", {"query": "x"})             # not in its listing
    unknown = eng.call("no_such_tool", {"query": "x"})              # does not exist
    for response in (denied, hidden, unknown):
        assert refused(response), (response.status_code, response.text)
    assert denied.content == hidden.content == unknown.content
    assert dict(denied.headers) .keys() == dict(unknown.headers).keys()

    intern = Caller(http, replicas["b"].url, token(idp, "ivan", groups=["eng", "interns"]))
    assert refused(intern.call("notes_search", {"query": "x"}))     # forbid beats permit
    prompt = intern.post({"jsonrpc": "2.0", "id": 5, "method": "prompts/get",
                          "params": {"name": "weather_weather_report",
                                     "arguments": {"city": "Paris"}}})
    assert refused(prompt)
    read = intern.post({"jsonrpc": "2.0", "id": 5, "method": "resources/read",
                        "params": {"uri": "weather://cities"}})
    assert refused(read)
    assert intern.post({"jsonrpc": "2.0", "id": 5, "method": "resources/read",
                        "params": {"uri": "notes://index"}}).status_code == 200

    # ToolHive's "a specific client" example: the principal is Client::"<sub>".
    user123 = Caller(http, replicas["b"].url, token(idp, "user123"))
    assert user123.call("weather_search", {"query": "rain"}).status_code == 200


def post_modern(http: httpx2.Client, url: str, bearer: str, method: str,
                params: dict[str, Any], request_id: int | str = 5) -> httpx2.Response:
    headers = {**BASE_HEADERS, "MCP-Protocol-Version": MODERN, "Mcp-Method": method,
               "Authorization": f"Bearer {bearer}"}
    if method == "tools/call":
        headers["Mcp-Name"] = params["name"]
    return http.post(url, json={"jsonrpc": "2.0", "id": request_id, "method": method,
                                "params": {**params, "_meta": META}}, headers=headers)


def test_a_stateless_client_gets_the_same_decisions(
        replicas: dict[str, ManagedProcess], idp: IdentityProvider,
        http: httpx2.Client) -> None:
    alice, admin = token(idp, "alice", groups=["eng"]), token(idp, "carol", roles=["admin"])
    session_tools = Caller(http, replicas["a"].url, alice).names("tools/list", "tools")
    for url in (replicas["a"].url, replicas["b"].url):
        listed = post_modern(http, url, alice, "tools/list", {})
        assert listed.status_code == 200, listed.text
        result = listed.json()["result"]
        assert [t["name"] for t in result["tools"]] == session_tools
        assert result["cacheScope"] == "private"      # what one caller sees is theirs alone
        full = post_modern(http, url, admin, "tools/list", {}).json()["result"]["tools"]
        assert len(full) > len(session_tools)

        ok = post_modern(http, url, alice, "tools/call",
                         {"name": "weather_forecast", "arguments": {"city": "Paris"}})
        assert ok.status_code == 200, ok.text
        assert "result" in ok.json(), ok.text
        answers = [post_modern(http, url, alice, "tools/call", {"name": name,
                                                                "arguments": arguments})
                   for name, arguments in (("weather_forecast", {"city": "London"}),
                                           ("weather_search", {"query": "x"}),
                                           ("no_such_tool", {}))]
        assert all(refused(a) for a in answers), [a.text for a in answers]
        assert len({a.content for a in answers}) == 1


def test_audit_events_say_who_called_what_and_which_policies_decided(
        replicas: dict[str, ManagedProcess], idp: IdentityProvider, http: httpx2.Client,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    workdir = Path(replicas["a"].log_path).parent
    marker = uuid.uuid4().hex
    eng = Caller(http, replicas["a"].url, token(idp, "alice", groups=["eng"], name="Alice A"))
    ok = eng.call("notes_add_note", {"title": marker, "body": "secret text"})
    assert ok.status_code == 200
    assert refused(eng.call("weather_forecast", {"city": marker}))

    success = wait_for_events(workdir, "a", lambda e: e["type"] == "mcp_tool_call" and (
        e.get("data", {}).get("arguments", {}).get("title") == marker))[0]
    assert success["outcome"] == "success"
    assert success["component"] == "vmcp"
    assert success["subjects"] == {"user": "Alice A", "user_id": "alice", "issuer": idp.issuer}
    assert success["source"]["type"] == "network"
    assert success["source"]["value"] == "127.0.0.1"
    assert success["source"]["extra"]["user_agent"].startswith("python-httpx")
    assert success["target"] == {"method": "tools/call", "type": "tool",
                                 "name": "notes_add_note", "backend": "notes",
                                 "original_name": "add_note"}
    extra = success["metadata"]["extra"]
    assert extra["replica_id"] == "a"
    assert extra["policy_ids"] == ["staff-use-notes"]
    assert extra["http_status"] == 200
    assert extra["duration_ms"] > 0
    assert extra["session_hash"] != eng.session.session_id
    assert len(extra["session_hash"]) == 16
    assert "jsonrpc_error_code" not in extra
    uuid.UUID(success["metadata"]["auditId"])
    assert success["loggedAt"].endswith("Z")
    assert success["data"]["arguments"] == {"title": marker, "body": "[REDACTED]"}

    denied = wait_for_events(workdir, "a", lambda e: e["outcome"] == "denied" and (
        e.get("data", {}).get("arguments", {}).get("city") == marker))[0]
    assert denied["type"] == "mcp_tool_call"
    assert denied["target"]["name"] == "weather_forecast"
    assert denied["metadata"]["extra"]["http_status"] == 403
    assert denied["metadata"]["extra"]["jsonrpc_error_code"] == INVALID_PARAMS
    assert denied["metadata"]["extra"]["policy_ids"] == []

    # A 2026-07-28 request names its client in every request.
    listed = post_modern(http, replicas["b"].url, token(idp, "alice", groups=["eng"]),
                         "tools/list", {}, request_id=marker)
    assert listed.status_code == 200
    modern = wait_for_events(workdir, "b", lambda e: e["type"] == "mcp_tools_list" and (
        e["subjects"].get("client_name") == "modern-test"))[-1]
    assert modern["subjects"]["client_version"] == "9"
    assert modern["metadata"]["extra"]["protocol_version"] == MODERN
    assert "session_hash" not in modern["metadata"]["extra"]
    assert modern["outcome"] == "success"

    # An authentication refusal is audited too: no user but "anonymous", and the client
    # as its initialize names it.
    response = http.post(replicas["b"].url, json=initialize_body(1),
                         headers={**BASE_HEADERS, "Authorization": "Bearer not-a-token",
                                  "User-Agent": marker})
    assert response.status_code == 401
    refusal = wait_for_events(workdir, "b", lambda e: e["source"]["extra"].get(
        "user_agent") == marker)[0]
    assert refusal["type"] == "mcp_initialize"
    assert refusal["outcome"] == "failure"
    assert refusal["subjects"] == {"user": "anonymous", "client_name": "raw-http-test",
                                   "client_version": "0"}
    assert refusal["metadata"]["extra"]["http_status"] == 401

    metrics = http.get(f"{replicas['b'].base_url}/metrics",
                       headers={"Authorization": f"Bearer {token(idp, 'ops')}"})
    assert metrics.status_code == 200
    assert "vmcp_audit_events_dropped_total 0.0" in metrics.text
    assert "vmcp_audit_events_written_total" in metrics.text


def test_an_anonymous_gateway_authorizes_client_anonymous(
        demo_backends: dict[str, ManagedProcess], http: httpx2.Client, tmp_path: Path) -> None:
    authz = authz_files(tmp_path / "policy", policies=(
        'permit(principal == Client::"anonymous", action, resource in Backend::"weather");\n'))
    config = gateway_config(demo_backends, auth={"authz": authz})
    with running_gateways({"anon": config}, tmp_path) as started:
        session = RawSession.open(http, started["anon"].url)
        assert session.tool_names() == {"weather_forecast", "weather_search",
                                        "weather_slow_count", "weather_ask_llm"}
        _request_id, response = session.rpc("tools/call", {"name": "notes_list_notes",
                                                          "arguments": {}})
        assert response.status_code == 403, response.text
        assert response.json()["error"] == REFUSAL


def test_invalid_policies_stop_the_start_and_a_reload_keeps_the_running_set(
        demo_backends: dict[str, ManagedProcess], http: httpx2.Client, tmp_path: Path) -> None:
    broken = 'permit(principal, action == Action::"call_tool", resource);\npermit(principal,\n'
    authz = authz_files(tmp_path / "policy", policies=broken)
    config_file = write_config(tmp_path / "broken.yaml",
                               gateway_config(demo_backends, auth={"authz": authz}))
    import subprocess

    started = subprocess.run([str(VMCP_EXECUTABLE), "serve", "--config", str(config_file)],
                             capture_output=True, text=True, timeout=60)
    assert started.returncode != 0
    assert f"{authz['policies_file']}:2: syntax" in started.stderr, started.stderr

    policy_file = Path(authz["policies_file"])
    policy_file.write_text('permit(principal, action, resource in Backend::"weather");\n')
    config = gateway_config(demo_backends, auth={"authz": authz})
    with running_gateways({"reloading": config}, tmp_path) as gateways:
        gateway = gateways["reloading"]
        session = RawSession.open(http, gateway.url)
        before = http.get(f"{gateway.base_url}/status").json()["authorization"]
        assert before["policies"] == 1
        assert len(before["sha256"]) == 64
        weather_only = session.tool_names()
        assert weather_only
        assert all(n.startswith("weather_") for n in weather_only)

        policy_file.write_text('permit(principal, action, resource in Backend::"notes");\n'
                               'forbid(principal, action, resource) when { 1 + };\n')
        gateway.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + WAIT_SECONDS
        while "policies not reloaded" not in gateway.log_tail(200):
            assert time.monotonic() < deadline, gateway.log_tail()
            time.sleep(0.05)
        assert f"{policy_file}:2: syntax" in gateway.log_tail(200)
        assert http.get(f"{gateway.base_url}/status").json()["authorization"] == before
        assert session.tool_names() == weather_only

        policy_file.write_text('permit(principal, action, resource in Backend::"notes");\n')
        gateway.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + WAIT_SECONDS
        while http.get(f"{gateway.base_url}/status").json()["authorization"] == before:
            assert time.monotonic() < deadline, gateway.log_tail()
            time.sleep(0.05)
        after = session.tool_names()
        assert after
        assert all(n.startswith("notes_") for n in after), after
