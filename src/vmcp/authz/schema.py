"""The Cedar schema of the entity model, for checking policies before they are used.

Claims and arguments are open by nature (their names depend on the identity provider and
on each tool), so a policy's use of a ``claim_*`` or ``arg_*`` attribute (or a tool
annotation, which a tool may or may not declare) cannot be typed here; every other part
is: the entity types, the actions, which resource type each action applies to, and the
fixed attributes. :func:`open_attribute` tells the validator's complaints about the open
attributes apart from real mistakes.
"""

from __future__ import annotations

import re

ANNOTATIONS = ("title", "readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")

SCHEMA = """
entity THVGroup in [THVGroup];
entity Client in [THVGroup];
entity Backend;
entity Tool in [Backend] {
  name: String, backend: String, original_name: String,
  title?: String, readOnlyHint?: Bool, destructiveHint?: Bool, idempotentHint?: Bool,
  openWorldHint?: Bool,
};
entity Prompt in [Backend] { name: String, backend: String, original_name: String };
entity Resource in [Backend] {
  name: String, backend: String, original_name: String, uri: String,
};
action call_tool appliesTo { principal: [Client], resource: [Tool], context: {} };
action get_prompt appliesTo { principal: [Client], resource: [Prompt], context: {} };
action read_resource appliesTo { principal: [Client], resource: [Resource], context: {} };
"""

_OPEN = re.compile(
    r"attribute `(?P<name>[^`]+)` (?:on entity type `\w+` |in context )?(?:was )?not found"
    r"|unable to guarantee safety of access to optional attribute `(?P<optional>[^`]+)`"
    r"|record does not have the attribute `(?P<record>[^`]+)`"
    r"|attribute `(?P<context>[^`]+)` .*context")


def open_attribute(message: str) -> bool:
    """True if the validator's ``message`` is only about a claim, argument or annotation
    attribute, which the schema leaves open on purpose."""
    match = _OPEN.search(message)
    if match is None:
        return False
    name = next(value for value in match.groupdict().values() if value is not None)
    return name.startswith(("claim_", "arg_")) or name in ANNOTATIONS
