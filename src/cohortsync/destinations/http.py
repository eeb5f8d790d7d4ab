"""HTTP for destinations: prepared requests that resend byte for byte, and status → error class.

Timeouts, connection failures, 429 and 5xx become `TransientError` (with `Retry-After` read in
seconds or as an HTTP date); 401/403 become `AuthError`; any other 4xx `PermanentError`. Error
messages carry the status and a short, scrubbed excerpt of the body, never the request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson

from cohortsync.destinations.base import AuthError, PermanentError, TransientError
from cohortsync.identity.log_scrub import SECRET_NAMES, scrubbed_logger
from cohortsync.identity.pii import scrub_identifiers

SECRET_PARAMS = frozenset(SECRET_NAMES)
scrubbed_logger("httpx")  # its INFO lines carry request URLs, with access_token for Graph
SECRET_HEADERS = frozenset({"authorization", "access-token", "x-api-key"})
EXCERPT = 300
SCANNED = 4_000
"""How much of a body `scrub` reads: more than the excerpt, as replacing shortens the text."""


@dataclass(frozen=True)
class PreparedRequest:
    """One request, fully rendered: sending it twice sends the same bytes."""

    method: str
    url: str
    params: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    content: bytes = b""

    def describe(self) -> dict[str, Any]:
        """A JSON-able form for dry runs, with secrets redacted and JSON bodies decoded."""
        params = {k: ("***" if k in SECRET_PARAMS else v) for k, v in self.params.items()}
        headers = {
            k: ("***" if k.lower() in SECRET_HEADERS else v) for k, v in self.headers.items()
        }
        body: Any = self.content.decode("utf-8", "replace")
        if self.content[:1] in (b"{", b"["):
            body = orjson.loads(self.content)
        url = self.url + ("?" + urlencode(params) if params else "")
        return {"method": self.method, "url": url, "headers": headers, "body": body}


def json_body(value: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys) so a resent request is identical."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def scrub(text: str) -> str:
    """A short excerpt of `text` for error messages, every email and phone number replaced.

    Identifiers are found in every form the normaliser accepts, URL-encoded ones included
    (`identity/pii.py` says which numbers read as phones). The first `SCANNED` characters are
    scrubbed, then cut to `EXCERPT`.
    """
    return scrub_identifiers(text[:SCANNED])[:EXCERPT]


def retry_after(response: httpx.Response, now: datetime | None = None) -> float | None:
    """Seconds to wait from `Retry-After` (delta seconds or HTTP date), or None."""
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    if raw.isdigit():
        return float(raw)
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def exchange(
    client: httpx.Client, request: PreparedRequest, what: str, timeout: float | None = None
) -> httpx.Response:
    """Send once, redirects not followed; a timeout or connection failure is transient."""
    try:
        return client.request(
            request.method,
            request.url,
            params=dict(request.params) or None,
            headers=dict(request.headers),
            content=request.content or None,
            timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            follow_redirects=False,
        )
    except httpx.TimeoutException as exc:
        within = f" within {timeout:g} s" if timeout is not None else ""
        raise TransientError(
            f"{what}: no answer{within} ({type(exc).__name__}); a slow receiver should answer "
            "before it processes"
        ) from None
    except httpx.TransportError as exc:
        raise TransientError(f"{what}: connection failed ({type(exc).__name__})") from None


def send(
    client: httpx.Client, request: PreparedRequest, what: str, timeout: float | None = None
) -> httpx.Response:
    """Send and return a 2xx response, or raise the error class its outcome calls for."""
    response = exchange(client, request, what, timeout)
    check(response, what)
    return response


def check(response: httpx.Response, what: str) -> None:
    """Raise for a non-2xx response: transient, auth or permanent."""
    status = response.status_code
    if 200 <= status < 300:
        return
    detail = f"{what}: HTTP {status}: {scrub(response.text)}"
    if status == 429 or status >= 500 or status == 408:
        raise TransientError(detail, retry_after(response))
    if status in (401, 403):
        raise AuthError(detail)
    raise PermanentError(detail)
