"""The body of the dashboard's report page: the HTML report's own body fragment (lift,
conversion curves, discounts, latency, paid CAC), so the page and `report --format html`
show the same figures drawn the same way."""

from __future__ import annotations

from markupsafe import Markup

from cohortsync.engine import REPORT_CSS, Engine, Report


def report_body(report: Report) -> Markup:
    """The report's figures and charts, styled by `REPORT_STYLE` (the HTML report's styles)."""
    return Markup(Engine.report_html(report, fragment=True))


REPORT_STYLE = Markup(REPORT_CSS)
"""What the report page adds to the dashboard's <style>."""
