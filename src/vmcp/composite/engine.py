"""Running one composite tool call: steps scheduled on their dependencies.

Every step is a task from the start; it waits for the steps it depends on, not for a
whole level, so one slow step delays only what needs its output. A semaphore bounds the
steps running at once (``max_parallel``); a ``for_each`` step bounds its own elements.

Failures follow each step's ``on_error``: ``abort`` cancels what is running and fails the
call, ``continue`` lets the step's ``default`` stand in for its output, ``retry`` tries
again after ``delay_seconds`` before aborting. A step's ``timeout_seconds`` bounds each
attempt; the tool's ``timeout_seconds`` the whole call. Cancelling the call (the client's
cancellation, a closed stream) cancels every running step, and so the backend calls under
them, through the one task group.

A failed call is answered as a tool result with ``isError`` (the model reads why), naming
the workflow, the step and, for a template, the field.

A run can stop and go on elsewhere: :meth:`WorkflowRun.snapshot` is what a later run needs
(the definition it started with, its parameters, every finished step's outcome), and a
run built ``from_snapshot`` with the user's answers continues from there, on any replica.
The user is asked one question at a time. A host that cannot wait for the answer raises
:class:`AwaitingAnswer`: the run lets every step that can still make progress finish,
then ends with :class:`WorkflowSuspended` carrying the snapshot and the question.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from vmcp.composite.coerce import coerce_arguments, coerce_value
from vmcp.composite.contract import (
    FINISHED,
    Asked,
    AwaitingAnswer,
    Observer,
    Status,
    StepFailed,
    StepHost,
    StepObserver,
    StepState,
    WorkflowFailed,
    WorkflowSuspended,
)
from vmcp.config import CompositeToolConfig, InnerStep, OutputField, StepConfig
from vmcp.templating import TemplateError, render
from vmcp.tracing import span

__all__ = ["Asked", "AwaitingAnswer", "StepFailed", "StepHost", "StepObserver",
           "WorkflowFailed", "WorkflowRun", "WorkflowSuspended"]

logger = logging.getLogger(__name__)

RENDER_ERRORS: tuple[type[Exception], ...] = (
    TemplateError, TypeError, ValueError, ArithmeticError, LookupError, AttributeError)
"""What rendering can raise: Jinja's own errors, and what an expression raises at run
time (``{{ 1 + 'a' }}``, ``{{ 1 / 0 }}``): a failure of the step, not of the gateway."""


@dataclass
class _Run:
    states: dict[str, StepState]
    done: dict[str, anyio.Event]
    skip_rest: bool = False
    failure: str | None = None
    finished: int = 0
    waiting: tuple[str, dict[str, Any]] | None = None
    """The step waiting for an answer another run will get, and its question."""
    parked: set[str] = field(default_factory=set)
    """Steps left for the run that gets the answer (the waiting one, and any other that
    wanted to ask meanwhile)."""
    suspended: bool = False


class WorkflowRun:
    """One call of a composite tool; :meth:`run` returns the ``CallToolResult``."""

    def __init__(self, tool: CompositeToolConfig, params: Mapping[str, Any],
                 host: StepHost, observer: Observer | None = None, *,
                 step_observer: StepObserver | None = None) -> None:
        self.tool = tool
        self.params = dict(params)
        self.host = host
        self._observer = observer
        self._step_observer = step_observer
        self._run = _Run({s.id: StepState() for s in tool.steps},
                         {s.id: anyio.Event() for s in tool.steps})
        self._slots = anyio.Semaphore(tool.max_parallel)
        self._asking = anyio.Lock()
        self._answers: dict[str, dict[str, Any]] = {}
        self._resumed = False
        self.run_id = uuid.uuid4().hex
        """Names the run in what observers are told, also once continued elsewhere."""

    @classmethod
    def from_snapshot(cls, snapshot: Mapping[str, Any], answers: Mapping[str, dict[str, Any]],
                      host: StepHost, observer: Observer | None = None, *,
                      step_observer: StepObserver | None = None) -> WorkflowRun:
        """The run a :meth:`snapshot` describes, going on with ``answers`` (``ElicitResult``
        by step id): finished steps keep their outcome, the others run (again).

        Raises ``ValueError`` if the snapshot is not one this code wrote."""
        try:
            tool = CompositeToolConfig.model_validate(snapshot["tool"])
            params = snapshot["params"]
            states = snapshot["states"]
            if not isinstance(params, dict) or not isinstance(states, dict):
                raise TypeError("params and states must be objects")
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a workflow snapshot: {exc}") from None
        run = cls(tool, params, host, observer, step_observer=step_observer)
        run._resumed = True
        if isinstance(snapshot.get("run_id"), str):
            run.run_id = snapshot["run_id"]
        run._answers = dict(answers)
        run._run.skip_rest = bool(snapshot.get("skip_rest"))
        for step_id, saved in states.items():
            state = run.states.get(step_id)
            if state is None or not isinstance(saved, dict) or saved.get("status") not in FINISHED:
                continue
            state.status = saved["status"]
            state.output, state.error = saved.get("output"), saved.get("error")
            state.text = str(saved.get("text") or "")
            run._run.done[step_id].set()
            run._run.finished += 1
        return run

    def snapshot(self) -> dict[str, Any]:
        """What a run on any replica needs to go on from here (JSON): the definition this
        run started with, its parameters and every finished step's outcome."""
        return {"tool": self.tool.model_dump(mode="json", by_alias=True, exclude_unset=True),
                "params": self.params, "skip_rest": self._run.skip_rest, "run_id": self.run_id,
                "states": {sid: st.view() for sid, st in self.states.items()
                           if st.status in FINISHED}}

    @property
    def states(self) -> dict[str, StepState]:
        return self._run.states

    async def run(self) -> dict[str, Any]:
        """The ``CallToolResult``; raises :class:`WorkflowSuspended` when the run stops to
        wait for the user."""
        try:
            if not self._resumed:  # a resumed run's parameters were checked when it began
                self._check_params()
            structured = await self.structured()
        except WorkflowFailed as exc:
            return {"content": [{"type": "text", "text": str(exc)}], "isError": True}
        return {"content": [{"type": "text", "text": json.dumps(structured, default=str)}],
                "structuredContent": structured, "isError": False}

    def _check_params(self) -> None:
        """Required parameters present, each converted to its declared type, before any
        step runs (a missing one would otherwise surface as a template error)."""
        schema = self.tool.parameters
        required = schema.get("required")
        missing = [k for k in (required if isinstance(required, list) else ())
                   if k not in self.params]
        if missing:
            raise WorkflowFailed(f"composite tool {self.tool.name!r}: missing required "
                                 f"argument{'s' if len(missing) > 1 else ''} "
                                 f"{', '.join(map(repr, missing))}")
        self.params = coerce_arguments(self.params, schema)

    async def structured(self) -> dict[str, Any]:
        """The workflow's structured output; raises :class:`WorkflowFailed`."""
        started = time.monotonic()
        outcome = "cancelled"
        self._observe("", "workflow_started", {"resumed": self._resumed})
        try:
            with span(f"composite {self.tool.name}", attributes={
                    "mcp.tool.name": self.tool.name}):
                result = await self._scheduled()
            outcome = "ok"
            return result
        except WorkflowFailed:
            outcome = "failed"
            raise
        except WorkflowSuspended:
            outcome = "suspended"
            raise
        finally:
            seconds = time.monotonic() - started
            logger.info("composite tool %s: %s", self.tool.name, outcome, extra={
                "composite": self.tool.name, "outcome": outcome, "seconds": round(seconds, 4),
                "steps": {sid: st.status for sid, st in self.states.items()}})
            self._observe("", "workflow_ended", {"outcome": outcome,
                                                 "seconds": round(seconds, 4)})
            if self._observer is not None:
                ended: Counter[str] = Counter(
                    str(st.status) for st in self.states.values()
                    if st.status in ("completed", "failed", "skipped"))
                self._observer(self.tool.name, outcome, seconds, ended)

    async def _scheduled(self) -> dict[str, Any]:
        timeout = self.tool.timeout_seconds
        with anyio.move_on_after(timeout) as scope:
            async with anyio.create_task_group() as tg:
                for step in self.tool.steps:
                    if not self._run.done[step.id].is_set():
                        tg.start_soon(self._step, step, tg.cancel_scope)
        if self._run.suspended and self._run.waiting is not None and self._run.failure is None:
            step_id, question = self._run.waiting
            raise WorkflowSuspended(self.snapshot(), step_id, question)
        if scope.cancelled_caught:
            running = [s for s, st in self.states.items() if st.status == "running"]
            raise WorkflowFailed(
                f"composite tool {self.tool.name!r} timed out after {timeout:g}s"
                + (f" (still running: {', '.join(running)})" if running else ""))
        if self._run.failure is not None:
            raise WorkflowFailed(self._run.failure)
        return self._output()

    # -- one step -------------------------------------------------------------------

    async def _step(self, step: StepConfig, workflow: anyio.CancelScope) -> None:
        state = self.states[step.id]
        waits = False
        try:
            for dep in step.depends_on:
                await self._run.done[dep].wait()
            if self._run.skip_rest or not self._wanted(step):
                self._finish(step, "skipped", step.default)
                return
            async with self._slots:
                state.status, state.started = "running", time.monotonic()
                with span(f"composite step {step.id}", attributes={
                        "mcp.tool.name": self.tool.name, "vmcp.step": step.id}):
                    output = await self._attempts(step)
            self._finish(step, "completed", output)
        except StepFailed as exc:
            if step.on_error.action == "continue":
                self._finish(step, "failed", step.default, str(exc))
            else:
                self._finish(step, "failed", None, str(exc))
                self._run.failure = (f"composite tool {self.tool.name!r}, step {step.id!r} "
                                     f"failed: {exc}")
                workflow.cancel()
        except _Declined as exc:
            self._finish(step, "skipped", step.default, str(exc))
            if step.on_decline == "abort":
                self._run.failure = (f"composite tool {self.tool.name!r}, step {step.id!r}: "
                                     f"{exc}")
                workflow.cancel()
            else:
                self._run.skip_rest = True
        except AwaitingAnswer:
            waits = True
            state.status = "pending"
            self._run.parked.add(step.id)
        finally:
            if not waits:
                self._run.done[step.id].set()
            self._suspend_when_quiet(workflow)
        if waits:
            return
        await self.host.progress(self._run.finished, len(self.tool.steps),
                                 self.progress_message(step.id))

    def _suspend_when_quiet(self, workflow: anyio.CancelScope) -> None:
        """Once a step waits for an answer another run will get, stop the run as soon as
        nothing else can make progress: no step running, none whose dependencies are done.
        Checked at every step's end (synchronously, so no step can start in between)."""
        if self._run.waiting is None or self._run.suspended:
            return
        for step in self.tool.steps:
            state = self.states[step.id]
            if state.status in FINISHED or step.id in self._run.parked:
                continue
            if state.status == "running" or all(
                    self._run.done[dep].is_set() for dep in step.depends_on):
                return
        self._run.suspended = True
        workflow.cancel()

    def _wanted(self, step: StepConfig) -> bool:
        if step.when is None:
            return True
        value = self._render(step, "when", step.when, {})
        if isinstance(value, str):
            return value.strip().lower() not in ("", "false", "0", "no", "none", "null")
        return bool(value)

    def _finish(self, step: StepConfig, status: Status, output: Any,
                error: str | None = None) -> None:
        state = self.states[step.id]
        state.status, state.output = status, output
        if error is not None:
            state.error = error
        self._run.finished += 1
        now = time.monotonic()
        self._observe(step.id, status, {
            "seconds": round(now - state.started, 4) if state.started else 0.0,
            "attempts": state.attempts, "tool": step.tool or (
                step.step.tool if step.step is not None else None),
            "type": step.type, "error": state.error})
        logger.debug("composite step %s.%s: %s", self.tool.name, step.id, status, extra={
            "composite": self.tool.name, "step": step.id, "outcome": status,
            "attempts": state.attempts, "error": state.error,
            "seconds": round(now - state.started, 4) if state.started else 0.0})

    async def _attempts(self, step: StepConfig) -> Any:
        # A for_each step retries each failed element, not the whole list again.
        retries = step.on_error.retries if (
            step.on_error.action == "retry" and step.type != "for_each") else 0
        for attempt in range(retries + 1):
            self.states[step.id].attempts = attempt + 1
            try:
                with anyio.move_on_after(step.timeout_seconds):
                    return await self._once(step)
                error = StepFailed(f"timed out after {step.timeout_seconds:g}s")
            except StepFailed as exc:
                error = exc
            if attempt < retries:
                logger.info("composite step failed, retrying", extra={
                    "composite": self.tool.name, "step": step.id, "error": str(error)})
                await anyio.sleep(step.on_error.delay_seconds)
        raise error

    async def _once(self, step: StepConfig) -> Any:
        if step.type == "elicitation":
            return await self._elicit(step)
        if step.type == "for_each":
            return await self._for_each(step)
        assert step.tool is not None
        arguments = self._render(step, "arguments", step.arguments, {})
        return await self._call(step.id, step.tool, arguments)

    async def _call(self, step_id: str, tool: str, arguments: Any) -> Any:
        if not isinstance(arguments, dict):
            raise StepFailed("arguments must render to an object")
        schema = await self.host.input_schema(tool)
        properties = schema.get("properties") if isinstance(schema, Mapping) else None
        if isinstance(properties, Mapping):
            arguments = {k: coerce_value(v, properties.get(k)) for k, v in arguments.items()}
        result = await self.host.call_tool(tool, arguments)
        text = "\n".join(str(c.get("text", "")) for c in result.get("content") or ()
                         if isinstance(c, Mapping) and c.get("type") == "text")
        self.states[step_id].text = text
        if result.get("isError"):
            raise StepFailed(f"tool {tool!r} returned an error: {text or 'no message'}")
        return _output_of(result, text)

    async def _elicit(self, step: StepConfig) -> Any:
        answer = self._answers.pop(step.id, None)
        if answer is None:
            message = self._render(step, "message", step.message, {})
            question = {"message": str(message), "requestedSchema": step.schema_ or {}}
            # One question at a time: a person answers one form after another, and a run
            # that waits for one answer can be continued anywhere from one snapshot.
            async with self._asking:
                if self._run.waiting is not None:
                    raise AwaitingAnswer  # asked by the run that gets the first answer
                self._observe(step.id, "elicitation_asked", {})
                try:
                    answer = await self.host.elicit(question, Asked(step.id, self.snapshot))
                except AwaitingAnswer:
                    self._run.waiting = (step.id, question)
                    raise
        action = answer.get("action")
        self._observe(step.id, "elicitation_answered", {"action": str(action)})
        content = answer.get("content")
        if action != "accept" and step.on_decline != "continue":
            raise _Declined(f"the user answered {action!r}")
        return {"action": action, "accept": action == "accept",
                "content": content if isinstance(content, dict) else {}}

    async def _for_each(self, step: StepConfig) -> Any:
        assert step.step is not None
        assert step.items is not None
        items = self._render(step, "items", step.items, {})
        if isinstance(items, str) or not isinstance(items, list | tuple):
            raise StepFailed(f"items must render to a list, not {type(items).__name__}")
        if len(items) > step.max_iterations:
            raise StepFailed(f"{len(items)} items, more than max_iterations "
                             f"({step.max_iterations})")
        inner: InnerStep = step.step
        outputs: list[Any] = [step.default] * len(items)
        errors: dict[int, str] = {}
        slots = anyio.Semaphore(step.max_parallel)

        async def one(index: int, item: Any) -> None:
            async with slots:
                extra = {"item": item, "index": index}
                arguments = self._render(step, "step.arguments", inner.arguments, extra)
                retries = step.on_error.retries if step.on_error.action == "retry" else 0
                for attempt in range(retries + 1):
                    try:
                        outputs[index] = await self._call(step.id, inner.tool, arguments)
                        errors.pop(index, None)
                        return
                    except StepFailed as exc:
                        errors[index] = str(exc)
                    if attempt < retries:
                        await anyio.sleep(step.on_error.delay_seconds)

        async with anyio.create_task_group() as tg:
            for index, item in enumerate(items):
                tg.start_soon(one, index, item)
        if errors:
            failed = "; ".join(f"[{i}] {e}" for i, e in sorted(errors.items()))
            if step.on_error.action == "continue":
                state = self.states[step.id]
                state.error = f"{len(errors)} of {len(items)} items failed: {failed}"
                return outputs
            raise StepFailed(f"{len(errors)} of {len(items)} items failed: {failed}")
        return outputs

    def _observe(self, step_id: str, event: str, facts: Mapping[str, Any]) -> None:
        if self._step_observer is not None:
            self._step_observer(step_id, event, {**facts, "run_id": self.run_id})

    # -- templates and output -------------------------------------------------------

    def _context(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        return {"params": self.params,
                "steps": {sid: st.view() for sid, st in self.states.items()}, **extra}

    def _render(self, step: StepConfig, field_name: str, value: Any,
                extra: Mapping[str, Any]) -> Any:
        return _render_located(value, self._context(extra), field_name)

    def _output(self) -> dict[str, Any]:
        if self.tool.output is None:
            return {sid: st.output for sid, st in self.states.items()}
        context = self._context({})
        result: dict[str, Any] = {}
        for key, spec in self.tool.output.items():
            try:
                value = render(spec.value, context)
            except RENDER_ERRORS as exc:
                raise WorkflowFailed(
                    f"composite tool {self.tool.name!r}, output field {key!r}: "
                    f"template error: {exc}") from None
            result[key] = coerce_value(value, {"type": spec.type})
        return result

    def progress_message(self, step_id: str) -> str:
        state = self.states[step_id]
        return f"step {step_id} {state.status}"


def _render_located(value: Any, context: Mapping[str, Any], where: str) -> Any:
    """``value`` rendered; a template error names the field it is in (``arguments.url``)."""
    if isinstance(value, Mapping):
        return {k: _render_located(v, context, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_render_located(v, context, f"{where}[{i}]") for i, v in enumerate(value)]
    try:
        return render(value, context)
    except RENDER_ERRORS as exc:
        raise StepFailed(f"template error in field {where!r}: {exc}") from None


class _Declined(Exception):
    """The user declined or cancelled an elicitation step."""


def _output_of(result: Mapping[str, Any], text: str) -> Any:
    """What ``steps.<id>.output`` is: the structured content, else the text as JSON when
    it is JSON, else the text."""
    structured = result.get("structuredContent")
    if structured is not None:
        return structured
    try:
        return json.loads(text)
    except ValueError:
        return text


def output_schema(output: Mapping[str, OutputField]) -> dict[str, Any]:
    """The ``outputSchema`` a composite tool with an output mapping advertises."""
    properties: dict[str, Any] = {}
    for key, spec in output.items():
        prop: dict[str, Any] = {"type": spec.type}
        if spec.description:
            prop["description"] = spec.description
        properties[key] = prop
    return {"type": "object", "properties": properties, "required": sorted(output)}
