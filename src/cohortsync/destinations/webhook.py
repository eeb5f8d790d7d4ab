"""Webhook destination: audience changes and conversions POSTed as signed Standard Webhooks.

Each batch is one `POST` to the configured `url` with a JSON body

    {"type": "audience.changes", "timestamp": "...", "data": {"batch_id": "...", "audience": "...",
     "changes": [{"change_id": 1, "operation": "add", "profile_id": "...", "holdout": false,
                  "at": "...", "identifiers": {"email": "ada@example.com", "user_id": "u1"}}]}}

(conversions: `"type": "conversions"`, `data.conversions`). Identifiers are sent as cohortsync
holds them, normalised but not hashed: a webhook goes to the user's own systems, not to an ad
platform. Holdout members are included with `holdout: true`.

The body is rendered from the batch alone (sorted keys, `timestamp` = the latest record's time),
so a retry sends identical bytes. `webhook-id` is the batch id, the same on every retry: receivers
deduplicate on it. `webhook-timestamp` is the time of this attempt and `webhook-signature` is
recomputed for it (verify with `cohortsync.destinations.signing.verify`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import ConfigDict, Field, SecretStr, field_validator

from cohortsync import __version__
from cohortsync.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    Change,
    Conversion,
    ConversionBatch,
    Destination,
    DestinationConfig,
    DryRun,
    PermanentError,
    RateLimit,
    usable,
)
from cohortsync.destinations.http import PreparedRequest, check, exchange, json_body
from cohortsync.destinations.signing import SecretError, secret_key, sign

RESERVED_HEADERS = frozenset(
    {"webhook-id", "webhook-timestamp", "webhook-signature", "content-type", "content-length"}
)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class WebhookConfig(DestinationConfig):
    """`type: webhook`: where to POST, the `whsec_` signing secret, extra headers, a timeout."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)
    type: Literal["webhook"] = "webhook"
    url: str
    secret: SecretStr
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=15.0, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "url must be an http:// or https:// address such as https://hooks.example.com/cohortsync"
            )
        return value

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: SecretStr) -> SecretStr:
        try:
            secret_key(value.get_secret_value())
        except SecretError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("headers")
    @classmethod
    def _extra_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(
                    f"header {name!r} is set by cohortsync on every request: remove it from headers"
                )
        return value


class WebhookDestination(Destination[WebhookConfig]):
    """POSTs each batch of changes or conversions, signed, to one URL."""

    kind: ClassVar[str] = "webhook"
    config_model: ClassVar[type[DestinationConfig]] = WebhookConfig
    capabilities = Capabilities(
        identifiers=("user_id", "email", "phone", "anonymous_id"),
        conversions=True,
        max_batch=500,
        rate_limit=RateLimit(),  # the receiver's own: it may answer 429 with Retry-After
    )

    def apply(self, batch: Batch) -> BatchResult:
        """POST the usable changes; those without any identifier are rejected, not sent."""
        kept, rejected = self._split(batch.changes)
        if kept:
            self._post(self.request(batch), f"webhook {self.context.name}")
        return BatchResult(rejected=rejected, stats={"sent": len(kept)})

    def send_conversions(self, batch: ConversionBatch) -> BatchResult:
        """POST the usable conversions as one `conversions` webhook."""
        kept, rejected = self._split(batch.conversions)
        if kept:
            self._post(self.request(batch), f"webhook {self.context.name}")
        return BatchResult(rejected=rejected, stats={"sent": len(kept)})

    def dry_run(self, batch: Batch | ConversionBatch) -> list[dict[str, Any]]:
        """The request `apply`/`send_conversions` would make; extra header values and URL
        credentials are redacted."""
        records = batch.changes if isinstance(batch, Batch) else batch.conversions
        if not self._split(records)[0]:
            return []
        described = self.request(batch).describe()
        described["url"] = _redacted_url(self.settings.url)
        described["headers"] = {
            name: ("***" if name in self.settings.headers else value)
            for name, value in described["headers"].items()
        }
        return [described]

    def preview(self, batch: Batch | ConversionBatch) -> DryRun:
        """The request and the records left out of it for want of any identifier."""
        records = batch.changes if isinstance(batch, Batch) else batch.conversions
        return DryRun(self.dry_run(batch), self._split(records)[1])

    def body(self, batch: Batch | ConversionBatch) -> bytes:
        """The exact body bytes for a batch: the same for every attempt."""
        if isinstance(batch, Batch):
            changes = self._split(batch.changes)[0]
            payload: dict[str, Any] = {
                "type": "audience.changes",
                "timestamp": _latest(changes),
                "data": {
                    "batch_id": batch.batch_id,
                    "audience": batch.audience,
                    "changes": [_change(change) for change in changes],
                },
            }
        else:
            conversions = self._split(batch.conversions)[0]
            payload = {
                "type": "conversions",
                "timestamp": _latest(conversions),
                "data": {
                    "batch_id": batch.batch_id,
                    "conversions": [_conversion(conversion) for conversion in conversions],
                },
            }
        return json_body(payload)

    def request(self, batch: Batch | ConversionBatch) -> PreparedRequest:
        """This attempt's request: the batch's body, signed at the current clock."""
        content = self.body(batch)
        timestamp = int(self.context.clock().timestamp())
        secret = self.settings.secret.get_secret_value()
        headers = {
            **self.settings.headers,
            "content-type": "application/json",
            "user-agent": f"cohortsync/{__version__}",
            "webhook-id": batch.batch_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, batch.batch_id, timestamp, content),
        }
        return PreparedRequest("POST", self.settings.url, headers=headers, content=content)

    def _split(
        self, records: Sequence[Change] | Sequence[Conversion]
    ) -> tuple[list[Any], dict[int, str]]:
        kept: list[Any] = []
        rejected: dict[int, str] = {}
        for record in records:
            if usable(record, self.capabilities.identifiers):
                kept.append(record)
            else:
                record_id = record.change_id if isinstance(record, Change) else record.conversion_id
                rejected[record_id] = "no user_id, email, phone or anonymous_id to send"
        return kept, rejected

    def _post(self, request: PreparedRequest, what: str) -> None:
        response = exchange(self.context.http, request, what, self.settings.timeout)
        if response.status_code == 410:
            raise PermanentError(
                f"{what}: HTTP 410 Gone: the endpoint asked to be disabled; remove this "
                "destination or point url at a live receiver"
            )
        if 300 <= response.status_code < 400:
            raise PermanentError(
                f"{what}: HTTP {response.status_code} redirect, not followed: set url to the "
                "final address"
            )
        check(response, what)


def _iso(at: datetime) -> str:
    """UTC ISO-8601 with microseconds and `Z`; naive times are taken as UTC."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    elif at.utcoffset():
        at = at.astimezone(UTC)
    return at.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _latest(records: Sequence[Change] | Sequence[Conversion]) -> str | None:
    latest = max((_utc(record.at) for record in records), default=None)
    return None if latest is None else _iso(latest)


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _change(change: Change) -> dict[str, Any]:
    return {
        "change_id": change.change_id,
        "operation": change.op,
        "profile_id": change.profile_id,
        "holdout": change.holdout,
        "at": _iso(change.at),
        "identifiers": dict(change.identifiers),
    }


def _conversion(conversion: Conversion) -> dict[str, Any]:
    return {
        "conversion_id": conversion.conversion_id,
        "message_id": conversion.message_id,
        "name": conversion.name,
        "event": conversion.event,
        "at": _iso(conversion.at),
        "profile_id": conversion.profile_id,
        "identifiers": dict(conversion.identifiers),
        "value": conversion.value,
        "currency": conversion.currency,
        "properties": dict(conversion.properties),
        "context": dict(conversion.context),
    }


def _redacted_url(url: str) -> str:
    """The URL without user-info and with query values hidden (they often carry tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    if parts.username or parts.password:
        netloc = "***@" + netloc
    query = "&".join(f"{pair.partition('=')[0]}=***" for pair in parts.query.split("&") if pair)
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
