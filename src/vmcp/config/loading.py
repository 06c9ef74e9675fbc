"""Reading the YAML file and the ``VMCP_*`` environment into a validated configuration."""

from __future__ import annotations

import json
import os
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)
from pydantic_core import ErrorDetails

from vmcp.config._checks import (
    _CROSS_CHECKED,
    ENV_NESTED_DELIMITER,
    ENV_PREFIX,
    Loc,
)
from vmcp.config._report import (
    _format_loc,
    _origin,
)
from vmcp.config.composite import LocatedProblems
from vmcp.config.cross_checks import cross_section_problems
from vmcp.config.models import VmcpConfig
from vmcp.errors import ConfigError

# --------------------------------------------------------------------------- loading


def load_config(path: Path | None, *, environ: Mapping[str, str] | None = None) -> VmcpConfig:
    """Read ``path`` (YAML) if given, apply ``VMCP_*`` overrides from ``environ`` (default
    ``os.environ``) and validate.

    Raises :class:`ConfigError` listing every problem found, one per line: unreadable file,
    YAML syntax error (with line and column), duplicate keys, undecodable environment values,
    unknown keys, invalid values and cross-section inconsistencies.
    """
    env = os.environ if environ is None else environ
    lines: dict[Loc, int] = {}
    problems: list[str] = []
    data: dict[Any, Any] = {}
    if path is not None:
        try:
            loaded, lines, file_problems = _read_yaml(path)
        except _FatalFileError as exc:
            raise ConfigError(str(exc)) from None
        problems += file_problems
        data = loaded
    env_sources, env_problems = _apply_env(data, env)
    return _validate(data, problems + env_problems, lines, env_sources)


def with_overrides(
    config: VmcpConfig, overrides: Mapping[str, Any], *, source: str = "overrides"
) -> VmcpConfig:
    """A copy of ``config`` with ``overrides`` (nested like the file, e.g.
    ``{"server": {"port": 5000}}``) deep-merged in and validated again.

    Raises :class:`ConfigError` like :func:`load_config`; problems with an overridden value
    end with ``(from <source>)``.
    """
    data = config.model_dump()
    _deep_merge(data, overrides)
    sources = [(loc, source) for loc in _leaf_locs(overrides, ())]
    return _validate(data, [], {}, sources)


def _leaf_locs(tree: Mapping[str, Any], prefix: Loc) -> list[Loc]:
    locs: list[Loc] = []
    for key, value in tree.items():
        if isinstance(value, Mapping):
            locs += _leaf_locs(value, (*prefix, key))
        else:
            locs.append((*prefix, key))
    return locs


def _validate(
    data: dict[Any, Any],
    problems: list[str],
    lines: Mapping[Loc, int],
    sources: Sequence[tuple[Loc, str]],
) -> VmcpConfig:
    """Validate ``data``; raise one ConfigError with ``problems`` and every new one."""
    located: list[tuple[Loc, str]] = list(cross_section_problems(data))
    config: VmcpConfig | None
    try:
        config = VmcpConfig.model_validate(data, context={_CROSS_CHECKED: True})
    except ValidationError as exc:
        located = [problem for error in exc.errors()
                   for problem in _describe_errors(error)] + located
        config = None
    for loc, message in located:
        problems.append(_format_loc(loc) + ": " + message + _origin(loc, lines, sources))
    if problems or config is None:
        raise ConfigError("\n".join(dict.fromkeys(problems)))
    return config


class _FatalFileError(Exception):
    """The file cannot be turned into a mapping at all; nothing else is worth checking."""


class _LineLoader(yaml.SafeLoader):
    """The safe loader; a class of its own so nothing registered on it leaks elsewhere."""


def _read_yaml(path: Path) -> tuple[dict[Any, Any], dict[Loc, int], list[str]]:
    """Parse ``path`` into (data, line of every key and list item, duplicate-key problems)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise _FatalFileError(f"{path}: cannot read the configuration file: {reason}") from None
    loader = _LineLoader(text)
    lines: dict[Loc, int] = {}
    problems: list[str] = []
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, lines, problems
        _index_nodes(node, (), lines, problems, set())
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}: line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        detail = " ".join(part for part in (exc.problem, exc.context) if part)
        detail = detail or str(exc).replace("\n", " ")
        raise _FatalFileError(f"{where}: YAML syntax error: {detail}") from None
    except yaml.YAMLError as exc:
        raise _FatalFileError(f"{path}: YAML error: {exc}".replace("\n", " ")) from None
    finally:
        loader.dispose()
    if data is None:
        return {}, lines, problems
    if not isinstance(data, dict):
        raise _FatalFileError(
            f"{path}: the top level must be a mapping of sections "
            f"({', '.join(VmcpConfig.model_fields)}), not {type(data).__name__}"
        )
    return data, lines, problems


def _index_nodes(
    node: yaml.Node, loc: Loc, lines: dict[Loc, int], problems: list[str], active: set[int]
) -> None:
    if id(node) in active:  # a recursive alias
        return
    active.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            child = (*loc, key)
            if key in first_line:
                problems.append(
                    f"{_format_loc(child)}: duplicate key (first at line {first_line[key]})"
                    f" (line {line})"
                )
            else:
                first_line[key] = line
                lines.setdefault(child, line)
            _index_nodes(value_node, child, lines, problems, active)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*loc, index)
            lines.setdefault(child, item.start_mark.line + 1)
            _index_nodes(item, child, lines, problems, active)
    active.discard(id(node))


def unmatched_env_warnings(environ: Mapping[str, str] | None = None) -> list[str]:
    """``VMCP_`` variables that look meant as overrides but are ignored.

    A name without ``__`` is not configuration (so unrelated variables never break
    start-up), but ``VMCP_SERVER_PORT`` - one underscore - was surely meant as
    ``VMCP_SERVER__PORT``: say so rather than ignore it silently.
    """
    env = os.environ if environ is None else environ
    warnings: list[str] = []
    for var in sorted(env):
        rest = var[len(ENV_PREFIX):]
        if not var.upper().startswith(ENV_PREFIX) or ENV_NESTED_DELIMITER in rest:
            continue
        for section in VmcpConfig.model_fields:
            if rest.lower().startswith(section + "_"):
                key = rest[len(section) + 1:].lower()
                warnings.append(
                    f"{var} is ignored: overrides are named {ENV_PREFIX}<SECTION>"
                    f"{ENV_NESTED_DELIMITER}<KEY>, e.g. {ENV_PREFIX}{section.upper()}"
                    f"{ENV_NESTED_DELIMITER}{key.upper()} for {section}.{key}")
                break
    return warnings


def _apply_env(
    data: dict[Any, Any], environ: Mapping[str, str]
) -> tuple[list[tuple[Loc, str]], list[str]]:
    """Merge ``VMCP_*`` overrides into ``data`` in place.

    Returns (location set by each variable, problems). Whole-section variables are applied
    before keyed ones, so ``VMCP_SERVER__PORT`` wins over a ``port`` inside ``VMCP_SERVER``.
    """
    wanted: list[tuple[int, str, list[str]]] = []
    problems: list[str] = []
    for var in environ:
        if not var.upper().startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX) :]
        if ENV_NESTED_DELIMITER not in rest:
            if rest.lower() in VmcpConfig.model_fields:
                wanted.append((1, var, [rest.lower()]))
            continue
        parts = rest.split(ENV_NESTED_DELIMITER)
        if not all(parts):
            problems.append(f"{var}: empty segment between '{ENV_NESTED_DELIMITER}' separators")
            continue
        wanted.append((len(parts), var, [part.lower() for part in parts]))
    sources: list[tuple[Loc, str]] = []
    for _, var, parts in sorted(wanted):
        loc, problem = _merge_env_value(data, parts, environ[var], var)
        if problem is not None:
            problems.append(problem)
        else:
            sources.append((loc, var))
    return sources, problems


def _merge_env_value(
    data: dict[Any, Any], parts: list[str], raw: str, var: str
) -> tuple[Loc, str | None]:
    annotation = _annotation_at(VmcpConfig, parts)
    try:
        value = _decode_env_value(raw, annotation)
    except ValueError as exc:
        return (), f"{var}: {exc}"
    node: Any = data
    loc: list[str | int] = []
    for depth, part in enumerate(parts):
        key: str | int
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return (), (
                    f"{var}: {_format_loc(tuple(loc))} has no item {part} in the file "
                    "(list items can only be overridden, not added)"
                )
            key = int(part)
        elif isinstance(node, dict):
            key = part
        else:
            return (), f"{var}: cannot set a key inside {_format_loc(tuple(loc))}, not a mapping"
        loc.append(key)
        if depth == len(parts) - 1:
            current = node[key] if isinstance(key, int) else node.get(key)
            if isinstance(current, dict) and isinstance(value, dict):
                _deep_merge(current, value)
            else:
                node[key] = value
            break
        if isinstance(node, dict) and node.get(key) is None:
            if _is_sequence(_annotation_at(VmcpConfig, parts[: depth + 1])):
                return (), (
                    f"{var}: the file has no {_format_loc(tuple(loc))} to override an item of"
                )
            node[key] = {}
        node = node[key]
    return tuple(loc), None


def _deep_merge(target: dict[Any, Any], update: Mapping[Any, Any]) -> None:
    for key, value in update.items():
        if isinstance(target.get(key), dict) and isinstance(value, Mapping):
            _deep_merge(target[key], value)
        else:
            target[key] = value


_UnionType = type(int | None)


def _unwrap_optional(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, _UnionType) and len(args) == 1:
        return args[0]
    return annotation


def _annotation_at(model: type[BaseModel], parts: Sequence[str]) -> Any:
    """The declared type at ``parts`` below ``model``, or None where the path is unknown."""
    annotation: Any = model
    for part in parts:
        annotation = _unwrap_optional(annotation)
        origin = typing.get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part)
            if field is None:
                return None
            annotation = field.annotation
        elif origin is dict:
            annotation = typing.get_args(annotation)[1]
        elif origin in (tuple, list) and part.isdigit():
            annotation = typing.get_args(annotation)[0]
        else:
            return None
    return _unwrap_optional(annotation)


def _is_sequence(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (tuple, list)


def _decode_env_value(raw: str, annotation: Any) -> Any:
    """Turn a variable's text into what validation expects at its location."""
    origin = typing.get_origin(annotation)
    is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
    if not (is_model or origin is dict or _is_sequence(annotation)):
        return raw
    if _is_sequence(annotation) and not raw.lstrip().startswith("["):
        item = _unwrap_optional(typing.get_args(annotation)[0])
        if typing.get_origin(item) is Annotated:
            item = typing.get_args(item)[0]
        if item is str:
            return [piece.strip() for piece in raw.split(",") if piece.strip()]
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        kind = "a JSON list" if _is_sequence(annotation) else "a JSON object"
        raise ValueError(f"expected {kind}: {exc}") from None


def _describe_errors(error: ErrorDetails) -> list[tuple[Loc, str]]:
    """A pydantic error as located problems: one, or each of a workflow's."""
    cause = error.get("ctx", {}).get("error") if error["type"] == "value_error" else None
    if isinstance(cause, LocatedProblems):
        loc: Loc = tuple(part for part in error["loc"] if part != "[key]")
        return [((*loc, *where), message) for where, message in cause.problems]
    return [_describe_error(error)]


def _describe_error(error: ErrorDetails) -> tuple[Loc, str]:
    """A pydantic error as (location, message), worded for someone editing the file."""
    loc: Loc = tuple(part for part in error["loc"] if part != "[key]")
    kind = error["type"]
    if kind == "value_error" and "ctx" in error:
        return loc, str(error["ctx"]["error"])
    if kind == "extra_forbidden":
        parent = _annotation_at(VmcpConfig, [str(p) for p in loc[:-1]])
        if isinstance(parent, type) and issubclass(parent, BaseModel):
            return loc, f"unknown key (expected one of: {', '.join(parent.model_fields)})"
        return loc, "unknown key"
    if kind == "missing":
        return loc, "required but missing"
    return loc, error["msg"].replace("a valid tuple", "a list")
