"""A run that stops to wait for the user, and its continuation from the snapshot."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from vmcp.composite import Asked, AwaitingAnswer, WorkflowRun, WorkflowSuspended
from vmcp.config import CompositeToolConfig

pytestmark = pytest.mark.anyio

TOOL = CompositeToolConfig.model_validate({
    "name": "gated", "steps": [
        {"id": "a", "tool": "t", "arguments": {"n": "a"}},
        {"id": "ask", "type": "elicitation", "depends_on": ["a"], "message": "go?",
         "schema": {"type": "object", "properties": {}}},
        {"id": "b", "tool": "t", "arguments": {"n": "b"}},
        {"id": "c", "tool": "t", "depends_on": ["ask", "b"],
         "arguments": {"n": "c {{ steps.ask.output.action }} {{ steps.b.output }}"}}]})


class Host:
    """Tools answer their ``n``; ``b`` waits for ``release``; the user is never here."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = anyio.Event()
        self.asked: list[Asked] = []
        self.events: list[tuple[str, str]] = []
        self.run_ids: set[str] = set()

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(arguments["n"])
        if arguments["n"] == "b":
            await self.release.wait()
            for _ in range(3):  # still at work for a while after the question
                await anyio.lowlevel.checkpoint()
        return {"content": [{"type": "text", "text": json.dumps(arguments["n"])}]}

    async def input_schema(self, name: str) -> Mapping[str, Any] | None:
        return None

    async def elicit(self, params: dict[str, Any], asked: Asked) -> dict[str, Any]:
        self.asked.append(asked)
        self.release.set()  # b finishes only after the question: the run must wait for it
        raise AwaitingAnswer

    async def progress(self, done: int, total: int, message: str) -> None:
        return None

    def observe(self, step: str, event: str, facts: Mapping[str, Any]) -> None:
        self.events.append((step, event))
        self.run_ids.add(facts["run_id"])


async def test_a_run_waits_for_parallel_steps_then_stops_with_a_snapshot() -> None:
    host = Host()
    with anyio.fail_after(5), pytest.raises(WorkflowSuspended) as suspended:
        await WorkflowRun(TOOL, {}, host, step_observer=host.observe).run()
    assert suspended.value.step == "ask"
    assert suspended.value.question["message"] == "go?"
    states = suspended.value.snapshot["states"]
    assert {k: v["status"] for k, v in states.items()} == {"a": "completed", "b": "completed"}
    assert sorted(host.calls) == ["a", "b"]
    assert ("ask", "elicitation_asked") in host.events
    assert ("", "workflow_ended") in host.events


async def test_a_run_continued_from_the_snapshot_runs_only_what_is_left() -> None:
    host = Host()
    with anyio.fail_after(5), pytest.raises(WorkflowSuspended) as suspended:
        await WorkflowRun(TOOL, {}, host, step_observer=host.observe).run()
    snapshot = json.loads(json.dumps(suspended.value.snapshot))  # as the store keeps it
    later = Host()
    with anyio.fail_after(5):
        result = await WorkflowRun.from_snapshot(
            snapshot, {"ask": {"action": "accept", "content": {}}}, later,
            step_observer=later.observe).run()
    assert later.calls == ["c accept b"]
    assert len(host.run_ids) == 1
    assert later.run_ids == host.run_ids  # observers see one run across the two
    assert later.asked == []
    assert result["structuredContent"]["c"] == "c accept b"


async def test_a_snapshot_that_is_not_one_is_refused() -> None:
    with pytest.raises(ValueError, match="not a workflow snapshot"):
        WorkflowRun.from_snapshot({"tool": {"name": "x"}}, {}, Host())
