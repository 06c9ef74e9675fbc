"""The configuration reference (``docs/configuration.md``), written from the models.

Every key's type and default come from its field, and its meaning from the docstring
written under it, so the reference cannot drift from what validation accepts; a test
compares the committed page with :func:`render_reference`.
"""

from __future__ import annotations

import json
import textwrap
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from vmcp.config._checks import ENV_NESTED_DELIMITER, ENV_PREFIX
from vmcp.config.models import VmcpConfig

_UnionType = type(int | None)

_INTRO = """\
# Configuration reference

Generated from the configuration models by `vmcp config-reference` (do not edit by hand:
`vmcp config-reference --output docs/configuration.md` rewrites it; a test fails when it
is out of date).

The file is YAML; every key is optional except each backend's `name` and `url` (for a
`transport: stdio` backend, `command` instead of `url`: see docs/stdio.md).
`vmcp check-config FILE` validates a file and reports every problem with its location.
Any key can be set from the environment as `VMCP_<SECTION>__<KEY>` (segments separated by
two underscores, e.g. `VMCP_SERVER__PORT=8080`); the column "environment" gives the name
where there is one. A list item the file already has is addressed by its index
(`VMCP_BACKENDS__0__URL`), and `VMCP_<SECTION>` sets a whole section as JSON. A `VMCP_`
variable that matches no key is ignored with a warning at start-up.

In key paths, `[]` stands for any item of a list and `<name>` for any key of a mapping.
"""


@dataclass(frozen=True)
class Key:
    """One leaf of the configuration tree."""

    path: str
    type: str
    default: str
    meaning: str
    environment: str


def render_reference() -> str:
    """The whole Markdown page."""
    parts = [_INTRO]
    for section, field in VmcpConfig.model_fields.items():
        parts.append(f"\n## `{section}`\n\n{_clean(field.description)}\n")
        parts.append("\n| key | type | default | environment | meaning |\n"
                     "|---|---|---|---|---|\n")
        parts.extend(f"| `{k.path}` | {k.type} | {k.default} | {k.environment} | "
                     f"{k.meaning} |\n" for k in keys(section, field))
    return "".join(parts)


def keys(section: str, field: FieldInfo) -> Iterator[Key]:
    """The leaves under one top-level section, depth first, in declaration order."""
    yield from _walk(section, [section.upper()], field)


def _walk(path: str, env: list[str] | None, field: FieldInfo) -> Iterator[Key]:
    annotation = _plain(field.annotation)
    model = _model_of(annotation)
    if model is not None:
        origin = typing.get_origin(annotation)
        if origin is dict:
            child_path, child_env = f"{path}.<name>", None
        elif origin in (tuple, list):
            child_path, child_env = f"{path}[]", None
        else:
            child_path, child_env = path, env
        for name, child in model.model_fields.items():
            yield from _walk(f"{child_path}.{name}",
                             None if child_env is None else [*child_env, name.upper()], child)
        return
    yield Key(path, _type_name(annotation), _default(field), _clean(field.description),
              f"`{ENV_PREFIX}{ENV_NESTED_DELIMITER.join(env)}`" if env else "")


def _plain(annotation: Any) -> Any:
    """``annotation`` without ``Annotated`` wrappers and ``None`` alternatives."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, _UnionType) and len(args) == 1:
        return _plain(args[0])
    return annotation


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model a section, a list of models or a mapping to models holds."""
    origin = typing.get_origin(annotation)
    if origin in (tuple, list):
        annotation = _plain(typing.get_args(annotation)[0])
    elif origin is dict:
        annotation = _plain(typing.get_args(annotation)[1])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _type_name(annotation: Any) -> str:
    annotation = _plain(annotation)
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin in (tuple, list):
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    if origin is dict:
        key, value = typing.get_args(annotation)
        return f"mapping of {_type_name(key)} to {_type_name(value)}"
    if isinstance(annotation, _UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "`{" + ", ".join(annotation.model_fields) + "}`"
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if annotation in names:
        return names[annotation]
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "none"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, tuple):
        value = list(value)
    return "`" + json.dumps(value, ensure_ascii=False).replace("|", "\\|") + "`"


def _clean(text: str | None) -> str:
    """A docstring as one table cell: one line, pipes escaped."""
    return " ".join(textwrap.dedent(text or "").split()).replace("|", "\\|")
