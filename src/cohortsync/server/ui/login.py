"""Logging in and out of the dashboard with an admin token, and the checks every page makes.

Handlers are plain `def`: FastAPI runs them in its threadpool, off the event loop.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from cohortsync.config.models import Project
from cohortsync.identity.log_scrub import scrubbed_logger
from cohortsync.server.admin_auth import admin_closed, opens_admin
from cohortsync.server.ui import sessions
from cohortsync.server.ui.render import page
from cohortsync.server.ui.sessions import Session

log = scrubbed_logger("cohortsync.ui")
router = APIRouter()
HOME = "/ui/"


def logged_in(request: Request) -> Session:
    """Dependency of every page: the request's session, or a 303 to the login page that
    brings the browser back here after."""
    session = sessions.of_request(request)
    if session is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.headers.get("hx-request") == "true":  # a part of a page: reload the page
            target = _next(urlsplit(request.headers.get("hx-current-url", "")).path)
            location = "/ui/login?" + urlencode({"next": target})
            raise HTTPException(401, "log in first", headers={"HX-Redirect": location})
        location = "/ui/login?" + urlencode({"next": target})
        raise HTTPException(303, "log in first", headers={"Location": location})
    return session


def acting(request: Request, csrf: Annotated[str, Form()] = "") -> Session:
    """Dependency of every POST action: a live session, a request from this server's own
    pages (Origin or Referer) and the session's CSRF token, so another site cannot act."""
    session = sessions.of_request(request)
    if session is None:
        headers = {"HX-Redirect": "/ui/login"} if request.headers.get("hx-request") else None
        raise HTTPException(401, "your session ended: log in again", headers=headers)
    if not sessions.same_origin(request) or not sessions.csrf_ok(session, csrf):
        log.warning("refused %s %s: not from a dashboard page", request.method, request.url.path)
        raise HTTPException(403, "refused: this action must come from a dashboard page")
    return session


def _project(request: Request) -> Project:
    project: Project = request.app.state.engine.project
    return project


def _next(target: str | None) -> str:
    """Where to go after login: a dashboard path only (no open redirect)."""
    if target and target.startswith("/ui") and not target.startswith("//"):
        return target
    return HOME


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = HOME) -> Response:
    """The login form (already logged in: straight on)."""
    if sessions.of_request(request) is not None:
        return RedirectResponse(_next(next), status_code=303)
    closed = admin_closed(request.app.state, _project(request))
    return page(request, "login.html", None, next=_next(next), closed=closed, message="")


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = HOME,
) -> Response:
    """Check the admin token; on success a fresh session cookie and back where the user was."""
    project = _project(request)
    closed = admin_closed(request.app.state, project)
    if request.headers.get("origin") and not sessions.same_origin(request):
        return page(request, "login.html", None, 403, next=HOME, closed=closed,
                    message="refused: log in from this server's own login page")  # fmt: skip
    if closed or not opens_admin(request.app.state, project, token.strip()):
        log.warning(
            "dashboard login refused from %s", request.client.host if request.client else "?"
        )
        message = "" if closed else "That is not an admin token (a write key never is)."
        return page(request, "login.html", None, 401, next=_next(next), closed=closed,
                    message=message)  # fmt: skip
    session = request.app.state.ui_sessions.open()
    response = RedirectResponse(_next(next), status_code=303)
    sessions.set_cookie(response, session, request)
    return response


@router.post("/logout")
def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    """End the session (its cookie and the server's record) and show the login page."""
    session = sessions.of_request(request)
    if session is not None and sessions.same_origin(request) and sessions.csrf_ok(session, csrf):
        request.app.state.ui_sessions.close(session.id)
    response = RedirectResponse("/ui/login", status_code=303)
    sessions.clear_cookie(response)
    return response
