"""The HTML report: every chart inline, nothing fetched, names escaped; a fragment to embed."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

from cohortsync.engine import Engine
from cohortsync.ops.lift import lift, srm_p_value
from cohortsync.ops.report import Arm, AudienceReport, CurvePoint, Report
from cohortsync.ops.report_latency import Bucket, DestinationLatency, Latency
from cohortsync.ops.report_sql import BUCKETS
from cohortsync.ops.report_trend import cost, weeks

EVIL = 'cio_<script>alert("x")</script>'


def _audience(name: str, x_t: int, n_t: int, x_c: int, n_c: int) -> AudienceReport:
    found = lift(x_t, n_t, x_c, n_c)
    incremental = (found.incremental, found.incremental_low, found.incremental_high)
    trend = weeks(
        {(False, 2930): (n_t // 2, x_t // 2), (True, 2930): (n_c // 2, x_c // 2),
         (False, 2931): (n_t - n_t // 2, x_t - x_t // 2), (True, 2931): (n_c - n_c // 2, 0)},
        [(date(2026, 2, 24), "USD", 120.0), (date(2026, 3, 3), "USD", 80.0),
         (date(2026, 3, 3), "EUR", 30.0)],
    )  # fmt: skip
    return AudienceReport(
        name, 20.0,
        Arm(n_t, x_t, 10.0 * x_t, 100.0 * x_t, x_t + 3, 7, 35.0, 2),
        Arm(n_c, x_c, 10.0 * x_c, 100.0 * x_c, x_c, 1, 5.0, 0),
        found, srm_p_value(n_t, n_c, 0.2), 12.0, -3.0, 27.0, 44.0,
        tuple(CurvePoint(d, x_t / n_t * d / 7, x_c / n_c * d / 7) for d in range(8)),
        (cost("EUR", 30.0, incremental), cost("USD", 200.0, incremental)),
        trend,
    )  # fmt: skip


def _report() -> Report:
    buckets = tuple(Bucket(label, 0.0, None, 3 if i == 4 else 0) for i, (label, _) in
                    enumerate(BUCKETS))  # fmt: skip
    return Report(
        datetime(2026, 2, 20, tzinfo=UTC), datetime(2026, 3, 6, tzinfo=UTC), "7d",
        "order_completed", "revenue",
        (_audience("cio_cart_abandon_6h", 120, 1000, 20, 250), _audience(EVIL, 30, 400, 9, 100)),
        ("discount",), ("coupon",), ("cio_recent_purch_7d_suppress",),
        Latency(9, 6, 3, (DestinationLatency("meta_ads", 3, 3, 400.0, 800.0, 880.0, buckets),)),
    )  # fmt: skip


def test_the_page_holds_every_chart_inline_and_fetches_nothing() -> None:
    page = Engine.report_html(_report())
    assert page.startswith("<!doctype html>") and "<style>" in page
    charts = re.findall(r'<svg class="chart"', page)
    # lift + 2 curves + discount shares + 2 audiences × 2 currencies of CAC + latency
    assert len(charts) == 1 + 2 + 1 + 4 + 1
    for title in ("Lift (pp)", "converted by day since entry", "Conversions discounted",
                  "EUR per incremental conversion", "USD per incremental conversion",
                  "Purchases by latency"):  # fmt: skip
        assert title in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "@import" not in page and "url(" not in page
    assert "2026-W09" in page and "2026-W10" in page  # the weekly trend rows


def test_an_audience_name_with_a_script_tag_is_escaped_everywhere() -> None:
    page = Engine.report_html(_report())
    assert "<script" not in page.lower()
    assert "cio_&lt;script&gt;" in page


def test_the_fragment_is_the_page_body_for_the_dashboard() -> None:
    found = _report()
    fragment = Engine.report_html(found, fragment=True)
    assert fragment.lstrip().startswith('<section class="cohortsync-report">')
    assert "<html" not in fragment and "<style>" not in fragment
    assert fragment.strip() in Engine.report_html(found)
