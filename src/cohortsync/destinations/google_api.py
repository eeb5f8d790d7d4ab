"""Calls to the Data Manager API: quota kept on our side, `google.rpc.Status` errors mapped.

Google answers failures as `{"error": {"code", "status", "message", "details"}}`; the
`ErrorInfo` detail holds the reason (`INVALID_SHA256_FORMAT`) and a `BadRequest` detail the
offending field (`audience_members[3].user_data…`). 429 and 5xx are transient, 401/403 auth
errors, other 4xx permanent. A 400 that names one record (`audience_members[i]`, `events[i]`)
is a `RecordError`: the whole request was refused for that record alone.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from cohortsync.destinations.base import (
    AuthError,
    DeliveryError,
    PermanentError,
    TransientError,
)
from cohortsync.destinations.google_auth import GoogleSession
from cohortsync.destinations.http import PreparedRequest, exchange, retry_after, scrub

WINDOW = 60.0
"""Google's quotas count requests per minute."""
_RECORD = re.compile(r"^(audience_members|audienceMembers|events)\[(\d+)\]")
RECORD_REASONS = frozenset(
    {
        "INVALID_SHA256_FORMAT",
        "INVALID_HEX_ENCODING",
        "INVALID_BASE64_ENCODING",
        "NO_IDENTIFIERS_PROVIDED",
        "INVALID_POSTAL_CODE",
        "INVALID_CURRENCY_CODE",
        "EVENT_TIME_INVALID",
        "TOO_MANY_USER_IDENTIFIERS",
    }
)
"""Reasons that concern one record even when no field path says which."""


class RecordError(PermanentError):
    """The request was refused for one record it held (`index`, when Google named it)."""

    def __init__(self, message: str, reason: str, index: int | None) -> None:
        super().__init__(message)
        self.reason = reason
        self.index = index


class RequestLimiter:
    """At most `limit` requests in any `window` seconds, counted from when each request ended
    (it reached Google by then), so Google's own count over its arrivals keeps the limit too:
    a call waits for its turn."""

    def __init__(
        self,
        limit: int,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.sleep = sleep
        self.waited = 0.0
        self._sent: list[list[float]] = []
        self._lock = threading.Lock()

    def acquire(self) -> list[float]:
        """Wait until one more request keeps the limit; its slot, to be `finish`ed."""
        with self._lock:
            while True:
                now = self.clock()
                self._sent = [slot for slot in self._sent if slot[0] > now - self.window]
                if len(self._sent) < self.limit:
                    slot = [math.inf]
                    self._sent.append(slot)
                    return slot
                pause = min(slot[0] for slot in self._sent) + self.window - now
                if math.isinf(pause):
                    pause = self.window  # every slot still in flight (another thread)
                self.waited += pause
                self.sleep(pause)

    def finish(self, slot: list[float]) -> None:
        """The request of this slot ended now."""
        slot[0] = self.clock()


class GoogleClient:
    """One destination's calls: a bearer token, the client-side quota, error mapping."""

    def __init__(self, session: GoogleSession, limiter: RequestLimiter) -> None:
        self.session = session
        self.limiter = limiter
        self.requests = 0

    def prepare(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> PreparedRequest:
        """A request to an API path, its JSON body rendered with sorted keys."""
        content = b"" if body is None else orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        headers = {"Content-Type": "application/json", **(headers or {})}
        url = self.session.config.url(path)
        return PreparedRequest(method, url, params or {}, headers, content)

    def call(self, request: PreparedRequest, what: str) -> dict[str, Any]:
        """Send once (after the limiter's turn) and return the JSON answer, or raise."""
        slot = self.limiter.acquire()
        authorized = PreparedRequest(
            request.method,
            request.url,
            request.params,
            {**request.headers, **self.session.headers()},
            request.content,
        )
        self.requests += 1
        try:
            response = exchange(self.session.context.http, authorized, what)
        finally:
            self.limiter.finish(slot)
        if response.status_code == 401:
            self.session.invalidate()
        if not 200 <= response.status_code < 300:
            raise google_error(response.status_code, response.content, what, response)
        try:
            answer = orjson.loads(response.content or b"{}")
        except orjson.JSONDecodeError:
            raise TransientError(f"{what}: HTTP {response.status_code}, body not JSON") from None
        return answer if isinstance(answer, dict) else {}


def google_error(
    status: int, content: bytes, what: str, response: httpx.Response | None = None
) -> DeliveryError:
    """The error class for a failed call, its message naming Google's reason and field."""
    error = _status(content)
    reason = _reason(error)
    field = _field(error)
    message = scrub(str(error.get("message", "")))
    label = error.get("status") or f"HTTP {status}"
    detail = f"{what}: {label}" + (f" {reason}" if reason else "")
    detail += (f" at {field}" if field else "") + (f": {message}" if message else "")
    if status == 429 or status >= 500 or status == 408:
        wait = retry_after(response) if response is not None else None
        return TransientError(detail, wait)
    if status in (401, 403):
        return AuthError(detail + " — check the credentials and their access to the account")
    match = _RECORD.match(field or "")
    if match:
        return RecordError(detail, reason or str(label), int(match.group(2)))
    if reason in RECORD_REASONS:
        return RecordError(detail, reason, None)
    return PermanentError(detail)


def _status(content: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return {"message": scrub(content.decode("utf-8", "replace"))}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _details(error: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    details = error.get("details")
    return [
        d
        for d in (details if isinstance(details, list) else [])
        if isinstance(d, dict) and str(d.get("@type", "")).endswith(kind)
    ]


def _reason(error: dict[str, Any]) -> str:
    for info in _details(error, "ErrorInfo"):
        if isinstance(info.get("reason"), str):
            return str(info["reason"])
    return ""


def _field(error: dict[str, Any]) -> str:
    for bad in _details(error, "BadRequest"):
        violations = bad.get("fieldViolations")
        for violation in violations if isinstance(violations, list) else []:
            if isinstance(violation, dict) and isinstance(violation.get("field"), str):
                return str(violation["field"])
    return ""
