"""Small line charts as inline SVG: drawn on the server, no script, no external asset.

A chart is a few polylines over a shared time axis, the y axis from 0 to a rounded-up
maximum, and a legend. A series may have holes (``None``): the line breaks there rather
than drawing a zero that was never measured.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

PALETTE = ("#2b6cb0", "#c05621", "#2f855a", "#b83280", "#6b46c1", "#c53030", "#2c7a7b",
           "#975a16")

WIDTH, HEIGHT = 380, 150
_LEFT, _RIGHT, _TOP, _BOTTOM = 44, 8, 22, 20


@dataclass(frozen=True)
class Series:
    """One line: ``points`` are (x, y or None), x in seconds (wall-clock)."""

    name: str
    points: Sequence[tuple[float, float | None]]


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times 10^n that is >= ``value`` (1 for nothing)."""
    if not value > 0 or math.isinf(value):
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        candidate = step * 10.0 ** exponent
        if candidate >= value * (1 - 1e-12):
            return candidate
    return 10.0 ** (exponent + 1)


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def line_chart(chart_id: str, title: str, series: Sequence[Series], *, unit: str = "",
               width: int = WIDTH, height: int = HEIGHT) -> str:
    """An ``<svg>`` element; ``chart_id`` names it (``data-chart``) for pages and tests."""
    e = html.escape
    head = (f'<svg class="chart" data-chart="{e(chart_id)}" xmlns="http://www.w3.org/2000/svg" '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{e(title)}"><title>{e(title)}</title>'
            f'<text x="{_LEFT}" y="14" class="chart-title">{e(title)}</text>')
    measured = [(x, y) for s in series for x, y in s.points if y is not None]
    xs = [x for s in series for x, _ in s.points]
    plot_w, plot_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM
    frame = (f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" '
             'fill="none" stroke="#ccc"/>')
    if not measured:
        return (head + frame + f'<text x="{_LEFT + plot_w / 2}" y="{_TOP + plot_h / 2}" '
                'text-anchor="middle" class="no-data">no data yet</text></svg>')
    x_min, x_max = min(xs), max(xs)
    y_max = nice_ceiling(max(y for _, y in measured))
    span = max(x_max - x_min, 1e-9)

    def point(x: float, y: float) -> str:
        px = _LEFT + (x - x_min) / span * plot_w if x_max > x_min else _LEFT + plot_w
        py = _TOP + plot_h - y / y_max * plot_h
        return f"{px:.1f},{py:.1f}"

    parts = [head, frame,
             f'<text x="{_LEFT - 4}" y="{_TOP + 8}" text-anchor="end" class="axis">'
             f'{e(_number(y_max) + unit)}</text>',
             f'<text x="{_LEFT - 4}" y="{_TOP + plot_h}" text-anchor="end" class="axis">0</text>',
             f'<text x="{_LEFT}" y="{height - 6}" class="axis">'
             f'-{e(_duration(x_max - x_min))}</text>',
             f'<text x="{width - _RIGHT}" y="{height - 6}" text-anchor="end" class="axis">'
             'now</text>']
    legend_x = _LEFT + 60
    for index, one in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        for run in _runs(one.points):
            if len(run) == 1:
                x, y = point(*run[0]).split(",")
                parts.append(f'<circle cx="{x}" cy="{y}" r="2" fill="{color}" '
                             f'data-series="{e(one.name)}"/>')
            else:
                parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
                             f'data-series="{e(one.name)}" points="'
                             + " ".join(point(x, y) for x, y in run) + '"/>')
        parts.append(f'<text x="{legend_x}" y="{height - 6}" fill="{color}" class="legend">'
                     f'{e(one.name)}</text>')
        legend_x += 8 + 7 * len(one.name)
    parts.append("</svg>")
    return "".join(parts)


def _runs(points: Sequence[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    """The stretches of consecutive measured points, in x order."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in sorted(points, key=lambda p: p[0]):
        if y is None:
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append((x, y))
    return [run for run in runs if run]


def _duration(seconds: float) -> str:
    if seconds >= 90:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"
