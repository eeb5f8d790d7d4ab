"""Bearer tokens of the admin API and the dashboard: `admin.tokens` and `COHORTSYNC_ADMIN_TOKEN`.

Write keys are public (browser SDKs publish them), so they never open anything here.
"""

from __future__ import annotations

import hmac
import os
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cohortsync.config.models import Project

TOKEN_ENV = "COHORTSYNC_ADMIN_TOKEN"
"""An admin token given by the environment, besides `admin.tokens` in the project file."""

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="admin token",
    description="A token from `admin.tokens` in cohortsync.yml or `COHORTSYNC_ADMIN_TOKEN`.",
)


def admin_tokens(project: Project) -> tuple[str, ...]:
    """Every token that opens the admin API: the project's and the environment's."""
    from_env = os.environ.get(TOKEN_ENV, "").strip()
    return (*project.admin.tokens, *((from_env,) if from_env else ()))


def is_admin_token(project: Project, token: str | None) -> bool:
    """Whether `token` is an admin token (never a write key), compared in constant time."""
    if not token:
        return False
    write_keys = {s.write_key for s in project.sources.values()}
    found = False
    for known in admin_tokens(project):
        if hmac.compare_digest(known.encode(), token.encode()) and known not in write_keys:
            found = True
    return found


class AdminRejected(HTTPException):
    """401 with a body saying what to send."""

    def __init__(self, message: str) -> None:
        super().__init__(
            status_code=401,
            detail={"code": "unauthorized", "message": message},
            headers={"WWW-Authenticate": 'Bearer realm="cohortsync admin"'},
        )


def serve_token(state: Any) -> str | None:
    """The token this `serve` wrote to .cohortsync/serve.json (readable by its user only)."""
    found: str | None = getattr(state, "serve_token", None)
    return found


def admin_closed(state: Any, project: Project) -> bool:
    """No token at all opens the admin API or the dashboard of this app."""
    return not admin_tokens(project) and not serve_token(state)


def opens_admin(state: Any, project: Project, token: str | None) -> bool:
    """Whether `token` opens the admin API and the dashboard: an admin token, or this serve's
    own token from serve.json; never a write key."""
    own = serve_token(state)
    if own and token and hmac.compare_digest(own.encode(), token.encode()):
        return True
    return is_admin_token(project, token)


def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """FastAPI dependency: the request carries an admin token in `Authorization: Bearer`."""
    project: Project = request.app.state.engine.project
    given = credentials.credentials if credentials is not None else None
    if opens_admin(request.app.state, project, given):
        return
    if admin_closed(request.app.state, project):
        raise AdminRejected(
            "the admin API is closed: set admin.tokens in cohortsync.yml or "
            f"{TOKEN_ENV} before starting serve"
        )
    if given is None:
        raise AdminRejected("send an admin token: Authorization: Bearer <token>")
    raise AdminRejected("that token is not an admin token (a write key never is)")


AdminOnly = Depends(require_admin)
"""Put in a router's `dependencies=[...]` to close every route of it to all but admins."""
