"""Turning validation errors into located, one-line problems."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

from vmcp.config._checks import (
    Loc,
)

# --------------------------------------------------------------------------- reporting

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def _format_loc(loc: Sequence[str | int]) -> str:
    """``("backends", 1, "url")`` -> ``backends[1].url``; odd keys are quoted in brackets."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            text += ("." if text else "") + part
        else:
            text += f"[{json.dumps(part)}]"
    return text or "(top level)"


def _origin(loc: Loc, lines: Mapping[Loc, int], env_sources: Sequence[tuple[Loc, str]]) -> str:
    """Where the value at ``loc`` came from: the variable that set it, else its file line."""
    best: tuple[int, str] | None = None
    for source_loc, var in env_sources:
        if loc[: len(source_loc)] == source_loc and (best is None or len(source_loc) > best[0]):
            best = (len(source_loc), var)
    if best is not None:
        return f" (from {best[1]})"
    for end in range(len(loc), 0, -1):
        line = lines.get(loc[:end])
        if line is not None:
            return f" (line {line})"
    return ""
