"""Which of a backend's requests to the client the client can take.

A backend asks the client for sampling, elicitation or roots only if the client declared
the matching capability; behind the gateway, the backend sees the gateway's own
capabilities, not the client's, so it may ask a client that never offered any. The
gateway refuses such a request itself, as the client would have (the revision's answer
for an unsupported client feature is -32601, "Method not found"), naming the missing
capability, rather than putting to the client a request it cannot answer.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Final

from vmcp.errors import METHOD_NOT_FOUND_CODE

__all__ = ["CLIENT_CAPABILITY_OF", "refusal", "undeclared"]

CLIENT_CAPABILITY_OF: Final = {
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
    "roots/list": "roots",
}
"""A backend's request to the client, and the client capability it needs."""


def refusal(message: str) -> dict[str, Any]:
    """The answer (``error`` member) refusing a backend's request to the client."""
    return {"error": {"code": METHOD_NOT_FOUND_CODE, "message": message}}


def undeclared(method: str, capabilities: Collection[str] | None) -> dict[str, Any] | None:
    """The refusal of ``method`` if the client's declared ``capabilities`` lack what it
    needs (None: not known, nothing is refused), else None."""
    capability = CLIENT_CAPABILITY_OF.get(method)
    if capability is None or capabilities is None or capability in capabilities:
        return None
    return refusal(f"The client did not declare the {capability} capability")
