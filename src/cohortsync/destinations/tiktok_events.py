"""TikTok Events API 2.0: conversions sent as server events to one pixel (`event/track/`).

Each conversion becomes one event: `event` the conversion's name (or the TikTok name
`event_names` maps it to), `event_time` in Unix seconds, `event_id` the message id (TikTok keeps
the first of each event + id within 48 hours, so the pixel's copy and any resend count once),
`user` with email, phone and user id (`external_id`) SHA-256-hashed after TikTok's
normalisation beside the browser fields (IP, user agent, `ttclid`, `ttp`) as they are, and
`page.url` the page address without user info, query string or fragment (where shops put
emails and phones). At most 1,000 events per request; one invalid event makes TikTok refuse the
whole request, so records it could not match are rejected here, each with its reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC
from typing import Any, ClassVar, Literal

from pydantic import Field

from cohortsync.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    Conversion,
    ConversionBatch,
    Destination,
    DestinationConfig,
    DryRun,
    PermanentError,
    RateLimit,
)
from cohortsync.destinations.customer_data import customer_data
from cohortsync.destinations.http import PreparedRequest, json_body
from cohortsync.destinations.meta_capi import source_url
from cohortsync.destinations.tiktok_api import TiktokConfig, tiktok_send
from cohortsync.identity.pii import identifier_kinds

MAX_EVENTS = 1_000
UNMATCHABLE = (
    "no customer information TikTok can match: needs email, phone, user_id, ttclid, ttp, or "
    "both context.ip and context.userAgent"
)


class TiktokEventsConfig(TiktokConfig):
    """`type: tiktok_events`: the pixel (event source) and its token."""

    type: Literal["tiktok_events"] = "tiktok_events"
    pixel_code: str = Field(min_length=1)
    """The pixel's code, sent as `event_source_id`."""
    event_source: Literal["web", "app", "offline", "crm"] = "web"
    test_event_code: str | None = None
    """Sent as `test_event_code`, so events show in Events Manager's Test events tab."""
    event_names: dict[str, str] = Field(default_factory=dict)
    """A conversion's name → TikTok's event name (`{Purchase: CompletePayment}`)."""


class TiktokEventsDestination(Destination[TiktokEventsConfig]):
    """Sends conversions to TikTok's Events API; receives no audience changes."""

    kind: ClassVar[str] = "tiktok_events"
    config_model: ClassVar[type[DestinationConfig]] = TiktokEventsConfig
    capabilities = Capabilities(
        identifiers=("email", "phone", "user_id"),
        audiences=False,
        conversions=True,
        removes=False,
        max_batch=MAX_EVENTS,
        rate_limit=RateLimit(),
        ad_platform=True,
        hashed=True,
    )

    def send_conversions(self, batch: ConversionBatch) -> BatchResult:
        """Send the matchable conversions, ≤ 1,000 per request; reject the others."""
        events, rejected = self.plan(batch)
        requests = self.requests(events)
        for index, request in enumerate(requests, start=1):
            what = f"tiktok_events {self.context.name}: events request {index}/{len(requests)}"
            tiktok_send(self.context.http, request, what)
        return BatchResult(
            rejected=rejected, stats={"sent": len(events), "requests": len(requests)}
        )

    def dry_run(self, batch: Batch | ConversionBatch) -> list[dict[str, Any]]:
        """The `event/track/` requests `send_conversions` would make, the token redacted."""
        return self.preview(batch).requests

    def preview(self, batch: Batch | ConversionBatch) -> DryRun:
        """The requests and the conversions that would be rejected, with the reasons."""
        if not isinstance(batch, ConversionBatch):
            raise PermanentError("tiktok_events receives conversions, not audience changes")
        events, rejected = self.plan(batch)
        return DryRun([request.describe() for request in self.requests(events)], rejected)

    def plan(self, batch: ConversionBatch) -> tuple[list[dict[str, Any]], dict[int, str]]:
        """The events to send, in batch order, and the conversions rejected before sending."""
        events: list[dict[str, Any]] = []
        rejected: dict[int, str] = {}
        for conversion in batch.conversions:
            user = customer_data(
                conversion,
                "tiktok",
                email="email",
                phone="phone",
                ip="ip",
                user_agent="user_agent",
                click_ids=("ttclid", "ttp"),
            )
            if not _matchable(user):
                rejected[conversion.conversion_id] = UNMATCHABLE
                continue
            events.append(self.event(conversion, user))
        return events, rejected

    def event(self, conversion: Conversion, user: dict[str, Any]) -> dict[str, Any]:
        """One Events API event for a conversion."""
        at = conversion.at if conversion.at.tzinfo else conversion.at.replace(tzinfo=UTC)
        event: dict[str, Any] = {
            "event": self.settings.event_names.get(conversion.name, conversion.name),
            "event_time": int(at.timestamp()),
            "event_id": conversion.message_id,
            "user": user,
        }
        properties = _properties(conversion)
        if properties:
            event["properties"] = properties
        page = _get(conversion.context, "page", "url")
        url = source_url(page.strip() if isinstance(page, str) else "")
        if url:
            event["page"] = {"url": url}
        return event

    def requests(self, events: list[dict[str, Any]]) -> list[PreparedRequest]:
        """The `event/track/` requests, ≤ 1,000 events each, rendered deterministically."""
        out: list[PreparedRequest] = []
        for start in range(0, len(events), MAX_EVENTS):
            body: dict[str, Any] = {
                "event_source": self.settings.event_source,
                "event_source_id": self.settings.pixel_code,
                "data": events[start : start + MAX_EVENTS],
            }
            if self.settings.test_event_code:
                body["test_event_code"] = self.settings.test_event_code
            out.append(
                PreparedRequest(
                    "POST",
                    self.settings.url("event/track/"),
                    {},
                    self.settings.headers(),
                    json_body(body),
                )
            )
        return out


def _matchable(user: Mapping[str, Any]) -> bool:
    """An id TikTok can match on, or the IP + user agent pair."""
    if set(user) & {"email", "phone", "external_id", "ttclid", "ttp"}:
        return True
    return "ip" in user and "user_agent" in user


def _properties(conversion: Conversion) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    if conversion.value is not None:
        properties["value"] = conversion.value
    if conversion.currency:
        properties["currency"] = conversion.currency.strip().upper()
    order_id = conversion.properties.get("order_id")
    plain = isinstance(order_id, str | int) and not isinstance(order_id, bool)
    if plain and not identifier_kinds(str(order_id)):  # an id holding an email stays home
        properties["order_id"] = str(order_id)
    return properties


def _get(mapping: Mapping[str, Any], *path: str) -> Any:
    value: Any = mapping
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value
