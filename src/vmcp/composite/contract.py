"""What a composite tool run and the gateway say to each other: the host a run asks
for tools, the user and the client; what it tells observers; the signals and failures
that end a step or a run; a step's state as templates read it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = ["FINISHED", "Asked", "AwaitingAnswer", "Observer", "Status", "StepFailed",
           "StepHost", "StepObserver", "StepState", "WorkflowFailed", "WorkflowSuspended"]

Status = Literal["pending", "running", "completed", "failed", "skipped"]
FINISHED: tuple[Status, ...] = ("completed", "failed", "skipped")


class StepHost(Protocol):
    """What a workflow needs from the gateway: its tools, the user, the client."""

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """Call the exposed tool ``name``; its ``CallToolResult``. Raises
        :class:`StepFailed` when there is no result (unknown tool, backend error)."""
        ...

    async def input_schema(self, name: str) -> Mapping[str, Any] | None:
        """The exposed tool's ``inputSchema``, if it is known."""
        ...

    async def elicit(self, params: dict[str, Any], asked: Asked) -> dict[str, Any]:
        """Ask the user (``elicitation/create``); the ``ElicitResult``. Raises
        :class:`StepFailed` when the client cannot be asked, :class:`AwaitingAnswer` when
        the answer will come to a later run (see :class:`WorkflowSuspended`)."""
        ...

    async def progress(self, done: int, total: int, message: str) -> None:
        """Tell the client how far the call is (dropped when it asked for no progress)."""
        ...


Observer = Callable[[str, str, float, Mapping[str, int]], None]
"""Told of each finished call: (tool, outcome ok | failed | cancelled, seconds, how many
steps ended completed / failed / skipped)."""


StepObserver = Callable[[str, str, Mapping[str, Any]], None]
"""Told of a run's start and end and of each step's end and question to the user: (step
id, event, facts), for the audit trail. Events: ``workflow_started`` (facts: resumed) and
``workflow_ended`` (outcome, seconds) with an empty step id; ``completed`` / ``failed`` /
``skipped`` (seconds, attempts, type, tool, error); ``elicitation_asked``;
``elicitation_answered`` (action). Every event's facts carry the ``run_id``, the same for
a run continued from its snapshot."""


@dataclass(frozen=True)
class Asked:
    """Which step asks, and how to read the run's state at that moment (what a host keeps
    so that another run can continue once the answer comes)."""

    step: str
    snapshot: Callable[[], dict[str, Any]]


class StepFailed(Exception):
    """One attempt of a step failed; the message says why."""


class AwaitingAnswer(Exception):
    """Raised by a host's ``elicit``: the answer will come to another run."""


class WorkflowSuspended(Exception):
    """The run stopped to wait for the user: ``snapshot`` continues it, once ``step``'s
    ``question`` (``elicitation/create`` params) is answered."""

    def __init__(self, snapshot: dict[str, Any], step: str,
                 question: dict[str, Any]) -> None:
        super().__init__(step)
        self.snapshot = snapshot
        self.step = step
        self.question = question


class WorkflowFailed(Exception):
    """The call fails; the message names the workflow and, when one is at fault, the step."""


@dataclass
class StepState:
    """What templates read as ``steps.<id>``."""

    status: Status = "pending"
    output: Any = None
    error: str | None = None
    text: str = ""
    started: float | None = None
    attempts: int = 0

    def view(self) -> dict[str, Any]:
        return {"status": self.status, "output": self.output, "error": self.error,
                "text": self.text}
