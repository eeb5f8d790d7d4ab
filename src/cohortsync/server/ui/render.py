"""Jinja2 templates of the dashboard (autoescape on) and the helpers every page uses."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse

from cohortsync import charts
from cohortsync.render import platform_said
from cohortsync.server.ui.sessions import Session

HERE = Path(__file__).parent
STATIC = HERE / "static"
HTMX = "htmx-2.0.4.min.js"
"""The vendored htmx build (its license beside it), served under /ui/static/."""

_env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
templates = Jinja2Templates(env=_env)


def svg(chart: str) -> Markup:
    """A chart from `cohortsync.charts` (which escapes every text it draws) as safe markup."""
    return Markup(chart)


def clock_label(epoch: float) -> str:
    """An x tick of a chart over minutes: the UTC time of day."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M")


def day_label(epoch: float) -> str:
    """An x tick of a chart over days: the UTC month and day."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%b %d")


def count_label(value: float) -> str:
    """A y tick of counts: whole numbers only (no 0.5 member)."""
    return f"{value:,.0f}" if value == int(value) else ""


def percent(value: float | None) -> str:
    """A share as a whole percent, `—` when there is none."""
    return "—" if value is None else f"{value:.0%}"


def when(moment: datetime | None) -> str:
    """An instant in UTC to the minute, `never` when there is none."""
    return "never" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def read_when(moment: datetime | None) -> str:
    """When a platform's figure was read, `—` when never."""
    return "—" if moment is None else when(moment)


_env.filters.update(percent=percent, when=when, said=platform_said, read_when=read_when)


def page(
    request: Request,
    template: str,
    session: Session | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """One dashboard page: the template with the chart styles, htmx and the CSRF token."""
    context.update(
        chart_css=Markup(charts.CSS),
        htmx=HTMX,
        csrf=session.csrf if session else "",
        logged_in=session is not None,
    )
    return templates.TemplateResponse(request, template, context, status_code=status_code)
