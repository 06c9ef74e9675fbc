"""Rendered arguments made to fit the target tool's ``inputSchema``.

Templates render to text unless a value is one expression, so ``"{{ params.days }}"``
is already an integer while ``"{{ params.days }} "`` is a string. Where the target
tool's schema wants another JSON type than the value has, the obvious conversion is made
(``"3"`` → 3 for an integer, 3 → ``"3"`` for a string, a JSON text → the object or array
it spells); anything else is left for the tool to refuse with its own message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["coerce_arguments", "coerce_value"]


def coerce_arguments(arguments: Mapping[str, Any], schema: Mapping[str, Any] | None
                     ) -> dict[str, Any]:
    """``arguments`` with each property converted to the type ``schema`` gives it."""
    properties = schema.get("properties") if isinstance(schema, Mapping) else None
    if not isinstance(properties, Mapping):
        return dict(arguments)
    return {key: coerce_value(value, properties.get(key)) for key, value in arguments.items()}


def coerce_value(value: Any, schema: Any) -> Any:
    """``value`` as the first JSON type ``schema`` allows that it converts to."""
    types = _types(schema)
    if not types or any(_is(value, kind) for kind in types):
        return value
    for kind in types:
        converted = _convert(value, kind)
        if converted is not _NO:
            return converted
    return value


_NO: Any = object()


def _types(schema: Any) -> list[str]:
    if not isinstance(schema, Mapping):
        return []
    kind = schema.get("type")
    if isinstance(kind, str):
        return [kind]
    if isinstance(kind, list):
        return [k for k in kind if isinstance(k, str)]
    found: list[str] = []
    for key in ("anyOf", "oneOf"):
        for option in schema.get(key) or ():
            found += _types(option)
    return found


def _is(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    checks: dict[str, type | tuple[type, ...]] = {
        "string": str, "boolean": bool, "object": dict, "array": list, "null": type(None)}
    expected = checks.get(kind)
    return expected is None or isinstance(value, expected)


def _convert(value: Any, kind: str) -> Any:
    if kind == "string":
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return str(value)
        if isinstance(value, dict | list):
            return json.dumps(value)
        return _NO
    if kind in ("integer", "number") and isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return _NO
        if kind == "integer":
            return int(number) if number.is_integer() else _NO
        return int(number) if number.is_integer() and "." not in value else number
    if kind == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind == "boolean" and isinstance(value, str):
        lowered = value.strip().lower()
        return {"true": True, "false": False}.get(lowered, _NO)
    if kind in ("object", "array") and isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return _NO
        return parsed if _is(parsed, kind) else _NO
    if kind == "null" and value == "":
        return None
    return _NO
