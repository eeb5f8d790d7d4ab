"""The dashboard at /ui: server-rendered pages (Jinja2, htmx) for people who do not use a
terminal, opened with an admin token."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from cohortsync.server.ui.login import router as login_router
from cohortsync.server.ui.pages import router as pages_router
from cohortsync.server.ui.render import STATIC
from cohortsync.server.ui.sessions import Sessions

PREFIX = "/ui"


def install_dashboard(app: FastAPI) -> None:
    """Mount the dashboard's pages, login and static files on `app` (an app over an open
    engine with a store; the ingest role has none to show)."""
    app.state.ui_sessions = Sessions()
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="ui_static")
    app.include_router(login_router, prefix=PREFIX, include_in_schema=False)
    app.include_router(pages_router, prefix=PREFIX, include_in_schema=False)
