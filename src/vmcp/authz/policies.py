"""Reading a policy set from its files: parsed, checked against the schema, hashed.

A :class:`PolicyBundle` is immutable; a reload builds a new one and swaps it in whole, so a
request sees either the old set or the new one, never a mix. Problems are reported as
``FILE:LINE: message``: Cedar's own parser reports no positions, so the file is split
into its statements here (outside strings and comments, at each ``;``), and each
statement's first line is where its problems are reported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cedarpy

from vmcp.authz.schema import SCHEMA, open_attribute
from vmcp.config import AuthzConfig
from vmcp.errors import ConfigError

# Entity types a request builds itself; the same entity in the entities file is merged
# into the request's (its attributes and parents kept) instead of clashing with it.
REQUEST_TYPES = frozenset({"Client", "Tool", "Prompt", "Resource"})


@dataclass(frozen=True)
class Statement:
    """One policy as written: its text and the line it starts on."""

    text: str
    line: int


@dataclass(frozen=True)
class PolicySubset:
    """Some of a set's policies, parsed on their own, with their labels in the whole set."""

    policies: cedarpy.PolicySet
    labels: Mapping[str, str]


@dataclass(frozen=True)
class PolicyBundle:
    """A loaded policy set and what goes with it."""

    policies: cedarpy.PolicySet
    labels: Mapping[str, str]
    """Cedar's positional id (``policyN``) -> the id shown in logs and audit events."""
    fixed: PolicySubset | None
    """The policies that read no argument: for one caller and target, their verdict is
    the same on every call."""
    per_call: PolicySubset | None
    """The policies that may read an argument: evaluated on each call."""
    static_entities: cedarpy.Entities
    """The entities file, without the request-built types (see ``merge``)."""
    merge: Mapping[tuple[str, str], Mapping[str, Any]]
    """Entities of request-built types from the entities file, by (type, id)."""
    sha256: str
    loaded_at: float
    files: tuple[str, ...]
    group_claims: tuple[str, ...] = field(default=())
    referenced: frozenset[str] | None = None
    """Every attribute name the policies read (``.name``, ``has name``), or None when that
    cannot be known (the whole context used as a value). Claims, arguments and
    annotations no policy reads cannot change a decision, so they are left out of the
    entities: a call costs the attributes the policies use, not the size of the token."""
    arguments_on_resource: bool = True
    """Whether a policy may read an argument other than as ``context.arg_*``; if not, the
    resource entity of a call does not depend on its arguments."""

    @property
    def count(self) -> int:
        return len(self.labels)


def load_bundle(config: AuthzConfig) -> PolicyBundle:
    """Read, parse and check the files ``config`` names.

    Raises ``ConfigError`` listing every problem (``FILE:LINE: message``).
    """
    policy_path = Path(config.policies_file)
    text = _read(policy_path)
    entities_text = _read(Path(config.entities_file)) if config.entities_file else "[]"
    statements = split_statements(text)
    problems: list[str] = []
    parsed: list[Statement] = []
    for statement in statements:
        message = _parse_problem(statement.text)
        if message is None:
            parsed.append(statement)
        else:
            problems.append(f"{policy_path}:{statement.line}: {message}")
    if not statements:
        problems.append(f"{policy_path}: no policies: every request would be denied")
    # The schema check covers every statement that parses, so one run shows everything.
    problems += _schema_problems(parsed, policy_path)
    problems.sort(key=_line_of)
    policies = cedarpy.PolicySet.from_str(text) if not problems else None
    static, merge, entity_problems = _entities(entities_text, config.entities_file)
    problems += entity_problems
    if problems or policies is None or static is None:
        raise ConfigError("\n".join(problems))
    digest = hashlib.sha256()
    for part in (text, entities_text, json.dumps(list(config.group_claims))):
        digest.update(hashlib.sha256(part.encode()).digest())
    files = (str(policy_path),) + ((config.entities_file,) if config.entities_file else ())
    referenced, _ = referenced_attributes(text)
    labels = _labels(text)
    fixed: list[int] = []
    per_call: list[int] = []
    on_resource = False
    for index, statement in enumerate(statements):
        names, reads_on_resource = referenced_attributes(statement.text)
        if names is not None and not any(n.startswith("arg_") for n in names):
            fixed.append(index)
        else:
            per_call.append(index)
            on_resource = on_resource or reads_on_resource
    return PolicyBundle(policies, labels, _subset(statements, fixed, labels),
                        _subset(statements, per_call, labels), static, merge,
                        digest.hexdigest(), time.time(), files, config.group_claims,
                        referenced, on_resource)


def _subset(statements: list[Statement], indexes: list[int], labels: Mapping[str, str]
            ) -> PolicySubset | None:
    if not indexes:
        return None
    policies = cedarpy.PolicySet.from_str("\n".join(statements[i].text for i in indexes))
    return PolicySubset(policies, {f"policy{position}": labels[f"policy{index}"]
                                   for position, index in enumerate(indexes)})


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{path}: cannot read: {reason}") from None


def split_statements(text: str) -> list[Statement]:
    """The policies of ``text`` in order, each with the line its text starts on.

    Strings (with backslash escapes) and ``//`` comments are skipped over, so a ``;``
    inside them does not end a statement. Trailing text without a ``;`` is a statement
    too (and fails to parse, as it should).
    """
    statements: list[Statement] = []
    start: int | None = None
    line = start_line = 1
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if c == "\n":
            line += 1
        elif not c.isspace() and start is None:
            start, start_line = i, line
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\n":
                    line += 1
                i += 2 if text[i] == "\\" else 1
        elif c == ";" and start is not None:
            statements.append(Statement(text[start:i + 1], start_line))
            start = None
        i += 1
    if start is not None:
        statements.append(Statement(text[start:], start_line))
    return statements


def _parse_problem(statement: str) -> str | None:
    try:
        parsed = cedarpy.PolicySet.from_str(statement)
    except ValueError as exc:
        return f"syntax: {' '.join(str(exc).split())}"
    if len(parsed) != 1:
        return "expected exactly one policy ending in ';'"
    return None


def _line_of(problem: str) -> int:
    parts = problem.split(":", 2)
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else 0


def _schema_problems(statements: list[Statement], path: Path) -> list[str]:
    if not statements:
        return []
    result = cedarpy.validate_policies("\n".join(s.text for s in statements), SCHEMA)
    problems = []
    for error in result.errors:
        if open_attribute(error.error):
            continue
        index = _position(error.policy_id)
        line = statements[index].line if index is not None and index < len(statements) else 0
        message = error.error.split(", ", 1)[-1] if error.error.startswith("for policy") \
            else error.error
        problems.append(f"{path}:{line}: {message}")
    return list(dict.fromkeys(problems))


def _position(policy_id: str) -> int | None:
    digits = policy_id.removeprefix("policy")
    return int(digits) if digits.isdigit() else None


def _labels(text: str) -> dict[str, str]:
    """``policyN`` -> the policy's ``@id`` annotation if it has one, else ``policyN``."""
    pst = cedarpy.policies_to_pst(text)
    labels = {}
    for policy_id, policy in pst.static_policies.items():
        annotated = (policy.annotations or {}).get("id")
        labels[policy_id] = annotated if annotated else policy_id
    return labels


def referenced_attributes(text: str) -> tuple[frozenset[str] | None, bool]:
    """The attribute names ``text``'s policies read (None if a policy uses the context
    record as a whole, then every attribute may matter, or the text cannot be walked),
    and whether an ``arg_*`` attribute is read other than directly from ``context``."""
    try:
        tree = cedarpy.policies_to_pst(text)
    except ValueError:
        return None, True
    names: set[str] = set()
    whole_context = False
    on_resource = False

    def walk(node: Any, under_access: bool = False) -> None:
        nonlocal whole_context, on_resource
        if isinstance(node, list | tuple):
            for item in node:
                walk(item)
            return
        if isinstance(node, dict):
            for item in node.values():
                walk(item)
            return
        if not dataclasses.is_dataclass(node):
            return
        attr = getattr(node, "attr", None)
        attrs = getattr(node, "attrs", None)
        read = [attr] if isinstance(attr, str) else []
        read += [a for a in attrs if isinstance(a, str)] if isinstance(attrs, tuple) else []
        names.update(read)
        base = getattr(node, "base", None)
        from_context = type(base).__name__ == "Var" and getattr(base, "name", None) == "context"
        if any(a.startswith("arg_") for a in read) and not from_context:
            on_resource = True
        if type(node).__name__ == "Var" and getattr(node, "name", None) == "context" \
                and not under_access:
            whole_context = True
        access = isinstance(attr, str) or isinstance(attrs, tuple)
        for item in dataclasses.fields(node):
            child = getattr(node, item.name)
            walk(child, under_access=access and item.name == "base")

    walk(tree)
    return (None if whole_context else frozenset(names)), on_resource


def _entities(text: str, source: str | None
              ) -> tuple[cedarpy.Entities | None, dict[tuple[str, str], dict[str, Any]],
                         list[str]]:
    where = source or "entities"
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, {}, [f"{where}:{exc.lineno}: not JSON: {exc.msg}"]
    if not isinstance(loaded, list):
        return None, {}, [f"{where}: must be a JSON list of Cedar entities"]
    base: list[Any] = []
    merge: dict[tuple[str, str], dict[str, Any]] = {}
    for entity in loaded:
        key = _uid_key(entity.get("uid") if isinstance(entity, dict) else None)
        if key is not None and key[0] in REQUEST_TYPES:
            merge[key] = {"attrs": entity.get("attrs") or {},
                          "parents": [_normal_uid(p) for p in entity.get("parents") or []]}
        else:
            base.append(entity)
    try:
        static = cedarpy.Entities.from_json_str(json.dumps(base))
        if merge:
            cedarpy.Entities.from_json_str(json.dumps(
                [{"uid": {"type": t, "id": i}, **m} for (t, i), m in merge.items()]))
    except ValueError as exc:
        return None, {}, [f"{where}: invalid Cedar entities: {' '.join(str(exc).split())}"]
    return static, merge, []


def _uid_key(value: Any) -> tuple[str, str] | None:
    normal = _normal_uid(value)
    if isinstance(normal, dict) and isinstance(normal.get("type"), str) \
            and isinstance(normal.get("id"), str):
        return normal["type"], normal["id"]
    return None


def _normal_uid(value: Any) -> Any:
    """A uid in Cedar's ``{"type", "id"}`` form, from that, ``{"__entity": ...}`` or
    ``Type::"id"``; anything else as given (Cedar reports it)."""
    if isinstance(value, dict) and isinstance(value.get("__entity"), dict):
        return value["__entity"]
    if isinstance(value, str) and "::" in value:
        entity_type, _, entity_id = value.rpartition("::")
        if entity_id.startswith('"') and entity_id.endswith('"') and len(entity_id) > 1:
            entity_id = json.loads(entity_id)
        return {"type": entity_type, "id": entity_id}
    return value
