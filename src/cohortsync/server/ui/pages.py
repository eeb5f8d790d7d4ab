"""The dashboard's pages and its one action (retry dead letters), each a plain `def` handler:
FastAPI runs them in its threadpool, so store work never blocks the event loop."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from cohortsync.engine import Engine
from cohortsync.errors import CohortsyncError, NotFoundError
from cohortsync.server.admin_http import delivering
from cohortsync.server.ui import views
from cohortsync.server.ui.login import acting, logged_in
from cohortsync.server.ui.render import page
from cohortsync.server.ui.report_page import REPORT_STYLE, report_body
from cohortsync.server.ui.sessions import Session

router = APIRouter()
Viewer = Annotated[Session, Depends(logged_in)]
Actor = Annotated[Session, Depends(acting)]
REPORT_DAYS = 30
"""The report's default period: entries of the last 30 days."""


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def _now() -> datetime:
    return datetime.now(UTC)


def _not_found(request: Request, session: Session, message: str) -> Response:
    return page(request, "not_found.html", session, 404, message=message)


@router.get("/", response_class=HTMLResponse)
def overview(request: Request, session: Viewer) -> Response:
    """Events per minute, profiles, audiences with their sizes, destination health."""
    data = views.overview(_engine(request), _now())
    return page(request, "overview.html", session, data=data, hours=views.EVENT_HOURS)


@router.get("/overview/destinations", response_class=HTMLResponse)
def overview_destinations(request: Request, session: Viewer) -> Response:
    """The overview's destination health (htmx loads it after the page)."""
    health = views.destinations_health(_engine(request))
    return page(request, "_health.html", session, destinations=health)


@router.get("/audiences/{name}", response_class=HTMLResponse)
def audience(request: Request, name: str, session: Viewer) -> Response:
    """One audience: size over time, entries and exits, rules, holdout, destinations, lint."""
    engine = _engine(request)
    found = engine.segments.audiences.get(name)
    if found is None:
        return _not_found(request, session, f"No audience is named {name!r}.")
    data = views.audience_page(engine, found, _now())
    return page(request, "audience.html", session, data=data)


@router.get("/audiences/{name}/destinations", response_class=HTMLResponse)
def audience_destinations(request: Request, name: str, session: Viewer) -> Response:
    """An audience's delivery state per destination (htmx loads it after the page)."""
    engine = _engine(request)
    if name not in engine.segments.audiences:
        return _not_found(request, session, f"No audience is named {name!r}.")
    routes = views.audience_routes(engine, name)
    return page(request, "_routes.html", session, routes=routes, first="destination",
                accepted=views.accepted_rate)  # fmt: skip


@router.get("/audiences/{name}/lint", response_class=HTMLResponse)
def audience_lint(request: Request, name: str, session: Viewer) -> Response:
    """Lint findings about an audience (htmx loads them after the page)."""
    engine = _engine(request)
    if name not in engine.segments.audiences:
        return _not_found(request, session, f"No audience is named {name!r}.")
    findings, measured = views.audience_lint(engine, name)
    return page(request, "_lint.html", session, findings=findings, measured=measured)


@router.get("/destinations/{name}", response_class=HTMLResponse)
def destination(request: Request, name: str, session: Viewer) -> Response:
    """One destination: pending, retrying, dead letters (with a retry), match rates, errors."""
    config = _engine(request).sync_setup.configs.get(name)
    if config is None:
        return _not_found(request, session, f"No destination is named {name!r}.")
    return page(request, "destination.html", session, name=name, type=str(config.type),
                dry_run=config.dry_run)  # fmt: skip


@router.get("/destinations/{name}/delivery", response_class=HTMLResponse)
def destination_delivery(request: Request, name: str, session: Viewer) -> Response:
    """A destination's routes and dead letters (htmx loads them after the page)."""
    engine = _engine(request)
    if name not in engine.sync_setup.configs:
        return _not_found(request, session, f"No destination is named {name!r}.")
    data = views.destination_page(engine, name)
    return page(request, "_delivery.html", session, data=data, accepted=views.accepted_rate,
                notice="")  # fmt: skip


@router.post("/destinations/{name}/retry", response_class=HTMLResponse)
def retry(request: Request, name: str, session: Actor) -> Response:
    """Queue the destination's dead letters again, then deliver at once: htmx swaps in the
    new state; a browser without script is sent back to the destination's page."""
    engine = _engine(request)
    if name not in engine.sync_setup.configs:
        return _not_found(request, session, f"No destination is named {name!r}.")
    try:
        with delivering(request):  # between serve's own delivery rounds, as the admin API
            queued = engine.retry_dead(destination=name)
            sent = engine.sync(destination=name).delivery
    except CohortsyncError as exc:  # a project that breaks its lock: nothing was sent
        notice = f"Not retried: {exc}"
    else:
        notice = (
            f"{queued:,} dead letters queued again; delivered now: "
            f"{sent.total('acknowledged'):,} acknowledged, {sent.total('retrying'):,} retrying, "
            f"{sent.total('rejected'):,} refused, {sent.total('dead_lettered'):,} dead again."
        )
    if request.headers.get("hx-request") != "true":
        return RedirectResponse(f"/ui/destinations/{name}", status_code=303)
    data = views.destination_page(engine, name)
    return page(request, "_delivery.html", session, data=data, accepted=views.accepted_rate,
                notice=notice)  # fmt: skip


@router.get("/profile", response_class=HTMLResponse)
def profile_form(request: Request, session: Viewer) -> Response:
    """The profile lookup form."""
    return page(request, "profile.html", session, identifier="", found=None, message="")


@router.post("/profile", response_class=HTMLResponse)
def profile(request: Request, session: Viewer, identifier: Annotated[str, Form()] = "") -> Response:
    """Look a profile up by an identifier and explain each of its audiences. A POST, so the
    identifier (often an email) stays out of URLs, proxy logs and the browser's history."""
    if not identifier.strip():
        return page(request, "profile.html", session, 400, identifier="", found=None,
                    message="Give an identifier, such as email:ann@example.com.")  # fmt: skip
    try:
        found = views.profile_page(_engine(request), identifier.strip())
    except CohortsyncError as exc:  # its message masks emails and phones
        status = 404 if isinstance(exc, NotFoundError) else 400
        return page(request, "profile.html", session, status, identifier=identifier, found=None,
                    message=str(exc))  # fmt: skip
    return page(request, "profile.html", session, identifier=identifier, found=found, message="")


@router.get("/report", response_class=HTMLResponse)
def report(
    request: Request, session: Viewer, since: str | None = None, until: str | None = None
) -> Response:
    """Holdout lift per audience for the entries of a period (default the last 30 days)."""
    today = _now().date()
    try:
        first = date.fromisoformat(since) if since else today - timedelta(days=REPORT_DAYS)
        last = date.fromisoformat(until) if until else today
    except ValueError:
        return _report_error(request, session, since, until, "Give dates as YYYY-MM-DD.")
    if first > last:
        return _report_error(request, session, since, until, "The period starts after it ends.")
    start = datetime.combine(first, time.min, UTC)
    end = datetime.combine(last, time.max, UTC)
    try:
        found = _engine(request).report(start, end)
    except CohortsyncError as exc:
        return _report_error(request, session, since, until, str(exc))
    return page(request, "report.html", session, since=first.isoformat(), until=last.isoformat(),
                body=report_body(found), report_style=REPORT_STYLE, message="")  # fmt: skip


def _report_error(
    request: Request, session: Session, since: str | None, until: str | None, message: str
) -> Response:
    return page(request, "report.html", session, 400, since=since or "", until=until or "",
                body="", message=message)  # fmt: skip
