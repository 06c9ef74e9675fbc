"""Composite tools: workflows over the backends' tools, declared under ``composite_tools:``.

A composite tool is advertised like a backend tool. Calling it runs its steps: a step
starts as soon as the steps it ``depends_on`` are done (not when a whole level is), up to
``max_parallel`` at once. Step kinds:

* ``tool`` - call a tool by its exposed name with rendered ``arguments``;
* ``elicitation`` - ask the user (``message``, ``schema``); the answer is the step's output;
* ``for_each`` - run one tool ``step`` per element of ``items``, ``max_parallel`` at once.

Values are templates (see :mod:`vmcp.templating`) over ``params`` (the call's arguments),
``steps.<id>.output`` / ``.status`` / ``.error`` / ``.text``, and in a ``for_each`` step
``item`` and ``index``. A step may only read steps it depends on, directly or through
others, so what it reads has always finished. Everything that can be checked without the
backends is checked here, each problem located as ``composite_tools[i].steps[j].field``.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Iterator, Mapping
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, Field, model_validator

from vmcp.config._checks import Loc, _check_exposed_name, _Frozen
from vmcp.config._report import _format_loc
from vmcp.templating import TemplateError, references

MAX_STEPS = 50
"""Steps one composite tool may have."""
MAX_PARALLEL = 32
"""The widest parallelism a workflow or a for_each step may ask for."""
MAX_ITERATIONS = 1000
"""The most elements a for_each step may iterate over."""

STEP_FIELDS = ("output", "status", "error", "text")
"""What a template may read of a step: ``steps.<id>.<field>``."""

_ID_CHARS = frozenset(string.ascii_letters + string.digits + "_")

ErrorAction = Literal["abort", "continue", "retry"]
StepType = Literal["tool", "elicitation", "for_each"]
JsonType = Literal["string", "number", "integer", "boolean", "object", "array"]


def _check_step_id(value: str) -> str:
    if not value or not set(value) <= _ID_CHARS or value[0].isdigit():
        raise ValueError(f"{value!r} is not a step id: letters, digits and _, "
                         "not starting with a digit (it is read as steps.<id>)")
    return value


StepId = Annotated[str, AfterValidator(_check_step_id)]


class OnError(_Frozen):
    """What a failing step does to the workflow."""

    action: ErrorAction = "abort"
    """abort (the workflow fails), continue (the step's default stands in for its output)
    or retry (then abort once the retries are spent)."""
    retries: int = Field(default=0, ge=0, le=10)
    """retry: how many more attempts after the first."""
    delay_seconds: float = Field(default=1.0, ge=0, le=300)
    """retry: the pause before each new attempt."""

    @model_validator(mode="after")
    def _retries_need_retry(self) -> Self:
        if self.action == "retry" and self.retries == 0:
            raise ValueError("action 'retry' needs retries >= 1")
        if self.action != "retry" and self.retries:
            raise ValueError(f"retries only apply to action 'retry', not {self.action!r}")
        return self


class InnerStep(_Frozen):
    """The tool call a for_each step makes for each element (``item``, ``index``)."""

    tool: Annotated[str, AfterValidator(_check_exposed_name)]
    """The exposed name of the tool to call."""
    arguments: dict[str, Any] = Field(default_factory=dict)
    """The tool's arguments (templates)."""


class StepConfig(_Frozen):
    """One step of a composite tool."""

    id: StepId
    """Unique within the tool; templates read it as steps.<id>."""
    type: StepType = "tool"
    """tool, elicitation or for_each."""
    depends_on: tuple[str, ...] = ()
    """Steps that must be done before this one starts."""
    when: str | None = None
    """A condition (template); the step is skipped when it renders false."""
    timeout_seconds: float | None = Field(default=None, gt=0, le=3600)
    """The longest one attempt of the step may take."""
    on_error: OnError = Field(default_factory=OnError)
    """What a failure does (abort, continue, retry)."""
    default: Any = None
    """The step's output when it is skipped or fails with action continue."""
    tool: Annotated[str, AfterValidator(_check_exposed_name)] | None = None
    """tool: the exposed name of the tool to call."""
    arguments: dict[str, Any] = Field(default_factory=dict)
    """tool: the tool's arguments (templates)."""
    message: str | None = None
    """elicitation: what the user is asked (a template)."""
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    """elicitation: the requested answer's JSON schema (flat object of primitives)."""
    on_decline: Literal["abort", "skip_remaining", "continue"] = "abort"
    """elicitation: what a declined or cancelled request does."""
    items: str | None = None
    """for_each: a template that gives the list to iterate over."""
    max_parallel: int = Field(default=4, ge=1, le=MAX_PARALLEL)
    """for_each: elements in flight at once."""
    max_iterations: int = Field(default=100, ge=1, le=MAX_ITERATIONS)
    """for_each: the most elements accepted (more fails the step)."""
    step: InnerStep | None = None
    """for_each: the tool call made per element."""

    @model_validator(mode="after")
    def _fields_of_type(self) -> Self:
        needs: dict[str, tuple[str, ...]] = {
            "tool": ("tool",), "elicitation": ("message", "schema_"),
            "for_each": ("items", "step")}
        allowed = {"tool": {"tool", "arguments"},
                   "elicitation": {"message", "schema_", "on_decline"},
                   "for_each": {"items", "step", "max_parallel", "max_iterations"}}
        missing = [name.rstrip("_") for name in needs[self.type] if getattr(self, name) is None]
        if missing:
            kind = f"{_article(self.type)} {self.type} step"
            raise ValueError(f"{kind} needs {' and '.join(missing)}")
        foreign = sorted(name.rstrip("_") for name in self.model_fields_set
                         if name in set().union(*allowed.values()) - allowed[self.type])
        if foreign:
            kind = f"{_article(self.type)} {self.type} step"
            raise ValueError(f"{', '.join(foreign)}: not for {kind}")
        return self


class OutputField(_Frozen):
    """One field of a composite tool's structured result."""

    type: JsonType = "string"
    """The field's JSON type; the rendered value is converted to it."""
    value: Any
    """A template (or a structure of them) over params and steps."""
    description: str | None = None
    """Shown in the tool's outputSchema."""


class CompositeToolConfig(_Frozen):
    """A tool the gateway serves itself by running a workflow over the backends' tools."""

    name: Annotated[str, AfterValidator(_check_exposed_name)]
    """The exposed tool name (must not clash with a backend tool)."""
    description: str = ""
    """The tool's description for clients."""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    """The tool's inputSchema (a JSON schema of type object); templates read it as params."""
    timeout_seconds: float = Field(default=300.0, gt=0, le=86400)
    """The longest the whole workflow may take."""
    answer_ttl_seconds: float = Field(default=300.0, gt=0, le=86400)
    """How long an elicitation step waits for the user; the run's stored state (what lets
    any replica continue it) expires then."""
    max_parallel: int = Field(default=8, ge=1, le=MAX_PARALLEL)
    """Steps running at once."""
    hide_tools: tuple[str, ...] = ()
    """Exposed backend tool names left out of listings (steps can still call them)."""
    steps: tuple[StepConfig, ...] = Field(min_length=1, max_length=MAX_STEPS)
    """The workflow's steps."""
    output: dict[str, OutputField] | None = None
    """The structured result; without it, the result maps each step id to its output."""

    @model_validator(mode="after")
    def _workflow(self) -> Self:
        problems = list(workflow_problems(self))
        if problems:
            raise LocatedProblems(problems)
        return self

    def step(self, step_id: str) -> StepConfig:
        return next(s for s in self.steps if s.id == step_id)


# --------------------------------------------------------------------------- checks


class LocatedProblems(ValueError):
    """Several problems of one model, each at its own place inside it."""

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(f"{_format_loc(loc)}: {msg}" for loc, msg in problems))
        self.problems = problems


def workflow_problems(tool: CompositeToolConfig) -> Iterator[tuple[Loc, str]]:
    """Duplicate ids, unknown or cyclic dependencies, and templates that cannot render."""
    if tool.parameters.get("type", "object") != "object":
        yield ("parameters",), "must be a JSON schema of type object"
    ids: dict[str, int] = {}
    for index, step in enumerate(tool.steps):
        if step.id in ids:
            yield (("steps", index, "id"),
                   f"duplicate step id {step.id!r} (also steps[{ids[step.id]}])")
        ids.setdefault(step.id, index)
    for index, step in enumerate(tool.steps):
        for dep in step.depends_on:
            if dep not in ids:
                yield ("steps", index, "depends_on"), f"unknown step {dep!r}"
            elif dep == step.id:
                yield ("steps", index, "depends_on"), f"step {step.id!r} depends on itself"
    cycle = find_cycle({s.id: s.depends_on for s in tool.steps})
    if cycle:
        yield ("steps",), f"dependency cycle {' -> '.join(cycle)}"
        return
    upstream = ancestors({s.id: s.depends_on for s in tool.steps})
    properties = tool.parameters.get("properties")
    params = set(properties) if isinstance(properties, Mapping) else None
    for index, step in enumerate(tool.steps):
        scope = _Scope(params, upstream.get(step.id, set()), set(ids),
                       loop=step.type == "for_each")
        for field, text in _step_templates(step):
            for problem in scope.problems(text):
                yield ("steps", index, *field), problem
    every = _Scope(params, set(ids), set(ids), loop=False)
    for key, out in (tool.output or {}).items():
        for field, text in _strings(out.value, ("output", key, "value")):
            for problem in every.problems(text):
                yield field, problem


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """One dependency cycle as a path that ends where it starts, or [] if there is none."""
    state: dict[str, int] = {}  # 1 visiting, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for dep in graph.get(node, ()):
            if dep not in graph:
                continue
            if state.get(dep) == 1:
                return [*path[path.index(dep):], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for node in graph:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def ancestors(graph: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    """Every node's transitive dependencies (the graph has no cycle)."""
    memo: dict[str, set[str]] = {}

    def of(node: str) -> set[str]:
        if node not in memo:
            found: set[str] = set()
            for dep in graph.get(node, ()):
                if dep in graph:
                    found |= {dep, *of(dep)}
            memo[node] = found
        return memo[node]

    return {node: of(node) for node in graph}


def _step_templates(step: StepConfig) -> Iterator[tuple[Loc, str]]:
    if step.when is not None:
        yield ("when",), step.when
    yield from _strings(step.arguments, ("arguments",))
    if step.message is not None:
        yield ("message",), step.message
    if step.items is not None:
        yield ("items",), step.items
    if step.step is not None:
        yield from _strings(step.step.arguments, ("step", "arguments"))


def _strings(value: Any, field: Loc) -> Iterator[tuple[Loc, str]]:
    if isinstance(value, str):
        yield field, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(item, (*field, str(key)))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _strings(item, (*field, index))


class _Scope:
    """What a template in one place may read."""

    def __init__(self, params: set[str] | None, readable: set[str], known: set[str], *,
                 loop: bool) -> None:
        self._params = params
        self._readable = readable
        self._known = known
        self._loop = loop

    def problems(self, text: str) -> Iterator[str]:
        try:
            found = references(text)
        except TemplateError as exc:
            yield f"template syntax error: {exc}"
            return
        names = {"params", "steps", *(("item", "index") if self._loop else ())}
        for ref in found:
            if ref.name not in names:
                where = " (item and index exist in for_each steps only)" if ref.name in (
                    "item", "index") else ""
                yield f"unknown name {ref.name!r} in template{where}"
            elif ref.name == "params" and ref.path and self._params is not None \
                    and ref.path[0] not in self._params:
                yield f"params.{ref.path[0]} is not among the parameters' properties"
            elif ref.name == "steps" and ref.path:
                yield from self._step_problem(ref.path)

    def _step_problem(self, path: tuple[str, ...]) -> Iterator[str]:
        step = path[0]
        if step not in self._known:
            yield f"unknown step {step!r} in template"
        elif step not in self._readable:
            yield (f"steps.{step} is read but {step!r} is not among the step's dependencies "
                   "(add it to depends_on)")
        elif len(path) > 1 and path[1] not in STEP_FIELDS:
            yield f"steps.{step}.{path[1]}: a step has {', '.join(STEP_FIELDS)}"


def composite_problems(data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
    """Checks across composite tools: unique names; hidden tools named once."""
    tools = data.get("composite_tools", ())
    problems: list[tuple[Loc, str]] = []
    seen: dict[str, int] = {}
    for index, tool in enumerate(tools if isinstance(tools, list | tuple) else ()):
        name = tool.get("name") if isinstance(tool, Mapping) else None
        if not isinstance(name, str):
            continue
        if name in seen:
            problems.append((("composite_tools", index, "name"),
                             f"duplicate composite tool {name!r} "
                             f"(also composite_tools[{seen[name]}])"))
        seen.setdefault(name, index)
    for index, tool in enumerate(tools if isinstance(tools, list | tuple) else ()):
        steps = tool.get("steps") if isinstance(tool, Mapping) else None
        for position, step in enumerate(steps if isinstance(steps, list | tuple) else ()):
            if not isinstance(step, Mapping):
                continue
            inner = step.get("step")
            for loc, name in ((("tool",), step.get("tool")),
                              (("step", "tool"), inner.get("tool") if isinstance(
                                  inner, Mapping) else None)):
                if isinstance(name, str) and name in seen:
                    problems.append((("composite_tools", index, "steps", position, *loc),
                                     f"{name!r} is a composite tool: a step calls "
                                     "backend tools only"))
    return problems


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"
