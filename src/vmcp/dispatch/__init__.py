"""Serving one MCP method, once, for both protocol revisions.

The session-based revisions (``initialize`` and ``Mcp-Session-Id``) and the stateless one
(2026-07-28) differ in how a request is framed and where its backends come from, not in
what a method means. :class:`Dispatcher` holds the meaning: listings from the routing
table, a call routed by its exposed name to the backend that owns it (re-listing once
before an unknown name is refused), the capabilities the gateway announces, the errors
a client sees. Each revision supplies an :class:`Upstream`, the backends as one request
sees them, and frames what the dispatcher returns.
"""

from vmcp.dispatch.capabilities import aggregate_capabilities
from vmcp.dispatch.core import LISTINGS, ROUTED_METHODS, Dispatcher, items_of
from vmcp.dispatch.seam import Target, Upstream
from vmcp.dispatch.workflows import (
    NO_ELICITATION,
    WorkflowCall,
    WorkflowUpstream,
    elicit_result,
    is_handle,
    new_handle,
    state_key,
)

__all__ = [
    "LISTINGS",
    "NO_ELICITATION",
    "ROUTED_METHODS",
    "Dispatcher",
    "Target",
    "Upstream",
    "WorkflowCall",
    "WorkflowUpstream",
    "aggregate_capabilities",
    "elicit_result",
    "is_handle",
    "items_of",
    "new_handle",
    "state_key",
]
