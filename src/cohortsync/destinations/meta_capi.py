"""Meta Conversions API: conversions sent as server events to one pixel (dataset).

Each conversion becomes one event of `POST {pixel_id}/events`: `event_name` the conversion's
name, `event_time` in Unix seconds, `event_id` the message id (Meta keeps the first of each
name + id within 48 hours, so a resend never counts twice), `user_data` with email, phone and
user id SHA-256-hashed after Meta's normalisation and the browser fields (IP, user agent, `fbc`,
`fbp`) as they are, and `event_source_url` the page address without its user info, query string
and fragment (where shops put emails and phones: `?email=…`), its path cut before a segment
holding an email or phone; `keep_url_query: true` keeps the query, less every parameter holding
one. One invalid event makes Meta refuse the whole request, so records that would be refused
are rejected here, each with its reason, and the rest are still sent: events older than 7 days
(`too_old`), website events without page URL or user agent, purchases without value and
currency, records with no customer information."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from pydantic import field_validator

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
from cohortsync.destinations.customer_data import customer_data, text
from cohortsync.destinations.http import PreparedRequest, json_body
from cohortsync.destinations.meta_graph import GraphConfig, graph_send
from cohortsync.identity.pii import identifier_kinds

MAX_EVENTS = 1_000
MAX_AGE = timedelta(days=7)
AGE_MARGIN = timedelta(minutes=5)
"""Events this close to the 7-day limit are rejected too: the request must arrive in time."""
ActionSource = Literal[
    "email",
    "website",
    "app",
    "phone_call",
    "chat",
    "physical_store",
    "system_generated",
    "business_messaging",
    "other",
]
_JSON = {"Content-Type": "application/json"}


class MetaCapiConfig(GraphConfig):
    """`type: meta_capi`: the pixel (dataset) id, its token, the events' action source."""

    type: Literal["meta_capi"] = "meta_capi"
    pixel_id: str
    action_source: ActionSource = "website"
    test_event_code: str | None = None
    """Sent as `test_event_code` so events show in Events Manager's Test events tab (they still
    count in measurement)."""
    keep_url_query: bool = False
    """Send `event_source_url` with its query string (UTM tags, `fbclid`), less every parameter
    that holds an email or phone; by default the query is left out."""

    @field_validator("pixel_id")
    @classmethod
    def _pixel(cls, value: str) -> str:
        number = value.strip()
        if not number.isdigit():
            raise ValueError("pixel_id must be the pixel (dataset) number, like 987654321012345")
        return number


class MetaCapiDestination(Destination[MetaCapiConfig]):
    """Sends conversions to Meta's Conversions API; receives no audience changes."""

    kind: ClassVar[str] = "meta_capi"
    config_model: ClassVar[type[DestinationConfig]] = MetaCapiConfig
    capabilities = Capabilities(
        identifiers=("email", "phone", "user_id"),
        audiences=False,
        conversions=True,
        removes=False,
        max_batch=MAX_EVENTS,
        rate_limit=RateLimit(),  # counts toward the Marketing API's limits: Graph says when
        ad_platform=True,
        hashed=True,
    )

    def send_conversions(self, batch: ConversionBatch) -> BatchResult:
        """Send the valid conversions, ≤ 1,000 per request; reject the others with a reason."""
        events, rejected = self.plan(batch)
        received = 0
        requests = self.requests(events)
        for index, request in enumerate(requests, start=1):
            what = f"meta_capi {self.context.name}: events request {index}/{len(requests)}"
            answer = graph_send(self.context.http, request, what, self.context.clock())
            if isinstance(answer, dict) and isinstance(answer.get("events_received"), int):
                received += answer["events_received"]
        stats = {"sent": len(events), "requests": len(requests), "events_received": received}
        return BatchResult(rejected=rejected, stats=stats)

    def dry_run(self, batch: Batch | ConversionBatch) -> list[dict[str, Any]]:
        """The `/events` requests `send_conversions` would make, secrets redacted."""
        return self.preview(batch).requests

    def preview(self, batch: Batch | ConversionBatch) -> DryRun:
        """The `/events` requests and the conversions Meta would refuse, with the reasons."""
        if not isinstance(batch, ConversionBatch):
            raise PermanentError("meta_capi receives conversions, not audience changes")
        events, rejected = self.plan(batch)
        return DryRun([request.describe() for request in self.requests(events)], rejected)

    def plan(self, batch: ConversionBatch) -> tuple[list[dict[str, Any]], dict[int, str]]:
        """The events to send, in batch order, and the conversions rejected before sending."""
        now = _aware(self.context.clock())
        events: list[dict[str, Any]] = []
        rejected: dict[int, str] = {}
        for conversion in batch.conversions:
            event, reason = self.event(conversion, now)
            if event is None:
                rejected[conversion.conversion_id] = reason
            else:
                events.append(event)
        return events, rejected

    def event(self, conversion: Conversion, now: datetime) -> tuple[dict[str, Any] | None, str]:
        """One server event for a conversion, or None and why Meta would refuse it."""
        at = _aware(conversion.at)
        if at <= now - MAX_AGE + AGE_MARGIN:
            return None, (
                f"too_old: event_time {at.isoformat()} is more than 7 days before "
                f"{now.isoformat()}; Meta refuses such events"
            )
        context = conversion.context
        user_data = customer_data(
            conversion,
            "meta",
            email="em",
            phone="ph",
            ip="client_ip_address",
            user_agent="client_user_agent",
            click_ids=("fbc", "fbp"),
        )
        if not _matchable(user_data):
            return None, (
                "no customer information Meta can match: needs email, phone, user_id, fbc, "
                "fbp, or both context.ip and context.userAgent"
            )
        event: dict[str, Any] = {
            "event_name": conversion.name,
            "event_time": int(at.timestamp()),
            "event_id": conversion.message_id,
            "action_source": self.settings.action_source,
            "user_data": user_data,
        }
        url = source_url(text(_get(context, "page", "url")), self.settings.keep_url_query)
        if url:
            event["event_source_url"] = url
        if self.settings.action_source == "website" and not (
            url and user_data.get("client_user_agent")
        ):
            return None, (
                "website events need context.page.url and context.userAgent; for server-side "
                "events set action_source (e.g. system_generated) in the destination config"
            )
        custom = _custom_data(conversion)
        if conversion.name == "Purchase" and ("value" not in custom or "currency" not in custom):
            return None, "Purchase events need a value and a currency (ISO 4217, e.g. USD)"
        if custom:
            event["custom_data"] = custom
        return event, ""

    def requests(self, events: list[dict[str, Any]]) -> list[PreparedRequest]:
        """The `/events` requests for these events, ≤ 1,000 each, rendered deterministically."""
        out: list[PreparedRequest] = []
        for start in range(0, len(events), MAX_EVENTS):
            body: dict[str, Any] = {"data": events[start : start + MAX_EVENTS]}
            if self.settings.test_event_code:
                body["test_event_code"] = self.settings.test_event_code
            out.append(
                PreparedRequest(
                    "POST",
                    self.settings.url(f"{self.settings.pixel_id}/events"),
                    self.settings.auth_params(),
                    _JSON,
                    json_body(body),
                )
            )
        return out


def source_url(url: str, keep_query: bool = False) -> str:
    """The page address as Meta may receive it: no user info, query or fragment, and the path
    cut before a segment holding an email or phone; with `keep_query`, the query's parameters
    without such values are kept. "" when `url` is not an http(s) address."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return ""
    if parts.scheme.lower() not in ("http", "https") or not host:
        return ""
    if ":" in host:
        host = f"[{host}]"
    segments = parts.path.split("/")
    for index, segment in enumerate(segments):
        if identifier_kinds(unquote(segment)):
            segments = [*segments[:index], ""]
            break
    query = ""
    if keep_query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        query = urlencode([(k, v) for k, v in pairs if not identifier_kinds(f"{k}={v}")])
    return urlunsplit((parts.scheme.lower(), host + port, "/".join(segments), query, ""))


def _matchable(user_data: Mapping[str, Any]) -> bool:
    """An id Meta can match on, or the IP + user agent pair it accepts in place of one."""
    if set(user_data) & {"em", "ph", "external_id", "fbc", "fbp"}:
        return True
    return "client_ip_address" in user_data and "client_user_agent" in user_data


def _custom_data(conversion: Conversion) -> dict[str, Any]:
    custom: dict[str, Any] = {}
    if conversion.value is not None:
        custom["value"] = conversion.value
    if conversion.currency:
        custom["currency"] = conversion.currency.strip().upper()
    return custom


def _get(mapping: Mapping[str, Any], *path: str) -> Any:
    value: Any = mapping
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _aware(moment: datetime) -> datetime:
    """Naive datetimes are UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
