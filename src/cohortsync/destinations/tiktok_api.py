"""What both TikTok destinations share: Business API settings, the `Access-Token` header, and
reading TikTok's answers, which come with HTTP 200 even when they refuse.

Every answer is `{"code", "message", "request_id", "data"}`; only `code == 0` acknowledges
(more-destinations.md §2.1, the codes of TikTok's SDK `tiktok_code.py`). Rate limits (40100,
40132), partial success (20001: which records failed is not said, and a resend is harmless)
and system errors (5xxxx) are retried; token errors (40102, 40104, 40105) and a refused
permission (40001) pause the destination; 40062 (PII not hashed) is a defect of the sender,
refused for good and logged as an alarm; any other code is permanent.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from pydantic import ConfigDict, SecretStr, field_validator

from cohortsync.destinations.base import (
    AuthError,
    DeliveryError,
    DestinationConfig,
    PermanentError,
    TransientError,
)
from cohortsync.destinations.http import PreparedRequest, check, exchange, retry_after, scrub
from cohortsync.identity.log_scrub import scrubbed_logger

BASE_URL = "https://business-api.tiktok.com"
API_PATH = "/open_api/v1.3"
RATE_LIMIT_CODES = frozenset({40100, 40132})
AUTH_CODES = frozenset({40001, 40102, 40104, 40105})
PII_NOT_HASHED = 40062
PARTIAL_OK = 20001
log = scrubbed_logger("cohortsync.destinations.tiktok")


class UnhashedPiiError(PermanentError):
    """TikTok refused identifiers as not hashed (40062): a defect, never retried."""


class TiktokConfig(DestinationConfig):
    """Settings both TikTok destinations take: the token and the API address."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)
    access_token: SecretStr
    """The advertiser's long-lived Business API token, e.g. `${TIKTOK_TOKEN}`."""
    base_url: str = BASE_URL
    """Another host (a regional one, a proxy, a fake); `/open_api/v1.3` is added to it."""

    @field_validator("access_token")
    @classmethod
    def _token(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("access_token is empty: set it to the token, e.g. ${TIKTOK_TOKEN}")
        return value

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) address such as {BASE_URL}")
        return value.rstrip("/")

    def url(self, path: str) -> str:
        """The full address of an endpoint (`segment/mapping/`)."""
        return f"{self.base_url}{API_PATH}/{path.lstrip('/')}"

    def headers(self) -> dict[str, str]:
        """`Access-Token` and the JSON content type."""
        return {
            "Access-Token": self.access_token.get_secret_value(),
            "Content-Type": "application/json",
        }


def tiktok_send(client: httpx.Client, request: PreparedRequest, what: str) -> Any:
    """Send a request and return the answer's `data`, or raise the error its code calls for."""
    response = exchange(client, request, what)
    answer = _answer(response)
    status = response.status_code
    if not 200 <= status < 300:
        # The HTTP status decides for auth, throttling and outages; TikTok's code for the rest.
        if answer is not None and status not in (401, 403, 408, 429) and status < 500:
            raise tiktok_error(answer, what, response)
        check(response, what)
    if answer is None:
        raise TransientError(f"{what}: HTTP {response.status_code} without TikTok's envelope")
    if answer.get("code") == 0:
        return answer.get("data")
    raise tiktok_error(answer, what, response)


def tiktok_error(answer: dict[str, Any], what: str, response: httpx.Response) -> DeliveryError:
    """The error class of a refusal, by its `code`."""
    code = answer.get("code")
    detail = f"{what}: TikTok code {code}: {scrub(str(answer.get('message', '')))}"
    if code in RATE_LIMIT_CODES:
        return TransientError(detail + " (rate limited)", retry_after(response))
    if code == PARTIAL_OK or (isinstance(code, int) and code >= 50000):
        return TransientError(detail, retry_after(response))
    if code in AUTH_CODES:
        return AuthError(detail + " — renew access_token and check its advertiser access")
    if code == PII_NOT_HASHED:
        log.error(
            "ALARM %s: TikTok refused identifiers as not hashed (code 40062); the batch is "
            "dead-lettered: cohortsync must never send them unhashed, report this defect",
            what,
        )
        return UnhashedPiiError(detail + " — identifiers left unhashed: a defect, not retried")
    return PermanentError(detail)


def _answer(response: httpx.Response) -> dict[str, Any] | None:
    """The envelope, if the body is one."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    code = body.get("code")
    return body if isinstance(code, int) and not isinstance(code, bool) else None
