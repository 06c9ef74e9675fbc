"""The figures a run prints: requests, outcomes, faults, upstream sessions, violations."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from chaos.checker import KINDS, by_kind
from chaos.history import INITIALIZE
from chaos.run import Result

MAX_VIOLATIONS_SHOWN = 20


def _table(title: str, counts: Counter[str], keys: Iterable[str] | None = None) -> list[str]:
    names = list(keys) if keys is not None else sorted(counts, key=lambda k: (-counts[k], k))
    width = max((len(n) for n in names), default=0)
    return [f"{title}:"] + [f"  {name:<{width}}  {counts.get(name, 0):>7}" for name in names]


def render(result: Result) -> str:
    records, end = result.records, result.end
    settings = result.settings
    sessions = {r.session for r in records if r.kind == INITIALIZE and r.outcome == "ok"}
    replicas = Counter(r.replica or "-" for r in records)
    upstream: Counter[str] = Counter()
    for u in end.upstream:
        upstream[f"{u.backend} opened"] += 1
        if u.ended:
            upstream[f"{u.backend} ended"] += 1
        elif u.backend_generation < end.last_backend_generation.get(u.backend, 0):
            upstream[f"{u.backend} forgotten by a backend restart"] += 1
        elif u.opened_by in end.killed_replicas:
            upstream[f"{u.backend} orphaned by a SIGKILLed replica"] += 1
        else:
            upstream[f"{u.backend} never ended"] += 1
    lines = [
        f"chaos run: seed {settings.seed}, {settings.seconds:g} s of load, "
        f"{settings.clients} clients, {result.wall_seconds:.0f} s in all",
        f"histories: {settings.clients} clients, {len(sessions)} sessions, "
        f"{len(records)} requests",
        *_table("requests by kind", Counter(r.kind for r in records)),
        *_table("requests by outcome", Counter(r.outcome for r in records)),
        *_table("requests by replica", replicas),
        *_table("faults injected by kind", Counter(f.kind for f in result.faults)),
        *_table("upstream sessions (the backends' own logs)", upstream, sorted(upstream)),
        f"session records left in Redis: {len(end.redis_sessions)}",
        *_table("violations by kind", by_kind(result.violations), KINDS),
        f"violations: {len(result.violations)}",
    ]
    lines += [f"  {v.kind}: {v.detail}" for v in result.violations[:MAX_VIOLATIONS_SHOWN]]
    if len(result.violations) > MAX_VIOLATIONS_SHOWN:
        lines.append(f"  ... and {len(result.violations) - MAX_VIOLATIONS_SHOWN} more")
    lines.append(f"history and logs: {settings.workdir}")
    return "\n".join(lines)


__all__ = ["render"]
