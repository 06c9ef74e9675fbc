"""The deployment-wide sections of ``/ui``, from the ``/status`` document that
:mod:`vmcp.server.overview` builds: the replicas, charts of their last minutes (inline
SVG), sessions per identity and the catalog. Everything shown is escaped: records come
from other replicas through the store."""

from __future__ import annotations

import html
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from vmcp.server.charts import Series, line_chart


def render_sections(status: Mapping[str, Any]) -> str:
    """The deployment-wide sections of ``/ui``: replicas, charts, sessions per identity,
    the catalog. Empty when the view is not running yet."""
    if "replicas" not in status:
        return ""
    return "".join([_replicas_section(status), _charts_section(status),
                    _identities_section(status.get("identities") or {}),
                    _catalog_section(status.get("catalog") or {})])


def _up(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in status.get("replicas") or [] if r["state"] == "up"]


def _replicas_section(status: Mapping[str, Any]) -> str:
    e = html.escape
    if status.get("replicas") is None:
        return (f'<h2>Replicas</h2><p class="problem">the store cannot list the replicas: '
                f'{e(str(status.get("replicas_error")))}</p>')
    rows = []
    step = float(status.get("heartbeat_seconds") or 5)
    for r in status["replicas"]:
        up = r["state"] == "up"
        backends = ", ".join(f"{e(name)} {e(str(health))}"
                             for name, health in (r.get("backends") or {}).items())
        chart = line_chart(f"replica-{r['replica_id']}", "requests/s, errors/s", [
            Series("requests", _rates(r, lambda s: s["requests"])),
            Series("errors", _rates(r, lambda s: sum(s["errors"].values())))],
            unit="/s", width=260, height=90) if up else ""
        started = (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["started"]))
                   if up and _number(r.get("started")) else "")
        rows.append(
            f'<tr data-replica="{e(r["replica_id"])}" data-state="{e(r["state"])}" '
            f'class="replica {e(r["state"])}"><td>{e(r["replica_id"])}'
            f'{" (this page)" if r.get("this") else ""}</td>'
            f'<td class="state">{e(r["state"])}</td>'
            f'<td>{r["seconds_since_beat"]:.0f} s ago</td>'
            f'<td>{e(str(r.get("version", "")))}</td><td>{e(started)}</td>'
            f'<td>{e(str(r.get("live_sessions", ""))) if up else ""}</td>'
            f'<td>{_fmt(r.get("requests_per_second")) if up else ""}</td>'
            f'<td>{_fmt(r.get("errors_per_second")) if up else ""}</td>'
            f'<td>{backends if up else ""}</td><td>{chart}</td></tr>')
    ups = len(_up(status))
    gone = len(status["replicas"]) - ups
    return (f'<h2>Replicas</h2><p id="replica-count">{ups} up, {gone} gone '
            f'(heartbeat every {step:g} s; gone after {status.get("expiry_seconds", 0):g} s '
            'without one)</p>'
            '<table id="replicas"><thead><tr><th>replica</th><th>state</th><th>last beat</th>'
            '<th>version</th><th>started (UTC)</th><th>live sessions</th><th>requests/s</th>'
            '<th>errors/s</th><th>backends</th><th>last minutes</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _rates(replica: Mapping[str, Any], value: Callable[[Mapping[str, Any]], float]
           ) -> list[tuple[float, float | None]]:
    return [(s["t"], value(s) / s["seconds"]) for s in replica.get("samples") or []]


def _charts_section(status: Mapping[str, Any]) -> str:
    """Charts of every up replica: each replica's requests, and the sums (the worst
    replica for latency, since quantiles do not add up)."""
    replicas = _up(status)
    step = float(status.get("heartbeat_seconds") or 5)
    requests = [Series(r["replica_id"], _rates(r, lambda s: s["requests"])) for r in replicas]
    if len(replicas) > 1:
        requests.append(Series("all", _summed(replicas, step, lambda s: {
            "all": s["requests"] / s["seconds"]})["all"]))
    latency = [Series(f"{q} (worst replica)", _worst(replicas, step, q))
               for q in ("p50", "p99")]
    errors = _summed(replicas, step, lambda s: {
        "all": sum(s["errors"].values()) / s["seconds"],
        **{k: n / s["seconds"] for k, n in s["errors"].items()}})
    configured = sorted({b for r in replicas for b in r.get("backends") or {}})
    calls = _summed(replicas, step, lambda s: {b: f[0] / s["seconds"]
                                               for b, f in s["backends"].items()}, configured)
    failures = _summed(replicas, step, lambda s: {b: f[1] / s["seconds"]
                                                  for b, f in s["backends"].items()}, configured)
    charts = [
        line_chart("requests", "requests/s", requests, unit="/s"),
        line_chart("latency", "latency (ms)", latency, unit=" ms"),
        line_chart("errors", "errors/s by kind", _series(errors), unit="/s"),
        line_chart("backend-calls", "backend calls/s", _series(calls), unit="/s"),
        line_chart("backend-errors", "backend errors/s", _series(failures), unit="/s"),
    ]
    return f'<h2>Last minutes, all replicas</h2><div id="charts">{"".join(charts)}</div>'


def _series(by_name: Mapping[str, list[tuple[float, float | None]]]) -> list[Series]:
    return [Series(name, points) for name, points in by_name.items()]


def _bucket(t: float, step: float) -> float:
    return round(t / step) * step


def _summed(replicas: Iterable[Mapping[str, Any]], step: float,
            values: Callable[[Mapping[str, Any]], Mapping[str, float]],
            names: Iterable[str] = ()) -> dict[str, list[tuple[float, float | None]]]:
    """Per name (``names`` and any found), the sum over replicas of each time bucket's
    values; a name missing from a sampled bucket counts 0 there."""
    buckets: dict[float, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    known = dict.fromkeys(names)
    for replica in replicas:
        for sample in replica.get("samples") or []:
            bucket = buckets[_bucket(sample["t"], step)]
            for name, value in values(sample).items():
                known.setdefault(name)
                bucket[name] += value
    return {name: [(t, buckets[t].get(name, 0.0)) for t in sorted(buckets)]
            for name in sorted(known, key=lambda n: (n != "all", n))}


def _worst(replicas: Iterable[Mapping[str, Any]], step: float,
           quantile: str) -> list[tuple[float, float | None]]:
    worst: dict[float, float | None] = {}
    for replica in replicas:
        for sample in replica.get("samples") or []:
            t = _bucket(sample["t"], step)
            value = sample.get(quantile)
            known = worst.get(t)
            if value is not None:
                worst[t] = max(known or 0.0, value * 1000)
            else:
                worst.setdefault(t, None)
    return sorted(worst.items())


def _identities_section(identities: Mapping[str, Any]) -> str:
    e = html.escape
    if "error" in identities:
        return (f'<h2>Sessions per identity</h2><p class="problem">the store cannot count '
                f'them: {e(str(identities["error"]))}</p>')
    rows = "".join(f'<tr data-identity="{e(i["identity"])}"><td>{e(i["identity"])}</td>'
                   f'<td>{i["sessions"]}</td></tr>' for i in identities.get("sessions", []))
    scanned = identities.get("scanned", 0)
    note = ("" if identities.get("complete", True)
            else f" (counted over the first {scanned} stored sessions only)")
    return ('<h2>Sessions per identity</h2>'
            f'<p>stored sessions, all replicas{e(note)}; identities shown by issuer and a '
            'hash</p><table id="identities"><thead><tr><th>identity</th><th>sessions</th>'
            f'</tr></thead><tbody>{rows or "<tr><td colspan=2>none</td></tr>"}</tbody></table>')


def _catalog_section(catalog: Mapping[str, Any]) -> str:
    e = html.escape
    parts = ['<h2>Catalog</h2><p>what each backend offers and what clients see, as this '
             'replica last listed it</p>']
    backends: Mapping[str, list[Mapping[str, Any]]] = catalog.get("backends") or {}
    for backend, items in backends.items():
        counts: dict[str, int] = defaultdict(int)
        for item in items:
            counts[item["outcome"]] += 1
        summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
        rows = "".join(
            f'<tr class="{e(i["outcome"])}" data-outcome="{e(i["outcome"])}">'
            f'<td>{e(i["kind"])}</td><td>{e(i["name"])}</td><td>{e(i["exposed"] or "")}</td>'
            f'<td>{e(i["outcome"])}</td><td>{e(i["note"])}</td></tr>' for i in items)
        parts.append(
            f'<details open data-catalog="{e(backend)}"><summary>{e(backend)}: '
            f'{e(summary or "nothing listed")}</summary><table class="catalog"><thead><tr>'
            '<th>kind</th><th>backend name</th><th>advertised as</th><th>outcome</th>'
            f'<th>why</th></tr></thead><tbody>{rows}</tbody></table></details>')
    if not backends:
        parts.append("<p>no backend listed yet on this replica</p>")
    warnings = catalog.get("warnings") or []
    if warnings:
        parts.append('<ul id="catalog-warnings">' + "".join(
            f"<li>{e(w)}</li>" for w in warnings) + "</ul>")
    return "".join(parts)


def _fmt(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else ""


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
