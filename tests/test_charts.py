"""Server-drawn SVG charts: marks where the figures put them, text escaped, empty data said."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from cohortsync.charts import Interval, Series, bar_chart, interval_chart, line_chart

SVG = "{http://www.w3.org/2000/svg}"


def parsed(markup: str) -> ET.Element:
    return ET.fromstring(markup)  # well-formed XML, or this raises


def test_interval_chart_puts_each_estimate_on_its_side_of_zero() -> None:
    root = parsed(
        interval_chart(
            [Interval("up", 0.03, 0.003, 0.057), Interval("down", -0.02, -0.05, -0.001)],
            title="lift",
        )
    )
    zero = float(next(e for e in root.iter(f"{SVG}line") if e.get("class") == "zero").get("x1", 0))
    dots = [float(c.get("cx", 0)) for c in root.iter(f"{SVG}circle")]
    bars = [e for e in root.iter(f"{SVG}line") if "interval" in (e.get("class") or "")]
    assert dots[0] > zero > dots[1]
    assert float(bars[0].get("x1", 0)) > zero  # the whole interval of "up" is above zero
    assert float(bars[1].get("x2", 0)) < zero


def test_bar_heights_follow_the_values() -> None:
    root = parsed(bar_chart(["mon", "tue"], [Series("entries", [(0, 10), (1, 40)])], title="t"))
    heights = [
        float(r.get("height", 0)) for r in root.iter(f"{SVG}rect") if "bar" in r.get("class", "")
    ]
    assert len(heights) == 2
    assert abs(heights[1] / heights[0] - 4) < 0.01


def test_line_chart_draws_one_path_per_series_through_every_point() -> None:
    root = parsed(
        line_chart(
            [
                Series("treatment", [(0, 0.0), (1, 0.05), (2, 0.08)]),
                Series("holdout", [(0, 0.0), (2, 0.04)]),
            ],
            title="conversion",
        )
    )
    paths = [p.get("d", "") for p in root.iter(f"{SVG}path")]
    assert [len(re.findall(r"[ML]", d)) for d in paths] == [3, 2]


def test_names_are_escaped_and_empty_data_is_said() -> None:
    markup = bar_chart(["<script>alert(1)</script>"], [Series("a&b", [(0, 1)])], title="<b>")
    assert "<script>" not in markup and "&lt;script&gt;" in markup
    parsed(markup)
    assert "no data yet" in line_chart([], title="nothing")
    assert "nothing to compare yet" in interval_chart([], title="nothing")
