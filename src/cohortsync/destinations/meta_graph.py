"""What every Meta destination shares: Graph API settings, authentication and error mapping.

Graph answers failures with one envelope, `{"error": {"code", "error_subcode", "message", …}}`,
and the code, not the HTTP status, tells whether to retry: throttling (4, 17, 32, 613, 80003,
80004) usually comes back as HTTP 400. `graph_send` maps each code to cohortsync's error
classes and reads how long to wait from `Retry-After` or from the `X-Business-Use-Case-Usage`
header's `estimated_time_to_regain_access` (minutes).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from pydantic import AliasChoices, ConfigDict, Field, SecretStr, field_validator

from cohortsync.destinations.base import (
    AuthError,
    DeliveryError,
    DestinationConfig,
    PermanentError,
    TransientError,
)
from cohortsync.destinations.http import PreparedRequest, check, exchange, retry_after, scrub

GRAPH_URL = "https://graph.facebook.com"
GRAPH_VERSION = "v25.0"
TRANSIENT_CODES = frozenset({1, 2, 4, 17, 32, 368, 613, 80003, 80004})
"""Unknown/temporary errors and rate limits: retry after a pause."""
AUTH_CODES = frozenset({102, 190})
"""Session or access token invalid or expired: pause the destination until it is fixed."""
REPLACE_RUNNING = (2650, 1870145)
"""A replace session runs on the audience (destinations.md §1.7): it takes edits again once the
session ends, within 90 minutes, so the edit is retried rather than refused."""
PERMANENT_CODES = frozenset({100, 105, 194, 294, 2635, *range(200, 300)})
"""Invalid or missing parameters, permissions, deprecated version: the same request never works."""
_VERSION = re.compile(r"v\d+\.\d+")


class GraphConfig(DestinationConfig):
    """Settings every Meta destination takes: token, optional app secret, API address."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)
    access_token: SecretStr
    app_secret: SecretStr | None = None
    """When set, every call carries `appsecret_proof` (required by apps that enforce it)."""
    api_url: str = Field(default=GRAPH_URL, validation_alias=AliasChoices("api_url", "base_url"))
    """Where Graph is reached (a proxy, a fake); `base_url` is read as the same setting."""
    api_version: str = Field(default=GRAPH_VERSION)

    @field_validator("access_token")
    @classmethod
    def _token(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError(
                "access_token is empty: set it to a system user token, e.g. ${META_TOKEN}"
            )
        return value

    @field_validator("api_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"api_url must be an http(s) address such as {GRAPH_URL}")
        return value.rstrip("/")

    @field_validator("api_version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not _VERSION.fullmatch(value):
            raise ValueError(f"api_version must look like {GRAPH_VERSION}")
        return value

    def url(self, path: str) -> str:
        """The full address of a Graph node or edge (`act_1/customaudiences`)."""
        return f"{self.api_url}/{self.api_version}/{path.lstrip('/')}"

    def auth_params(self) -> dict[str, str]:
        """`access_token`, and `appsecret_proof` when an app secret is configured."""
        token = self.access_token.get_secret_value()
        params = {"access_token": token}
        if self.app_secret is not None:
            params["appsecret_proof"] = appsecret_proof(self.app_secret.get_secret_value(), token)
        return params


def appsecret_proof(app_secret: str, access_token: str) -> str:
    """HMAC-SHA256 of the access token keyed by the app secret, as lowercase hex."""
    return hmac.new(app_secret.encode(), access_token.encode(), hashlib.sha256).hexdigest()


def graph_send(
    client: httpx.Client, request: PreparedRequest, what: str, now: datetime | None = None
) -> Any:
    """Send a Graph request and return its parsed JSON body, or raise the error its outcome
    calls for (see `graph_error`)."""
    response = exchange(client, request, what)
    if not 200 <= response.status_code < 300:
        raise graph_error(response, what, now)
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise TransientError(
            f"{what}: HTTP {response.status_code} with a body that is not JSON: "
            f"{scrub(response.text)}"
        ) from None


def graph_error(response: httpx.Response, what: str, now: datetime | None = None) -> DeliveryError:
    """The error class for a failed Graph call: by the envelope's code, else by HTTP status."""
    error = _envelope(response) or {}
    code = error.get("code")
    if not isinstance(code, int) or isinstance(code, bool):
        try:
            check(response, what)
        except DeliveryError as exc:
            return exc
        return PermanentError(f"{what}: HTTP {response.status_code}")
    subcode = error.get("error_subcode")
    label = f"code {code}" + (f"/{subcode}" if isinstance(subcode, int) else "")
    detail = (
        f"{what}: Graph error {label} (HTTP {response.status_code}): "
        f"{scrub(str(error.get('message', '')))}"
    )
    if code in TRANSIENT_CODES or (code, subcode) == REPLACE_RUNNING:
        return TransientError(detail, wait_seconds(response, now))
    if code in AUTH_CODES:
        return AuthError(detail + " — renew access_token and check the system user's access")
    if code in PERMANENT_CODES:
        return PermanentError(detail)
    if error.get("is_transient") is True:
        return TransientError(detail, wait_seconds(response, now))
    try:
        check(response, what)
    except TransientError as exc:
        return TransientError(detail, exc.retry_after)
    except AuthError:
        return AuthError(detail)
    return PermanentError(detail)


def wait_seconds(response: httpx.Response, now: datetime | None = None) -> float | None:
    """How long Graph asked us to wait: `Retry-After`, else the longest
    `estimated_time_to_regain_access` (minutes) in `X-Business-Use-Case-Usage`."""
    seconds = retry_after(response, now)
    if seconds is not None:
        return seconds
    raw = response.headers.get("x-business-use-case-usage")
    if not raw:
        return None
    try:
        usage = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    minutes = [
        entry.get("estimated_time_to_regain_access")
        for entries in (usage.values() if isinstance(usage, dict) else ())
        if isinstance(entries, list)
        for entry in entries
        if isinstance(entry, dict)
    ]
    waits = [float(m) for m in minutes if isinstance(m, int | float) and m > 0]
    return max(waits) * 60 if waits else None


def _envelope(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None
