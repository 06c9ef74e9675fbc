"""``subscriptions/listen`` through one gateway (2026-07-28): what a listener hears, when.

The backends are real processes: the conformance fixture (stateless revision, changes
its tool and prompt lists on request and announces it on its own listen streams) and
notes in front of which the gateway holds a session (session-based revisions only).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.support.mcp_http import ListenStream, modern_call
from tests.support.processes import (
    CONFORMANCE_MODULE,
    NOTES_MODULE,
    ManagedProcess,
    gateway_config,
    running_backends,
    running_gateway,
)

SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"


@pytest.fixture(scope="module")
def fixture_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    with running_backends({"fx": CONFORMANCE_MODULE},
                          tmp_path_factory.mktemp("listen-backend")) as backends:
        yield backends["fx"]


@pytest.fixture(scope="module")
def gateway(fixture_backend: ManagedProcess,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    config = gateway_config({"fx": fixture_backend}, session={"store": "memory"},
                            stateless={"max_listeners": 2, "max_resource_subscriptions": 3})
    with running_gateway(config, tmp_path_factory.mktemp("listen-gateway")) as process:
        yield process


@pytest.fixture
def idle_gateway(gateway: ManagedProcess) -> ManagedProcess:
    """The module's gateway once the listen streams of earlier tests are gone (they end
    when the gateway sees their clients hang up), so its two slots are free."""
    wait_for_streams(gateway, "0.0")
    return gateway


def wait_for_streams(gateway: ManagedProcess, count: str) -> None:
    deadline = time.monotonic() + 10
    while open_streams(gateway) != count:
        assert time.monotonic() < deadline, f"listen streams open: not {count}"
        time.sleep(0.05)


@pytest.fixture
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=15.0) as client:
        yield client


def tool_names(http: httpx2.Client, url: str) -> set[str]:
    answer = modern_call(http, url, "tools/list")
    return {tool["name"] for tool in answer["result"]["tools"]}


def trigger(http: httpx2.Client, url: str, tool: str) -> None:
    answer = modern_call(http, url, "tools/call", {"name": tool, "arguments": {}}, name=tool)
    assert "result" in answer, answer


def test_the_acknowledgement_comes_first_and_honours_only_routable_resources(
        idle_gateway: ManagedProcess) -> None:
    gateway = idle_gateway
    requested = {"toolsListChanged": True,
                 "resourceSubscriptions": ["test://nowhere", "test://static-text"]}
    with ListenStream(gateway.url, requested, request_id=41) as stream:
        assert stream.status == 200
        stream.wait_for(lambda s: s.messages, "the acknowledgement")
        (ack,) = stream.messages
        assert ack["method"] == "notifications/subscriptions/acknowledged", ack
        assert ack["params"]["notifications"] == {
            "toolsListChanged": True, "resourceSubscriptions": ["test://static-text"]}, ack
        assert ack["params"]["_meta"][SUBSCRIPTION_ID] == 41, ack


def test_the_gateway_announces_resource_subscriptions(
        http: httpx2.Client, gateway: ManagedProcess) -> None:
    answer = modern_call(http, gateway.url, "server/discover")
    assert answer["result"]["capabilities"]["resources"].get("subscribe") is True, answer


def upstream_listeners(http: httpx2.Client, url: str, uri: str, *, update: bool = False) -> int:
    """How many of the backend's listen streams subscribe to ``uri`` (``update``: and
    announce first that it changed)."""
    tool = "fx_test_trigger_resource_update" if update else "fx_test_resource_listeners"
    answer = modern_call(http, url, "tools/call", {"name": tool, "arguments": {"uri": uri}},
                         name=tool)
    return int(answer["result"]["content"][0]["text"])


def test_a_resource_update_reaches_only_the_listeners_of_that_uri(
        http: httpx2.Client, idle_gateway: ManagedProcess) -> None:
    gateway = idle_gateway
    watched, other = "test://watched-resource", "test://static-text"
    with ListenStream(gateway.url, {"resourceSubscriptions": [watched]},
                      request_id="w") as one, \
            ListenStream(gateway.url, {"toolsListChanged": True,
                                       "resourceSubscriptions": [other]},
                         request_id="o") as two:
        for stream in (one, two):
            stream.wait_for(lambda s: s.messages, "the acknowledgement")
        # One upstream stream serves both listeners, subscribed to both URIs.
        assert upstream_listeners(http, gateway.url, other, update=True) == 1
        assert upstream_listeners(http, gateway.url, watched, update=True) == 1
        one.wait_for(lambda s: "notifications/resources/updated" in s.methods(),
                     "the watched resource's update")
        updates = [m for m in one.messages if m["method"] == "notifications/resources/updated"]
        assert [u["params"]["uri"] for u in updates] == [watched], one.messages
        assert updates[0]["params"]["_meta"][SUBSCRIPTION_ID] == "w", updates
        # The other listener heard its own URI's update and nothing of the watched one,
        # up to a change it asked for that came after both.
        trigger(http, gateway.url, "fx_test_trigger_tool_change")
        two.wait_for(lambda s: "notifications/tools/list_changed" in s.methods(),
                     "tools list_changed")
        heard = [m["params"]["uri"] for m in two.messages
                 if m["method"] == "notifications/resources/updated"]
        assert heard == [other], two.messages
    # The last listener of each URI gone, the gateway no longer subscribes upstream.
    deadline = time.monotonic() + 10
    while upstream_listeners(http, gateway.url, watched) + upstream_listeners(
            http, gateway.url, other):
        assert time.monotonic() < deadline, "still subscribed upstream"
        time.sleep(0.05)


def test_too_many_resource_subscriptions_are_refused_with_invalid_params(
        idle_gateway: ManagedProcess) -> None:
    uris = [f"test://template/{n}/data" for n in range(4)]
    with ListenStream(idle_gateway.url, {"resourceSubscriptions": uris},
                      request_id=7) as stream:
        assert stream.status == 400
        (refusal,) = stream.messages
        assert refusal["id"] == 7
        assert refusal["error"]["code"] == -32602
        assert "3" in refusal["error"]["message"]


def test_a_backend_change_reaches_the_listener_and_the_next_listing_shows_it(
        http: httpx2.Client, idle_gateway: ManagedProcess) -> None:
    gateway = idle_gateway
    before = tool_names(http, gateway.url)
    with ListenStream(gateway.url, {"toolsListChanged": True}) as stream:
        stream.wait_for(lambda s: s.messages, "the acknowledgement")
        trigger(http, gateway.url, "fx_test_trigger_tool_change")
        stream.wait_for(lambda s: "notifications/tools/list_changed" in s.methods(),
                        "tools list_changed")
        change = stream.messages[-1]
        assert change["params"]["_meta"][SUBSCRIPTION_ID] == "listen-1", change
        # The cached listing (kept for catalog_ttl_seconds) was dropped with the change.
        after = tool_names(http, gateway.url)
        assert after ^ before == {"fx_test_dynamic_tool"}, (before, after)


def test_a_listener_hears_only_the_kinds_it_asked_for(
        http: httpx2.Client, idle_gateway: ManagedProcess) -> None:
    gateway = idle_gateway
    with ListenStream(gateway.url, {"promptsListChanged": True}, request_id="p") as prompts, \
            ListenStream(gateway.url, {"toolsListChanged": True}, request_id="t") as tools:
        for stream in (prompts, tools):
            assert stream.status == 200
            stream.wait_for(lambda s: s.messages, "the acknowledgement")
        trigger(http, gateway.url, "fx_test_trigger_tool_change")
        trigger(http, gateway.url, "fx_test_trigger_prompt_change")
        prompts.wait_for(lambda s: "notifications/prompts/list_changed" in s.methods(),
                         "prompts list_changed")
        tools.wait_for(lambda s: "notifications/tools/list_changed" in s.methods(),
                       "tools list_changed")
        assert "notifications/tools/list_changed" not in prompts.methods()
        assert "notifications/prompts/list_changed" not in tools.methods()


def open_streams(gateway: ManagedProcess) -> str:
    metrics = httpx2.get(f"{gateway.base_url}/metrics", timeout=5).text
    return next(line.split()[1] for line in metrics.splitlines()
                if line.startswith("vmcp_listen_streams "))


def test_a_listen_beyond_the_replicas_limit_is_refused_with_503(
        idle_gateway: ManagedProcess) -> None:
    gateway = idle_gateway
    with ListenStream(gateway.url, {"toolsListChanged": True}, request_id=1) as one, \
            ListenStream(gateway.url, {"toolsListChanged": True}, request_id=2) as two:
        for stream in (one, two):
            assert stream.status == 200
            stream.wait_for(lambda s: s.messages, "the acknowledgement")
        assert open_streams(gateway) == "2.0"
        with ListenStream(gateway.url, {"toolsListChanged": True}, request_id=3) as three:
            assert three.status == 503
            (refusal,) = three.messages
            assert refusal["id"] == 3
            assert refusal["error"]["code"] == -32603
            assert "limit" in refusal["error"]["message"]
    # Slots are given back when streams end.
    wait_for_streams(gateway, "0.0")
    with ListenStream(gateway.url, {"toolsListChanged": True}, request_id=4) as four:
        assert four.status == 200


def test_a_draining_replica_ends_listen_streams_with_their_result(
        fixture_backend: ManagedProcess, tmp_path: Path) -> None:
    config = gateway_config({"fx": fixture_backend}, session={"store": "memory"})
    with running_gateway(config, tmp_path) as gateway, \
            ListenStream(gateway.url, {"toolsListChanged": True}, request_id=9) as stream:
        stream.wait_for(lambda s: s.messages, "the acknowledgement")
        gateway.process.send_signal(signal.SIGTERM)
        stream.wait_for(lambda s: s.ended.is_set(), "the end of the stream")
        final = stream.messages[-1]
        assert final == {"jsonrpc": "2.0", "id": 9, "result": {"_meta": {SUBSCRIPTION_ID: 9}}}
        gateway.process.wait(timeout=15)  # and the stream did not hold the drain up


def test_a_session_based_backends_change_made_by_a_call_reaches_the_listener(
        http: httpx2.Client, tmp_path: Path) -> None:
    """notes (session-based revisions only) tells only the session whose call changed its
    tools, on that session's GET stream: the one pooled for the caller."""
    with running_backends({"notes": f"{NOTES_MODULE} --handshake-only"},
                          tmp_path / "backends") as backends, \
            running_gateway(gateway_config(backends, session={"store": "memory"}),
                            tmp_path / "gateway") as gateway, \
            ListenStream(gateway.url, {"toolsListChanged": True}) as stream:
        stream.wait_for(lambda s: s.messages, "the acknowledgement")
        assert "notes_delete_note" not in tool_names(http, gateway.url)
        trigger(http, gateway.url, "notes_enable_deletion")
        stream.wait_for(lambda s: "notifications/tools/list_changed" in s.methods(),
                        "tools list_changed")
        assert "notes_delete_note" in tool_names(http, gateway.url)


def test_a_session_based_backends_resource_update_reaches_its_listener(
        http: httpx2.Client, tmp_path: Path) -> None:
    """The gateway subscribes with resources/subscribe on the session whose GET stream it
    holds, hears the update there, and unsubscribes when its listener goes."""
    watched = "test://watched-resource"
    with running_backends({"fx": f"{CONFORMANCE_MODULE} --handshake-only"},
                          tmp_path / "backends") as backends, \
            running_gateway(gateway_config(backends, session={"store": "memory"}),
                            tmp_path / "gateway") as gateway:
        with ListenStream(gateway.url, {"resourceSubscriptions": [watched]}) as stream:
            stream.wait_for(lambda s: s.messages, "the acknowledgement")
            ack = stream.messages[0]["params"]["notifications"]
            assert ack == {"resourceSubscriptions": [watched]}, ack
            assert upstream_listeners(http, gateway.url, watched, update=True) == 1
            stream.wait_for(lambda s: "notifications/resources/updated" in s.methods(),
                            "the resource's update")
            assert stream.messages[-1]["params"]["uri"] == watched
        deadline = time.monotonic() + 10
        while upstream_listeners(http, gateway.url, watched):
            assert time.monotonic() < deadline, "still subscribed upstream"
            time.sleep(0.05)
