"""Matching URIs against resource templates, so a read can be routed to its backend."""

from __future__ import annotations

import re

# RFC 6570 level 1: "{var}" only, var made of ALPHA / DIGIT / "_" / pct-encoded, dot-separated.
_EXPRESSION = re.compile(r"\{([^{}]*)\}")
_VARNAME = re.compile(
    r"^(?:[A-Za-z0-9_]|%[0-9A-Fa-f]{2})+(?:\.(?:[A-Za-z0-9_]|%[0-9A-Fa-f]{2})+)*$"
)
# Level-1 expansion percent-encodes everything but unreserved characters, so a value never
# holds "/", "?" or "#"; other characters are accepted unencoded for lenient clients.
_VALUE = r"[^/?#]+"


def compile_uri_template(template: str) -> re.Pattern[str] | None:
    """A pattern matching the URIs ``template`` expands to (non-empty values), or None when
    the template uses anything beyond RFC 6570 level 1 ``{var}`` expressions."""
    pieces: list[str] = []
    position = 0
    for match in _EXPRESSION.finditer(template):
        literal = template[position : match.start()]
        if "{" in literal or "}" in literal or not _VARNAME.match(match.group(1)):
            return None
        pieces += [re.escape(literal), _VALUE]
        position = match.end()
    tail = template[position:]
    if "{" in tail or "}" in tail:
        return None
    pieces.append(re.escape(tail))
    return re.compile("".join(pieces))
