"""The body of the dashboard's report page: holdout lift per audience as an interval chart
and a table (the page around it is templates/report.html)."""

from __future__ import annotations

from markupsafe import Markup

from cohortsync import charts
from cohortsync.engine import Report
from cohortsync.server.ui.render import svg, templates


def points(value: float) -> str:
    """A difference of two rates in percentage points."""
    return f"{value * 100:+.1f} pt"


def report_body(report: Report) -> Markup:
    """Lift of each audience with a holdout: conversion rate treated minus held out, with its
    95% interval (a bar crossing zero is no detected effect), then the arms in a table."""
    rows = [
        charts.Interval(a.audience, a.lift.lift, a.lift.lift_low, a.lift.lift_high)
        for a in report.audiences
        if a.lift is not None
    ]
    chart = charts.interval_chart(
        rows,
        title=f"Conversion lift ({report.conversion_event} within {report.window}), 95% interval",
        x_format=points,
    )
    template = templates.get_template("report_body.html")
    return Markup(template.render(report=report, chart=svg(chart), points=points))
