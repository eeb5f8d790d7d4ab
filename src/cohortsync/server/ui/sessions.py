"""Dashboard sessions: a random id in an HttpOnly cookie, the session itself kept in memory.

A session holds nothing but its expiry and the CSRF token its forms carry, so a restart of
`serve` only asks people to log in again.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

COOKIE = "cohortsync_session"
PATH = "/ui"
LIFETIME = 8 * 3600.0
"""Seconds a session lasts after login (a working day); then the login page again."""


@dataclass(frozen=True)
class Session:
    """One logged-in browser: its id (the cookie), CSRF token and expiry (monotonic seconds)."""

    id: str
    csrf: str
    expires: float


class Sessions:
    """Every live session of one app, thread-safe (page handlers run in a threadpool)."""

    def __init__(
        self, lifetime: float = LIFETIME, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.lifetime = lifetime
        self._clock = clock
        self._live: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self) -> Session:
        """A new session, valid for `lifetime` seconds."""
        now = self._clock()
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now + self.lifetime)
        with self._lock:
            self._live = {k: s for k, s in self._live.items() if s.expires > now}
            self._live[session.id] = session
        return session

    def find(self, session_id: str | None) -> Session | None:
        """The live session of that id (None when unknown or expired)."""
        if not session_id:
            return None
        with self._lock:
            session = self._live.get(session_id)
            if session is not None and session.expires <= self._clock():
                del self._live[session_id]
                return None
        return session

    def close(self, session_id: str | None) -> None:
        """Forget a session (logout)."""
        with self._lock:
            self._live.pop(session_id or "", None)


def of_request(request: Request) -> Session | None:
    """The request's live session, if its cookie names one."""
    sessions: Sessions = request.app.state.ui_sessions
    return sessions.find(request.cookies.get(COOKIE))


def set_cookie(response: Response, session: Session, request: Request) -> None:
    """Hand the browser its session id: HttpOnly, SameSite=Strict, only for /ui."""
    response.set_cookie(
        COOKIE,
        session.id,
        max_age=int(LIFETIME),
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_cookie(response: Response) -> None:
    """Make the browser drop its session id."""
    response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="strict")


def same_origin(request: Request) -> bool:
    """Whether the request comes from a page of this server: its Origin (or, when a browser
    sends none, its Referer) names this host. Another site's form or script cannot pass."""
    sent = request.headers.get("origin") or request.headers.get("referer")
    if not sent or sent == "null":
        return False
    parts = urlsplit(sent)
    return (parts.scheme, parts.netloc) == (request.url.scheme, request.url.netloc)


def csrf_ok(session: Session, sent: str | None) -> bool:
    """Whether a form or htmx request carries its session's CSRF token."""
    return bool(sent) and hmac.compare_digest(session.csrf.encode(), (sent or "").encode())
