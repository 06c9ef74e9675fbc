"""SIGHUP applies a changed configuration without a restart."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx2
import yaml

from tests.integration.test_composite_tools import TEST_TOOLS, StatelessClient
from tests.support.mcp_http import RawSession, waiting_at_question
from tests.support.processes import ManagedProcess, running_gateway

WAIT_SECONDS = 10.0


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT_SECONDS}s: {what}"
        time.sleep(0.05)


def listen(session: RawSession, url: str, received: list[str], opened: threading.Event,
           stop: threading.Event) -> None:
    """Collect the methods of what the GET stream delivers, until told to stop."""
    with httpx2.Client(timeout=30) as http, http.stream(
            "GET", url, headers=session.headers({"Accept": "text/event-stream"})) as response:
        for line in response.iter_lines():
            opened.set()
            if line.startswith("data:") and line[5:].strip():
                received.append(json.loads(line[5:])["method"])
            if stop.is_set():
                return


def listening(session: RawSession, url: str, received: list[str]
              ) -> tuple[threading.Event, threading.Thread]:
    """A thread holding the session's GET stream (open when this returns); set the event
    to let it stop."""
    opened, stop = threading.Event(), threading.Event()
    listener = threading.Thread(target=listen, args=(session, url, received, opened, stop))
    listener.start()
    assert opened.wait(WAIT_SECONDS)
    return stop, listener


def test_sighup_adds_and_removes_backends_in_live_sessions(
    demo_backends: dict[str, ManagedProcess], tmp_path: Path
) -> None:
    notes = {"name": "notes", "url": demo_backends["notes"].url}
    weather = {"name": "weather", "url": demo_backends["weather"].url}
    with running_gateway({"backends": [notes]}, tmp_path) as gateway, \
            httpx2.Client(timeout=10) as http:
        config_file = tmp_path / "gateway.yaml"     # what running_gateway wrote and serves
        session = RawSession.open(http, gateway.url)
        assert "notes_add_note" in session.tool_names()
        # Upstream sessions open on first use: one on notes, for the reload to end.
        assert session.result("tools/call", {"name": "notes_list_notes", "arguments": {}}
                              ).get("isError") is not True
        received: list[str] = []
        stop, listener = listening(session, gateway.url, received)

        def reload(backends: list[dict[str, str]]) -> None:
            config = yaml.safe_load(config_file.read_text())
            config["backends"] = backends
            config_file.write_text(yaml.safe_dump(config))
            gateway.process.send_signal(signal.SIGHUP)

        reload([notes, weather])
        wait_for(lambda: "notifications/tools/list_changed" in received, "list_changed (add)")
        names = session.tool_names()
        assert any(n.startswith("weather_") for n in names), names
        assert any(n.startswith("notes_") for n in names), names
        assert session.result("tools/call", {"name": "weather_forecast",
                                             "arguments": {"city": "Paris"}}
                              ).get("isError") is not True

        received.clear()
        reload([weather])
        wait_for(lambda: "notifications/tools/list_changed" in received, "list_changed (drop)")
        names = session.tool_names()
        assert names, names
        assert all(n.startswith("weather_") for n in names), names
        upstream = http.get(f"{gateway.base_url}/status").json()["upstream_sessions"]
        assert upstream["notes"]["open"] == 0, upstream     # its upstream session ended
        assert upstream["weather"]["open"] == 1, upstream
        status = http.get(f"{gateway.base_url}/status").json()
        assert [b["name"] for b in status["backends"]] == ["weather"]

        reload([{"name": "Bad Name!", "url": "nope"}])       # refused, the running one stays
        wait_for(lambda: "configuration reload refused" in gateway.log_tail(200),
                 "the refusal is logged")
        assert session.tool_names() == names
        stop.set()
        session.delete()
        listener.join(timeout=WAIT_SECONDS)


def test_sighup_adds_and_removes_composite_tools_and_a_run_under_way_keeps_its_own(
    demo_backends: dict[str, ManagedProcess], tmp_path: Path
) -> None:
    ask = next(tool for tool in TEST_TOOLS if tool["name"] == "ask_then_save")
    added = {"name": "search_twice", "steps": [
        {"id": "one", "tool": "weather_search", "arguments": {"query": "Ber"}},
        {"id": "two", "tool": "weather_search", "arguments": {"query": "Os"}}]}
    backends = [{"name": name, "url": demo_backends[name].url} for name in ("notes", "weather")]
    with running_gateway({"backends": backends, "composite_tools": [ask]},
                         tmp_path) as gateway, httpx2.Client(timeout=10) as http:
        config_file = tmp_path / "gateway.yaml"
        with waiting_at_question(http, gateway.url) as (session, call, events, _, question):
            received: list[str] = []
            stop, listener = listening(session, gateway.url, received)
            stateless = StatelessClient(http, gateway.url)
            meta = {"io.modelcontextprotocol/clientCapabilities": {"elicitation": {}}}
            waiting = stateless.result("tools/call", {"name": "ask_then_save",
                                                      "arguments": {}, "_meta": meta})
            config = yaml.safe_load(config_file.read_text())
            config["composite_tools"] = [added]
            config_file.write_text(yaml.safe_dump(config))
            gateway.process.send_signal(signal.SIGHUP)
            wait_for(lambda: "notifications/tools/list_changed" in received, "list_changed")
            names = session.tool_names()
            assert "search_twice" in names, names
            assert "ask_then_save" not in names, names
            done = session.result("tools/call", {"name": "search_twice", "arguments": {}})
            assert set(done["structuredContent"]) == {"one", "two"}, done
            # The run that began before the reload finishes as it began.
            answer = {"jsonrpc": "2.0", "id": question["id"], "result": {
                "action": "accept", "content": {"title": "defined before"}}}
            assert http.post(gateway.url, json=answer, headers=session.headers()
                             ).status_code == 202
            final = next(m for _, m in list(events) if m.get("id") == call["id"])
            assert final["result"]["structuredContent"] == {"title": "defined before"}
            [key] = waiting["inputRequests"]
            resumed = stateless.result("tools/call", {
                "name": "ask_then_save", "arguments": {}, "_meta": meta,
                "requestState": waiting["requestState"], "inputResponses": {key: {
                    "action": "accept", "content": {"title": "also before"}}}})
            assert resumed["structuredContent"] == {"title": "also before"}, resumed
        _, gone = session.rpc("tools/call", {"name": "ask_then_save", "arguments": {}})
        assert "Unknown tool: ask_then_save" in gone.text, gone.text
        stop.set()
        session.delete()
        listener.join(timeout=WAIT_SECONDS)
