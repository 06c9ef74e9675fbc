"""Composite tools run through the dispatcher: scheduling, errors, timeouts, templates.

The tools are coroutines in this process (see ``fake_upstream``) so that a test can hold
a step open on an event and look at what else runs meanwhile; the same workflows run over
the real demo backends in tests/integration/test_composite_tools.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.composite.fake_upstream import FakeUpstream, ToolBox, text_result
from vmcp.authz import CedarAuthorizer
from vmcp.composite import CompositeRegistry
from vmcp.config import AuthzConfig, CompositeToolConfig
from vmcp.dispatch import Dispatcher
from vmcp.errors import NotPermitted, RequestError
from vmcp.identity import Principal

pytestmark = pytest.mark.anyio

WAIT = 5.0  # bound on every wait for an event; never reached when the code is right


def composite(**fields: Any) -> CompositeToolConfig:
    return CompositeToolConfig.model_validate({"name": "flow", **fields})


def dispatcher(*tools: CompositeToolConfig) -> Dispatcher[dict[str, Any]]:
    return Dispatcher(resource_not_found_code=-32002, composites=CompositeRegistry(tools))


async def call(upstream: FakeUpstream, tool: CompositeToolConfig,
               arguments: dict[str, Any] | None = None, **params: Any) -> dict[str, Any]:
    with anyio.fail_after(WAIT):
        return await dispatcher(tool).call(upstream, "tools/call", {
            "name": tool.name, "arguments": arguments or {}, **params})


def gated(box: ToolBox, name: str) -> anyio.Event:
    """Register tool ``name`` that answers only once the returned event is set."""
    gate = anyio.Event()

    @box.tool(name)
    async def _(arguments: dict[str, Any]) -> dict[str, Any]:
        await gate.wait()
        return text_result(name, structured={"tool": name})
    return gate


def echo(box: ToolBox, name: str = "echo", schema: dict[str, Any] | None = None) -> None:
    @box.tool(name, schema)
    async def _(arguments: dict[str, Any]) -> dict[str, Any]:
        return text_result("ok", structured=arguments)


async def test_a_step_starts_as_soon_as_its_own_dependencies_are_done() -> None:
    """``after_fast`` depends only on ``fast``: it runs and finishes while ``slow``, on
    another branch, is still running (a level-by-level scheduler would hold it)."""
    box = ToolBox()
    slow_gate = gated(box, "slow")
    echo(box)
    upstream = FakeUpstream(box)
    tool = composite(steps=[
        {"id": "slow", "tool": "slow"},
        {"id": "fast", "tool": "echo", "arguments": {"n": 1}},
        {"id": "after_fast", "tool": "echo", "depends_on": ["fast"],
         "arguments": {"seen": "{{ steps.fast.output.n }}"}},
        {"id": "join", "tool": "echo", "depends_on": ["slow", "after_fast"]},
    ])
    result: dict[str, Any] = {}

    async def run() -> None:
        result.update(await call(upstream, tool))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await anyio.wait_all_tasks_blocked()  # everything that can run has run
        assert ("echo", {"seen": 1}) in box.calls
        names = [name for name, _ in box.calls]
        assert names.count("echo") == 2  # fast and after_fast, not join
        assert "slow" in names  # started, and still held at its gate
        slow_gate.set()
    assert result["isError"] is False
    assert result["structuredContent"]["after_fast"] == {"seen": 1}
    assert [name for name, _ in box.calls][-1] == "echo"  # join came last


async def test_parallel_branches_run_at_once_within_max_parallel() -> None:
    box = ToolBox()
    gates = [gated(box, f"t{i}") for i in range(4)]
    upstream = FakeUpstream(box)
    tool = composite(max_parallel=2, steps=[{"id": f"s{i}", "tool": f"t{i}"}
                                            for i in range(4)])
    async with anyio.create_task_group() as tg:
        tg.start_soon(call, upstream, tool)
        await anyio.wait_all_tasks_blocked()
        assert len(box.calls) == 2  # two branches run together, the others wait a slot
        for gate in gates:
            gate.set()
    assert len(box.calls) == 4


async def test_a_condition_skips_a_step_and_its_default_stands_in() -> None:
    box = ToolBox()
    echo(box)
    upstream = FakeUpstream(box)
    tool = composite(
        parameters={"type": "object", "properties": {"go": {"type": "boolean"}}},
        steps=[
            {"id": "maybe", "tool": "echo", "when": "{{ params.go }}",
             "arguments": {"v": "ran"}, "default": {"v": "default"}},
            {"id": "after", "tool": "echo", "depends_on": ["maybe"],
             "arguments": {"got": "{{ steps.maybe.output.v }}",
                           "status": "{{ steps.maybe.status }}"}},
        ])
    skipped = await call(upstream, tool, {"go": False})
    assert skipped["structuredContent"]["after"] == {"got": "default", "status": "skipped"}
    ran = await call(upstream, tool, {"go": True})
    assert ran["structuredContent"]["after"] == {"got": "ran", "status": "completed"}


async def test_retry_then_success() -> None:
    box = ToolBox()
    attempts: list[int] = []

    @box.tool("flaky")
    async def _(arguments: dict[str, Any]) -> dict[str, Any]:
        attempts.append(1)
        if len(attempts) < 3:
            return text_result("busy", error=True)
        return text_result("done", structured={"ok": True})

    tool = composite(steps=[{"id": "f", "tool": "flaky", "on_error": {
        "action": "retry", "retries": 2, "delay_seconds": 0}}])
    result = await call(FakeUpstream(box), tool)
    assert result["isError"] is False
    assert result["structuredContent"] == {"f": {"ok": True}}
    assert len(attempts) == 3


async def test_retries_spent_abort_the_workflow_and_name_the_step() -> None:
    box = ToolBox()

    @box.tool("broken")
    async def _(arguments: dict[str, Any]) -> dict[str, Any]:
        return text_result("disk full", error=True)

    tool = composite(steps=[{"id": "f", "tool": "broken", "on_error": {
        "action": "retry", "retries": 1, "delay_seconds": 0}}])
    result = await call(FakeUpstream(box), tool)
    assert result["isError"] is True
    assert "composite tool 'flow', step 'f' failed" in result["content"][0]["text"]
    assert "disk full" in result["content"][0]["text"]
    assert len(box.calls) == 2


async def test_continue_on_error_gives_later_steps_the_default_and_the_error() -> None:
    box = ToolBox()
    echo(box)

    @box.tool("broken")
    async def _(arguments: dict[str, Any]) -> dict[str, Any]:
        return text_result("no such city", error=True)

    tool = composite(steps=[
        {"id": "f", "tool": "broken", "on_error": {"action": "continue"},
         "default": {"city": "unknown"}},
        {"id": "g", "tool": "echo", "depends_on": ["f"], "arguments": {
            "city": "{{ steps.f.output.city }}", "status": "{{ steps.f.status }}",
            "why": "{{ steps.f.error }}"}},
    ])
    result = await call(FakeUpstream(box), tool)
    assert result["isError"] is False
    g = result["structuredContent"]["g"]
    assert g["city"] == "unknown"
    assert g["status"] == "failed"
    assert "no such city" in g["why"]


async def test_for_each_bounds_parallelism_and_keeps_partial_results() -> None:
    box = ToolBox()
    gate = anyio.Event()
    running = 0
    widest = 0

    @box.tool("fetch", {"type": "object", "properties": {"n": {"type": "integer"}}})
    async def _(arguments: dict[str, Any]) -> dict[str, Any]:
        nonlocal running, widest
        running += 1
        widest = max(widest, running)
        try:
            await gate.wait()
        finally:
            running -= 1
        if arguments["n"] == 3:
            return text_result("404", error=True)
        return text_result("page", structured={"n": arguments["n"]})

    tool = composite(
        parameters={"type": "object", "properties": {"pages": {"type": "array"}}},
        steps=[{"id": "pages", "type": "for_each", "items": "{{ params.pages }}",
                "max_parallel": 2, "default": None, "on_error": {"action": "continue"},
                "step": {"tool": "fetch", "arguments": {"n": "{{ item }}"}}},
               {"id": "report", "tool": "fetch", "depends_on": ["pages"], "when": "false"}])
    result: dict[str, Any] = {}

    async def run() -> None:
        result.update(await call(FakeUpstream(box), tool, {"pages": [1, 2, 3, 4, 5]}))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await anyio.wait_all_tasks_blocked()
        assert running == 2
        gate.set()
    assert widest == 2
    pages = result["structuredContent"]["pages"]
    assert pages == [{"n": 1}, {"n": 2}, None, {"n": 4}, {"n": 5}]


async def test_for_each_failure_aborts_by_default() -> None:
    box = ToolBox()

    @box.tool("fetch")
    async def _(arguments: dict[str, Any]) -> dict[str, Any]:
        return text_result("bad", error=arguments["n"] == "b")

    tool = composite(steps=[{"id": "each", "type": "for_each", "items": "{{ ['a', 'b'] }}",
                             "step": {"tool": "fetch", "arguments": {"n": "{{ item }}"}}}])
    result = await call(FakeUpstream(box), tool)
    assert result["isError"] is True
    assert "1 of 2 items failed: [1]" in result["content"][0]["text"]


async def test_a_step_timeout_cancels_the_backend_call() -> None:
    box = ToolBox()
    gated(box, "stuck")
    echo(box)
    tool = composite(steps=[
        {"id": "s", "tool": "stuck", "timeout_seconds": 0.05,
         "on_error": {"action": "continue"}, "default": "late"},
        {"id": "t", "tool": "echo", "depends_on": ["s"],
         "arguments": {"v": "{{ steps.s.output }}", "e": "{{ steps.s.error }}"}}])
    result = await call(FakeUpstream(box), tool)
    assert result["structuredContent"]["t"] == {"v": "late", "e": "timed out after 0.05s"}
    assert box.cancelled == ["stuck"]


async def test_the_workflow_timeout_fails_the_call_and_cancels_its_steps() -> None:
    box = ToolBox()
    gated(box, "stuck")
    gated(box, "also_stuck")
    tool = composite(timeout_seconds=0.05, steps=[{"id": "a", "tool": "stuck"},
                                                  {"id": "b", "tool": "also_stuck"}])
    result = await call(FakeUpstream(box), tool)
    assert result["isError"] is True
    assert "timed out after 0.05s (still running: a, b)" in result["content"][0]["text"]
    assert sorted(box.cancelled) == ["also_stuck", "stuck"]


async def test_cancelling_the_call_cancels_every_running_step() -> None:
    box = ToolBox()
    gated(box, "one")
    gated(box, "two")
    tool = composite(steps=[{"id": "a", "tool": "one"}, {"id": "b", "tool": "two"},
                            {"id": "c", "tool": "one", "depends_on": ["a"]}])
    async with anyio.create_task_group() as tg:
        tg.start_soon(call, FakeUpstream(box), tool)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert sorted(box.cancelled) == ["one", "two"]
    assert len(box.calls) == 2  # c never started


async def test_a_template_error_names_workflow_step_and_field() -> None:
    box = ToolBox()
    echo(box)
    tool = composite(steps=[
        {"id": "a", "tool": "echo", "arguments": {"x": 1}},
        {"id": "b", "tool": "echo", "depends_on": ["a"],
         "arguments": {"deep": {"q": "{{ steps.a.output.missing }}"}}}])
    result = await call(FakeUpstream(box), tool)
    text = result["content"][0]["text"]
    assert result["isError"] is True
    assert "composite tool 'flow', step 'b'" in text
    assert "field 'arguments.deep.q'" in text
    assert "missing" in text


async def test_single_expressions_keep_their_type_and_arguments_fit_the_schema() -> None:
    box = ToolBox()
    echo(box, schema={"type": "object", "properties": {
        "days": {"type": "integer"}, "label": {"type": "string"},
        "tags": {"type": "array"}}})
    tool = composite(
        parameters={"type": "object", "properties": {"n": {"type": "string"}}},
        steps=[{"id": "a", "tool": "echo", "arguments": {
            "days": "{{ params.n }}", "label": "{{ 7 }}", "tags": "{{ ['x', 'y'] }}"}}])
    result = await call(FakeUpstream(box), tool, {"n": "3"})
    assert box.calls == [("echo", {"days": 3, "label": "7", "tags": ["x", "y"]})]
    assert result["isError"] is False


async def test_output_mapping_and_progress_per_step() -> None:
    box = ToolBox()
    echo(box)
    tool = composite(
        steps=[{"id": "a", "tool": "echo", "arguments": {"n": 2}},
               {"id": "b", "tool": "echo", "depends_on": ["a"],
                "arguments": {"n": "{{ steps.a.output.n * 10 }}"}}],
        output={"total": {"type": "integer", "value": "{{ steps.b.output.n + 1 }}"},
                "label": {"type": "string", "value": "b={{ steps.b.output.n }}"}})
    upstream = FakeUpstream(box)
    result = await call(upstream, tool, _meta={"progressToken": "tok"})
    assert result["structuredContent"] == {"total": 21, "label": "b=20"}
    progress = [n["params"] for n in upstream.notifications]
    assert progress == [
        {"progressToken": "tok", "progress": 1, "total": 2, "message": "step a completed"},
        {"progressToken": "tok", "progress": 2, "total": 2, "message": "step b completed"}]
    listing = await dispatcher(tool).listing(upstream, "tools/list", {})
    flow = next(t for t in listing["tools"] if t["name"] == "flow")
    assert flow["outputSchema"]["properties"]["total"] == {"type": "integer"}


async def test_hidden_tools_are_unlisted_and_refused_but_steps_may_call_them() -> None:
    box = ToolBox()
    echo(box)
    echo(box, "secret")
    echo(box, "internal")
    tool = composite(hide_tools=["internal"], steps=[
        {"id": "a", "tool": "secret"}, {"id": "b", "tool": "internal"}])
    upstream = FakeUpstream(box, hidden=("secret",))
    listed = await dispatcher(tool).listing(upstream, "tools/list", {})
    assert [t["name"] for t in listed["tools"]] == ["echo", "flow"]
    for name in ("secret", "internal"):
        with pytest.raises(RequestError, match=f"Unknown tool: {name}"):
            await dispatcher(tool).call(upstream, "tools/call", {"name": name})
    result = await call(upstream, tool)
    assert result["isError"] is False
    assert [name for name, _ in box.calls] == ["secret", "internal"]


async def test_an_unknown_step_tool_fails_its_step() -> None:
    tool = composite(steps=[{"id": "a", "tool": "nowhere"}])
    result = await call(FakeUpstream(ToolBox()), tool)
    assert "step 'a' failed: Unknown tool: nowhere" in result["content"][0]["text"]


async def test_elicitation_answers_feed_later_steps_and_a_decline_skips_the_rest() -> None:
    box = ToolBox()
    echo(box)
    tool = composite(
        parameters={"type": "object", "properties": {"title": {"type": "string"}}},
        steps=[
            {"id": "ok", "type": "elicitation", "message": "Save {{ params.title }}?",
             "schema": {"type": "object", "properties": {"tag": {"type": "string"}}},
             "on_decline": "skip_remaining"},
            {"id": "save", "tool": "echo", "depends_on": ["ok"],
             "when": "{{ steps.ok.output.accept }}",
             "arguments": {"tag": "{{ steps.ok.output.content.tag }}"}}])
    accepted = FakeUpstream(box, answers=[{"action": "accept", "content": {"tag": "t1"}}])
    result = await call(accepted, tool, {"title": "memo"})
    assert accepted.elicitations[0]["message"] == "Save memo?"
    assert result["structuredContent"]["save"] == {"tag": "t1"}
    declined = FakeUpstream(box, answers=[{"action": "decline"}])
    result = await call(declined, tool, {"title": "memo"})
    assert result["isError"] is False
    assert result["structuredContent"] == {"ok": None, "save": None}
    assert len(box.calls) == 1


async def test_an_expression_that_raises_fails_its_step_not_the_gateway() -> None:
    box = ToolBox()
    echo(box)
    tool = composite(steps=[
        {"id": "a", "tool": "echo", "arguments": {"x": "{{ 1 / 0 }}"},
         "on_error": {"action": "continue"}, "default": "d"},
        {"id": "b", "tool": "echo", "depends_on": ["a"],
         "arguments": {"y": "{{ steps.a.output + 1 }}"}}])
    result = await call(FakeUpstream(box), tool)
    assert result["isError"] is True
    text = result["content"][0]["text"]
    assert "step 'b' failed: template error in field 'arguments.y'" in text
    assert box.calls == []


async def test_for_each_retries_the_failed_elements_only() -> None:
    box = ToolBox()
    failures = {"b": 1}

    @box.tool("fetch")
    async def _(arguments: dict[str, Any]) -> dict[str, Any]:
        item = arguments["n"]
        if failures.get(item, 0) > 0:
            failures[item] -= 1
            return text_result("flaky", error=True)
        return text_result(item, structured={"n": item})

    tool = composite(steps=[{"id": "each", "type": "for_each", "items": "{{ ['a', 'b'] }}",
                             "on_error": {"action": "retry", "retries": 2,
                                          "delay_seconds": 0},
                             "step": {"tool": "fetch", "arguments": {"n": "{{ item }}"}}}])
    result = await call(FakeUpstream(box), tool)
    assert result["structuredContent"] == {"each": [{"n": "a"}, {"n": "b"}]}
    assert sorted(args["n"] for _, args in box.calls) == ["a", "b", "b"]


async def test_a_user_who_never_answers_fails_the_elicitation_step() -> None:
    tool = composite(steps=[{"id": "ask", "type": "elicitation", "message": "?",
                             "schema": {"type": "object"}}])
    upstream = FakeUpstream(ToolBox(), answers=[{"raise": TimeoutError()}])
    result = await call(upstream, tool)
    assert result["isError"] is True
    assert "step 'ask' failed: the user did not answer in time" in result["content"][0]["text"]


async def test_required_parameters_are_checked_and_converted_before_any_step() -> None:
    box = ToolBox()
    echo(box)
    tool = composite(
        parameters={"type": "object", "required": ["city", "days"],
                    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}},
        steps=[{"id": "a", "tool": "echo",
                "arguments": {"twice": "{{ params.days * 2 }}"}}])
    missing = await call(FakeUpstream(box), tool, {"days": 1})
    assert missing["isError"] is True
    assert missing["content"][0]["text"] == ("composite tool 'flow': missing required "
                                             "argument 'city'")
    assert box.calls == []
    converted = await call(FakeUpstream(box), tool, {"city": "Oslo", "days": "2"})
    assert converted["structuredContent"] == {"a": {"twice": 4}}


# -- authorization -----------------------------------------------------------------------


def cedar(tmp_path: Path, policies: str) -> CedarAuthorizer:
    (tmp_path / "p.cedar").write_text(policies)
    return CedarAuthorizer(AuthzConfig.model_validate({"policies_file": str(
        tmp_path / "p.cedar")}))


ALICE = Principal("https://idp", "alice", "token-alice", {"sub": "alice"})


async def test_a_policy_denying_one_step_fails_that_step_for_the_caller(
        tmp_path: Path) -> None:
    box = ToolBox()
    echo(box)
    echo(box, "secret")
    tool = composite(steps=[
        {"id": "a", "tool": "echo", "arguments": {"v": 1}},
        {"id": "b", "tool": "secret", "on_error": {"action": "continue"}, "default": "no"}])
    authz = cedar(tmp_path, '''
        permit(principal, action, resource);
        forbid(principal, action, resource == Tool::"secret");''')
    served = Dispatcher(resource_not_found_code=-32002, authorizer=authz,
                        composites=CompositeRegistry([tool]))
    upstream = FakeUpstream(box)
    with anyio.fail_after(WAIT):
        result = await served.call(upstream, "tools/call", {"name": "flow", "arguments": {}},
                                   ALICE)
    assert result["structuredContent"] == {"a": {"v": 1}, "b": "no"}
    assert [name for name, _ in box.calls] == ["echo"]  # the denied step never left


async def test_the_composite_tool_is_authorized_and_listed_as_itself(tmp_path: Path) -> None:
    box = ToolBox()
    echo(box)
    tool = composite(steps=[{"id": "a", "tool": "echo"}])
    authz = cedar(tmp_path, '''
        permit(principal, action, resource);
        forbid(principal, action, resource == Tool::"flow");''')
    served = Dispatcher(resource_not_found_code=-32002, authorizer=authz,
                        composites=CompositeRegistry([tool]))
    upstream = FakeUpstream(box)
    listed = await served.listing(upstream, "tools/list", {}, ALICE)
    assert [t["name"] for t in listed["tools"]] == ["echo"]
    with pytest.raises(NotPermitted):
        await served.call(upstream, "tools/call", {"name": "flow", "arguments": {}}, ALICE)
    assert box.calls == []
