"""The report as HTML: a body fragment (the dashboard embeds it) and a self-contained page
(`report --format html`): inline CSS, inline SVG charts, no script, nothing fetched."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any

from markupsafe import Markup

from cohortsync.charts import CSS, Interval, Series, bar_chart, interval_chart, line_chart
from cohortsync.ops.report import AudienceReport, Report
from cohortsync.ops.report_json import DISCOUNT_SPENT_ANYWAY, verdict
from cohortsync.ops.report_latency import Latency
from cohortsync.ops.report_sql import BUCKETS
from cohortsync.ops.report_trend import Cost

if TYPE_CHECKING:
    from jinja2 import Environment

REPORT_CSS = (
    CSS
    + """
.cohortsync-report { font: 14px system-ui, sans-serif; color: #222; max-width: 1100px; }
.cohortsync-report table { border-collapse: collapse; margin: 8px 0 20px; }
.cohortsync-report th, .cohortsync-report td { border-bottom: 1px solid #e5e5e5;
  padding: 4px 8px; text-align: left; vertical-align: top; }
.cohortsync-report th { background: #f6f6f6; font-weight: 600; }
.cohortsync-report tr.total td { font-weight: 600; }
.cohortsync-report .alert { color: #b91c1c; font-weight: 600; }
.cohortsync-report .note, .cohortsync-report .period { color: #555; }
"""
)
"""Styles of the report's tables and charts: put once in the embedding page's <style>."""


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:+.2f}%"


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def _pp(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:+.2f} pp"


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _sig(value: float | None) -> str:
    """Three significant digits (p-values)."""
    return "—" if value is None else f"{value:.3g}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 60:
        return f"{value:.1f}s"
    return f"{value / 60:.1f}m" if value < 3600 else f"{value / 3600:.1f}h"


def _cost(cost: Cost) -> str:
    head = f"{cost.currency} {cost.spend:,.2f}"
    if not cost.measured:
        return f"{head}: no lift to divide by"

    def one(value: float | None) -> str:
        return "unbounded" if value is None else f"{value:,.2f}"

    low, high = one(cost.per_incremental_low), one(cost.per_incremental_high)
    return f"{head}: {one(cost.per_incremental)} [{low}, {high}]"


def _instant(value: datetime) -> str:
    return f"{value:%Y-%m-%d %H:%M}"


@cache
def _environment() -> Environment:
    # imported here: the engine imports this module for REPORT_CSS, and Jinja2 is only needed
    # to render
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(
        loader=PackageLoader("cohortsync.ops", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        pct=_pct,
        share=_share,
        pp=_pp,
        num=_num,
        sig=_sig,
        seconds=_seconds,
        cost=_cost,
        instant=_instant,
    )
    return env


def _curve_chart(one: AudienceReport) -> Markup:
    treatment = [(p.day, p.treatment * 100) for p in one.curve if p.treatment is not None]
    holdout = [(p.day, p.holdout * 100) for p in one.curve if p.holdout is not None]
    series = [Series("treatment", treatment), Series("holdout", holdout)]
    return Markup(
        line_chart(
            series,
            title=f"{one.audience}: converted by day since entry",
            x_format=lambda d: f"day {d:.0f}",
            y_format=lambda v: f"{v:.1f}%",
        )
    )


def _cac_charts(one: AudienceReport) -> list[Markup]:
    """Bars per currency: cost per incremental conversion of each ISO week where it is
    bounded (the table shows the others as unbounded)."""
    currencies = sorted({c.currency for w in one.weeks for c in w.spend}) or [""]
    charts = []
    for currency in currencies:
        bounded = [
            (w.week, c.per_incremental)
            for w in one.weeks
            for c in w.spend
            if c.currency == currency and c.per_incremental is not None
        ]
        title = f"{one.audience}: {currency or 'no spend'} per incremental conversion"
        series = [Series(currency or "cost", [(float(i), v) for i, (_, v) in enumerate(bounded)])]
        labels = [week for week, _ in bounded]
        charts.append(Markup(bar_chart(labels, series, title=title, y_format=_money)))
    return charts


def _money(value: float) -> str:
    return f"{value:,.2f}"


def _latency_chart(found: Latency) -> Markup:
    labels = [label for label, _ in BUCKETS]
    series = [
        Series(d.destination, [(float(i), float(b.count)) for i, b in enumerate(d.buckets)])
        for d in found.destinations
    ]
    return Markup(
        bar_chart(
            labels,
            series,
            title="Purchases by latency to acknowledged suppression",
            y_format=lambda v: f"{v:,.0f}",
        )
    )


def _context(found: Report) -> dict[str, Any]:
    audiences = [
        {
            "name": one.audience,
            "one": one,
            "verdict": verdict(one),
            "failures": one.treatment.suppression_failures + one.holdout.suppression_failures,
            "curve": _curve_chart(one),
            "cac": _cac_charts(one),
        }
        for one in found.audiences
    ]
    lifts = [
        Interval(one.audience, f.lift * 100, f.lift_low * 100, f.lift_high * 100)
        for one in found.audiences
        if (f := one.lift) is not None
    ]
    shares = [
        Series(
            arm,
            [
                (float(i), (share or 0.0) * 100)
                for i, one in enumerate(found.audiences)
                for share in [getattr(one, arm).discount_share]
            ],
        )
        for arm in ("treatment", "holdout")
    ]
    charts = {
        "lift": Markup(
            interval_chart(
                lifts,
                title="Lift (pp) with its 95% interval",
                x_format=lambda v: f"{v:+.1f}",
            )
        ),
        "discounts": Markup(
            bar_chart(
                [one.audience for one in found.audiences],
                shares,
                title="Conversions discounted (%)",
                y_format=lambda v: f"{v:.0f}%",
            )
        ),
        "latency": None if found.latency is None else _latency_chart(found.latency),
    }
    return {
        "report": found,
        "audiences": audiences,
        "charts": charts,
        "latency": found.latency,
        "spent_anyway": DISCOUNT_SPENT_ANYWAY,
    }


def report_fragment(found: Report) -> str:
    """The report's HTML body fragment (a <section>); style it with `REPORT_CSS`."""
    return _environment().get_template("report.html.j2").render(_context(found))


def report_page(found: Report) -> str:
    """The whole report as one self-contained HTML page."""
    body = Markup(report_fragment(found))
    page = _environment().get_template("report_page.html.j2")
    return page.render(report=found, css=Markup(REPORT_CSS), body=body) + "\n"
