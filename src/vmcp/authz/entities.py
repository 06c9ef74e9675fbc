"""The Cedar entities of a request, in ToolHive vMCP's entity model.

* principal ``Client::"<sub>"`` (``Client::"anonymous"`` without credentials), each
  verified claim an attribute ``claim_<name>``, the values of the group claims its parents
  ``THVGroup::"<group>"``;
* resource ``Tool::"<name>"``, ``Prompt::"<name>"`` or ``Resource::"<uri>"`` with
  ``name``, ``backend``, ``original_name``, a tool's annotations and a call's
  ``arg_<key>`` attributes, child of ``Backend::"<backend>"``;
* context: the ``claim_*`` and ``arg_*`` values again.

Claims and arguments come from outside, so their conversion to Cedar values is defensive:
nesting is capped, integers outside Cedar's 64-bit range and values Cedar cannot hold are
dropped, and a record key Cedar's JSON format would read as an escape (``__entity``,
``__extn``, ``__expr``) drops its record, or a caller could forge an entity reference
(``{"__entity": {"type": "THVGroup", "id": "admins"}}``) through a claim or an argument.
"""

from __future__ import annotations

import json
from collections.abc import Container, Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from vmcp.authz.decisions import ENTITY_TYPE_OF, Target
from vmcp.identity import Principal

ANONYMOUS_ID = "anonymous"
GROUP_TYPE = "THVGroup"
MAX_DEPTH = 10
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_DECIMAL_LIMIT = Decimal("922337203685477.5807")
_ESCAPES = frozenset({"__entity", "__extn", "__expr"})
_DROP = object()


def uid(entity_type: str, entity_id: str) -> dict[str, str]:
    """An entity uid in Cedar's JSON form (no escaping of the id needed)."""
    return {"type": entity_type, "id": entity_id}


def principal_id(principal: Principal) -> str:
    """The ``Client`` id: the token's ``sub``, a static token's subject, else anonymous."""
    sub = principal.claims.get("sub")
    if isinstance(sub, str) and sub:
        return sub
    if principal.subject:
        return principal.subject
    return ANONYMOUS_ID


def resolve_claim(claims: Mapping[str, Any], path: str) -> Any:
    """The claim at ``path``: a top-level key first (URL-like claim names contain dots),
    else a dot path through nested objects (``realm_access.roles``); None if absent."""
    if path in claims:
        return claims[path]
    current: Any = claims
    for segment in path.split("."):
        if not isinstance(current, Mapping) or segment not in current:
            return None
        current = current[segment]
    return current


def groups_of(claims: Mapping[str, Any], group_claims: Sequence[str]) -> list[str]:
    """The distinct group names in ``group_claims`` (lists of strings, or one string)."""
    groups: dict[str, None] = {}
    for path in group_claims:
        value = resolve_claim(claims, path)
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list | tuple):
            for group in value:
                if isinstance(group, str) and group:
                    groups[group] = None
    return list(groups)


def cedar_value(value: Any, depth: int = 0) -> Any:
    """``value`` as a Cedar JSON value, or ``_DROP`` when Cedar cannot hold it safely."""
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if _LONG_MIN <= value <= _LONG_MAX else _DROP
    if isinstance(value, float):
        return _decimal(value)
    if depth >= MAX_DEPTH:
        return _DROP
    if isinstance(value, list | tuple):
        items = [cedar_value(item, depth + 1) for item in value]
        return [item for item in items if item is not _DROP]
    if isinstance(value, Mapping):
        if any(key in _ESCAPES for key in value):
            return _DROP
        record = {str(k): cedar_value(v, depth + 1) for k, v in value.items()}
        return {k: v for k, v in record.items() if v is not _DROP}
    return _DROP


def _decimal(value: float) -> Any:
    """A whole float as a Long; otherwise Cedar's ``decimal`` (4 places), if in range."""
    if value.is_integer() and _LONG_MIN <= value <= _LONG_MAX:
        return int(value)
    try:
        number = Decimal(repr(value)).quantize(Decimal("0.0001"))
    except (InvalidOperation, ValueError):
        return _DROP
    if not number.is_finite() or abs(number) > _DECIMAL_LIMIT:
        return _DROP
    return {"__extn": {"fn": "decimal", "arg": format(number, "f")}}


def prefixed(values: Mapping[str, Any], prefix: str,
             keep: Container[str] | None = None) -> dict[str, Any]:
    """``{prefix + key: cedar value}`` for every value Cedar can hold (and, given
    ``keep``, whose prefixed name is in it: what no policy reads is not converted)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = prefix + str(key)
        if keep is not None and name not in keep:
            continue
        converted = cedar_value(value)
        if converted is not _DROP:
            out[name] = converted
    return out


def argument_attributes(arguments: Mapping[str, Any] | None,
                        keep: Container[str] | None = None) -> dict[str, Any]:
    """``arg_<key>`` for each argument; an argument Cedar cannot hold is left out."""
    return prefixed(arguments or {}, "arg_", keep)


def principal_entity(principal: Principal, claim_attributes: Mapping[str, Any],
                     group_claims: Sequence[str]) -> dict[str, Any]:
    """The ``Client`` entity of ``principal`` (claims as ``claim_*``, groups as parents)."""
    return {
        "uid": uid("Client", principal_id(principal)),
        "attrs": dict(claim_attributes),
        "parents": [uid(GROUP_TYPE, g) for g in groups_of(principal.claims, group_claims)],
    }


def target_uid(target: Target) -> dict[str, str]:
    return uid(ENTITY_TYPE_OF[target.kind], target.name)


def target_entity(target: Target, arguments: Mapping[str, Any] | None = None,
                  static: Mapping[str, Any] | None = None,
                  keep: Container[str] | None = None) -> dict[str, Any]:
    """The resource entity of ``target``. ``static`` is the same entity from the entities
    file, if any: its attributes and parents are kept, the request's win on a clash (as
    ToolHive merges them). Given ``keep``, annotations and arguments not in it are left
    out."""
    attrs: dict[str, Any] = dict(static.get("attrs") or {}) if static else {}
    attrs.update(prefixed(target.annotations, "", keep))
    attrs.update(argument_attributes(arguments, keep))
    attrs.update(name=target.name, backend=target.backend, original_name=target.original_name)
    if target.kind == "resource":
        attrs["uri"] = target.name
    parents = [uid("Backend", target.backend)]
    for parent in (static.get("parents") or []) if static else []:
        if parent not in parents:
            parents.append(parent)
    return {"uid": target_uid(target), "attrs": attrs, "parents": parents}


def dumps(entities: Iterable[Mapping[str, Any]]) -> str:
    return json.dumps(list(entities), separators=(",", ":"), ensure_ascii=False)
