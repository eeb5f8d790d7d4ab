"""Charts as inline SVG, drawn on the server: the same markup serves the dashboard and the
self-contained HTML report, with no script and nothing fetched by the browser."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

Format = Callable[[float], str]

WIDTH, HEIGHT = 640, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 28, 40

CSS = """
svg.chart { font: 11px system-ui, sans-serif; max-width: 100%; height: auto; }
svg.chart .title { font-size: 13px; font-weight: 600; fill: #222; }
svg.chart .axis { stroke: #999; stroke-width: 1; }
svg.chart .grid { stroke: #e5e5e5; stroke-width: 1; }
svg.chart .tick { fill: #555; }
svg.chart .zero { stroke: #444; stroke-dasharray: 3 3; }
svg.chart .s0 { stroke: #2563eb; fill: #2563eb; }
svg.chart .s1 { stroke: #ea580c; fill: #ea580c; }
svg.chart .s2 { stroke: #16a34a; fill: #16a34a; }
svg.chart .s3 { stroke: #9333ea; fill: #9333ea; }
svg.chart path.line { fill: none; stroke-width: 2; }
svg.chart .interval { stroke-width: 2; }
svg.chart .legend { fill: #333; }
svg.chart .empty { fill: #777; font-style: italic; }
"""
"""Styles for every chart: put once in the page's <style>."""


@dataclass(frozen=True)
class Series:
    """One named line or group of bars."""

    name: str
    points: Sequence[tuple[float, float]]


@dataclass(frozen=True)
class Interval:
    """One labelled estimate with its interval (a row of an interval chart)."""

    label: str
    value: float
    low: float
    high: float


def _plain(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]."""
    if high <= low:
        high = low + 1
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(count + 3) if first + i * step <= high + step / 2]


class _Frame:
    """The plot area of one chart and its scales."""

    def __init__(
        self, x: tuple[float, float], y: tuple[float, float], width: int, height: int
    ) -> None:
        self.x0, self.x1 = x if x[1] > x[0] else (x[0] - 1, x[0] + 1)
        self.y0, self.y1 = y if y[1] > y[0] else (y[0], y[0] + 1)
        self.width, self.height = width, height

    def sx(self, value: float) -> float:
        span = self.width - _LEFT - _RIGHT
        return _LEFT + (value - self.x0) / (self.x1 - self.x0) * span

    def sy(self, value: float) -> float:
        span = self.height - _TOP - _BOTTOM
        return self.height - _BOTTOM - (value - self.y0) / (self.y1 - self.y0) * span


def _svg(title: str, width: int, height: int, body: list[str]) -> str:
    label = escape(title, quote=True)
    return (
        f'<svg class="chart" role="img" aria-label="{label}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
        f'<title>{escape(title)}</title><text class="title" x="{_LEFT}" y="16">{escape(title)}'
        f"</text>{''.join(body)}</svg>"
    )


def _empty(title: str, width: int, height: int, why: str) -> str:
    text = f'<text class="empty" x="{width / 2}" y="{height / 2}" text-anchor="middle">'
    return _svg(title, width, height, [f"{text}{escape(why)}</text>"])


def _y_axis(frame: _Frame, ticks: list[float], fmt: Format) -> list[str]:
    out = []
    for t in ticks:
        y = frame.sy(t)
        out.append(
            f'<line class="grid" x1="{_LEFT}" x2="{frame.width - _RIGHT}" y1="{y:.1f}" '
            f'y2="{y:.1f}"/><text class="tick" x="{_LEFT - 6}" y="{y + 4:.1f}" '
            f'text-anchor="end">{escape(fmt(t))}</text>'
        )
    return out


def _legend(names: Sequence[str], width: int) -> list[str]:
    out, x = [], width - _RIGHT
    for i, name in reversed(list(enumerate(names))):
        x -= 14 + 7 * len(name)
        out.append(
            f'<rect class="s{i % 4}" x="{x}" y="8" width="10" height="10"/>'
            f'<text class="legend" x="{x + 13}" y="17">{escape(name)}</text>'
        )
    return out


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_format: Format = _plain,
    y_format: Format = _plain,
    y_from_zero: bool = True,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> str:
    """Lines over a numeric x (time as epoch seconds with an `x_format` that names dates)."""
    points = [p for s in series for p in s.points]
    if not points:
        return _empty(title, width, height, "no data yet")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    low = 0.0 if y_from_zero else min(ys)
    y_ticks = _ticks(min(low, *ys), max(ys))
    frame = _Frame((min(xs), max(xs)), (y_ticks[0], y_ticks[-1]), width, height)
    body = _y_axis(frame, y_ticks, y_format)
    for t in _ticks(frame.x0, frame.x1, 4):
        if frame.x0 <= t <= frame.x1:
            body.append(
                f'<text class="tick" x="{frame.sx(t):.1f}" y="{height - _BOTTOM + 16}" '
                f'text-anchor="middle">{escape(x_format(t))}</text>'
            )
    for i, one in enumerate(series):
        if not one.points:
            continue
        path = " ".join(
            f"{'M' if j == 0 else 'L'}{frame.sx(x):.1f},{frame.sy(y):.1f}"
            for j, (x, y) in enumerate(sorted(one.points))
        )
        body.append(f'<path class="line s{i % 4}" d="{path}"><title>{escape(one.name)}</title>')
        body.append("</path>")
    body += _legend([s.name for s in series], width)
    return _svg(title, width, height, body)


def bar_chart(
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    y_format: Format = _plain,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> str:
    """Grouped vertical bars: one group per label, one bar per series (`points[i][1]` is the
    value at `labels[i]`)."""
    if not labels or not series:
        return _empty(title, width, height, "no data yet")
    values = [y for s in series for _, y in s.points]
    y_ticks = _ticks(min(0.0, *values), max(0.0, *values))
    frame = _Frame((0, len(labels)), (y_ticks[0], y_ticks[-1]), width, height)
    body = _y_axis(frame, y_ticks, y_format)
    slot = (frame.sx(1) - frame.sx(0)) * 0.8 / len(series)
    every = max(1, math.ceil(len(labels) / 12))
    for i, label in enumerate(labels):
        if i % every == 0:
            body.append(
                f'<text class="tick" x="{frame.sx(i + 0.5):.1f}" y="{height - _BOTTOM + 16}" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    for k, one in enumerate(series):
        for i, (_, value) in enumerate(one.points[: len(labels)]):
            top, base = frame.sy(max(value, 0.0)), frame.sy(min(value, 0.0))
            x = frame.sx(i + 0.1) + k * slot
            body.append(
                f'<rect class="bar s{k % 4}" x="{x:.1f}" y="{top:.1f}" width="{slot:.1f}" '
                f'height="{max(base - top, 0.5):.1f}"><title>{escape(one.name)} '
                f"{escape(labels[i])}: {escape(y_format(value))}</title></rect>"
            )
    body += _legend([s.name for s in series], width)
    return _svg(title, width, height, body)


def interval_chart(
    rows: Sequence[Interval],
    *,
    title: str,
    x_format: Format = _plain,
    width: int = WIDTH,
) -> str:
    """One row per estimate: a dot at the value and a bar over its interval, with zero marked
    (lift with its 95% interval: a bar that crosses zero is no detected effect)."""
    height = _TOP + _BOTTOM + 28 * max(len(rows), 1)
    if not rows:
        return _empty(title, width, height, "nothing to compare yet")
    left = max(_LEFT, 7 * max(len(r.label) for r in rows) + 12)
    ends = [v for r in rows for v in (r.low, r.high, r.value)] + [0.0]
    x_ticks = _ticks(min(ends), max(ends))
    span = width - left - _RIGHT - 24  # room for the last tick's label, centred on its line

    def sx(value: float) -> float:
        return left + (value - x_ticks[0]) / (x_ticks[-1] - x_ticks[0]) * span

    body = []
    for t in x_ticks:
        body.append(
            f'<line class="grid" x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{_TOP}" '
            f'y2="{height - _BOTTOM}"/><text class="tick" x="{sx(t):.1f}" '
            f'y="{height - _BOTTOM + 16}" text-anchor="middle">{escape(x_format(t))}</text>'
        )
    body.append(
        f'<line class="zero" x1="{sx(0):.1f}" x2="{sx(0):.1f}" y1="{_TOP}" '
        f'y2="{height - _BOTTOM}"/>'
    )
    for i, row in enumerate(rows):
        y = _TOP + 14 + 28 * i
        tip = f"{row.label}: {x_format(row.value)} [{x_format(row.low)}, {x_format(row.high)}]"
        body.append(
            f'<text class="tick" x="{left - 8}" y="{y + 4}" text-anchor="end">'
            f"{escape(row.label)}</text>"
            f'<g class="estimate"><title>{escape(tip)}</title>'
            f'<line class="interval s0" x1="{sx(row.low):.1f}" x2="{sx(row.high):.1f}" '
            f'y1="{y}" y2="{y}"/><circle class="s0" cx="{sx(row.value):.1f}" cy="{y}" r="4"/></g>'
        )
    return _svg(title, width, height, body)
