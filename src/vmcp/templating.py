"""Templates in composite tools' arguments, conditions and outputs: one sandboxed engine.

Values are Jinja2 templates rendered in a :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment`
(no attribute access to internals, no mutation of the data a workflow hands in), with
undefined names as errors rather than empty strings, so a typo fails the step that has it
instead of sending an empty argument to a backend.

A string that is exactly one expression (``"{{ steps.fetch.output.links }}"``) keeps the
expression's type: a list stays a list, a number a number. Any other string renders to
text. Mappings and lists are rendered item by item.

:func:`references` reads what a template refers to without rendering it, so a
configuration can be checked before any workflow runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from jinja2 import StrictUndefined, TemplateError, Undefined, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["Reference", "TemplateError", "is_template", "references", "render", "render_text"]

_ENV: Final = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False,
                                            keep_trailing_newline=True)
_SINGLE: Final = re.compile(r"^\s*\{\{(?P<expr>.*)\}\}\s*$", re.DOTALL)
_MARKERS: Final = ("{{", "{%", "{#")


def is_template(value: str) -> bool:
    """Whether ``value`` holds template syntax at all (plain strings pass as they are)."""
    return any(marker in value for marker in _MARKERS)


def _single_expression(value: str) -> str | None:
    match = _SINGLE.match(value)
    if match is None:
        return None
    expr = match.group("expr")
    return None if any(marker in expr for marker in ("{{", "}}", "{%", "{#")) else expr


def render_text(value: str, context: Mapping[str, Any]) -> Any:
    """One string rendered: the expression's own value when it is a single expression,
    else the rendered text. Raises ``TemplateError`` (syntax, undefined name, sandbox)."""
    if not is_template(value):
        return value
    expr = _single_expression(value)
    if expr is not None:
        result = _compiled_expression(expr)(**context)
        if isinstance(result, Undefined):
            result._fail_with_undefined_error()
        return result
    return _compiled_template(value).render(**context)


def render(value: Any, context: Mapping[str, Any]) -> Any:
    """``value`` with every string in it rendered (mappings and lists item by item)."""
    if isinstance(value, str):
        return render_text(value, context)
    if isinstance(value, Mapping):
        return {key: render(item, context) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [render(item, context) for item in value]
    return value


_EXPRESSIONS: dict[str, Any] = {}
_TEMPLATES: dict[str, Any] = {}
_CACHE_LIMIT: Final = 4096


def _compiled_expression(expr: str) -> Any:
    compiled = _EXPRESSIONS.get(expr)
    if compiled is None:
        compiled = _ENV.compile_expression(expr, undefined_to_none=False)
        if len(_EXPRESSIONS) < _CACHE_LIMIT:
            _EXPRESSIONS[expr] = compiled
    return compiled


def _compiled_template(source: str) -> Any:
    compiled = _TEMPLATES.get(source)
    if compiled is None:
        compiled = _ENV.from_string(source)
        if len(_TEMPLATES) < _CACHE_LIMIT:
            _TEMPLATES[source] = compiled
    return compiled


@dataclass(frozen=True)
class Reference:
    """A name a template reads, with the attribute path after it as far as it is static
    (``steps.fetch.output`` → ``Reference("steps", ("fetch", "output"))``)."""

    name: str
    path: tuple[str, ...]


def references(value: str) -> list[Reference]:
    """What the template ``value`` reads from its context, without rendering it.
    Raises ``TemplateError`` for a syntax error."""
    if not is_template(value):
        return []
    expr = _single_expression(value)
    if expr is not None:
        tree: nodes.Node = _ENV.parse("{{" + expr + "}}")
    else:
        tree = _ENV.parse(value)
    local = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    found: list[Reference] = []
    for node in _outermost_lookups(tree):
        path: list[str] = []
        while isinstance(node, nodes.Getattr | nodes.Getitem):
            key = node.attr if isinstance(node, nodes.Getattr) else (
                node.arg.value if isinstance(node.arg, nodes.Const)
                and isinstance(node.arg.value, str) else None)
            path = [key, *path] if key is not None else []
            node = node.node
        if isinstance(node, nodes.Name) and node.ctx == "load" and node.name not in local:
            found.append(Reference(node.name, tuple(path)))
    return found


def _outermost_lookups(tree: nodes.Node) -> Iterator[nodes.Node]:
    """Every name load, reached through the longest attribute chain around it."""
    inner: set[int] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        inner.add(id(node.node))  # type: ignore[attr-defined]
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Name)):
        if id(node) not in inner:
            yield node
