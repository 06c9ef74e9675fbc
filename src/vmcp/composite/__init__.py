"""Composite tools: workflows over the backends' tools, served like any tool.

:class:`CompositeRegistry` holds the configured composite tools; the dispatcher lists
them with the backends' tools and, for a call of one, starts a :class:`WorkflowRun`
whose tool steps go back through the dispatcher, so routing (and everything else that
applies to a client's call) applies to each step.
"""

from vmcp.composite.coerce import coerce_arguments, coerce_value
from vmcp.composite.engine import (
    Asked,
    AwaitingAnswer,
    StepFailed,
    StepHost,
    WorkflowFailed,
    WorkflowRun,
    WorkflowSuspended,
)
from vmcp.composite.registry import CompositeRegistry

__all__ = [
    "Asked",
    "AwaitingAnswer",
    "CompositeRegistry",
    "StepFailed",
    "StepHost",
    "WorkflowFailed",
    "WorkflowRun",
    "WorkflowSuspended",
    "coerce_arguments",
    "coerce_value",
]
