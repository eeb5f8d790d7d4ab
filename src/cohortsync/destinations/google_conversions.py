"""Google Ads conversions through the Data Manager API (`events:ingest`, §1.7).

Each conversion becomes one event for the configured conversion action: `transactionId` the
message id (Google counts one conversion per transaction id, so a resend never counts twice),
`eventTimestamp` in RFC 3339, `conversionValue` and `currency`, the click ids `gclid`, `gbraid`
and `wbraid` from the event's properties, its context or its page URL's query, and the email
and phone SHA-256-hashed after Google's normalisation (`encoding: HEX`), with the configured
consent. ≤ 2,000 events per request; one invalid event makes Google refuse the whole request,
so events it would refuse are rejected here, and one it refuses anyway is isolated by splitting
the request (`google_isolate.py`) and rejected with Google's reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import field_validator

from cohortsync.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    Conversion,
    ConversionBatch,
    DestinationConfig,
    DryRun,
    PermanentError,
    RateLimit,
)
from cohortsync.destinations.google_auth import GoogleConfig
from cohortsync.destinations.google_destination import GoogleDestination
from cohortsync.destinations.google_identifiers import user_identifiers
from cohortsync.destinations.google_isolate import deliver
from cohortsync.destinations.http import PreparedRequest

MAX_EVENTS = 2_000
CLICK_IDS = ("gclid", "gbraid", "wbraid")
NO_IDENTIFIER = (
    "no identifier Google can match: needs an email, a phone, or a click id "
    "(gclid, gbraid, wbraid) in the event's properties or context"
)
EventSource = Literal["WEB", "APP", "IN_STORE", "PHONE", "MESSAGE", "OTHER"]
_CURRENCY = re.compile(r"[A-Z]{3}")


class GoogleConversionsConfig(GoogleConfig):
    """`type: google_conversions`: the account, credentials, conversion action and consent."""

    type: Literal["google_conversions"] = "google_conversions"
    conversion_action_id: str
    """The Google Ads conversion action the events count toward (`productDestinationId`)."""
    event_source: EventSource = "WEB"

    @field_validator("conversion_action_id")
    @classmethod
    def _action(cls, value: str) -> str:
        number = value.strip()
        if not number.isdigit():
            raise ValueError("conversion_action_id must be the conversion action's number")
        return number


@dataclass(frozen=True)
class Event:
    """One conversion as it is sent: its id and the event object."""

    conversion_id: int
    body: dict[str, Any]


class GoogleConversionsDestination(GoogleDestination[GoogleConversionsConfig]):
    """Sends conversions to a Google Ads conversion action; receives no audience changes."""

    kind: ClassVar[str] = "google_conversions"
    config_model: ClassVar[type[DestinationConfig]] = GoogleConversionsConfig
    capabilities = Capabilities(
        identifiers=("email", "phone"),
        audiences=False,
        conversions=True,
        removes=False,
        max_batch=MAX_EVENTS,
        rate_limit=RateLimit(per_second=5.0),
        ad_platform=True,
        hashed=True,
    )

    def send_conversions(self, batch: ConversionBatch) -> BatchResult:
        """Send the valid conversions, ≤ 2,000 per request; reject the others with a reason."""
        events, rejected = self.plan(batch)
        if not events:
            return BatchResult(rejected=rejected, stats={"sent": 0, "requests": 0})
        what = f"google_conversions {self.context.name}: events"
        done = deliver(events, _conversion_id, self._sender(what), MAX_EVENTS)
        rejected.update(done.rejected)
        ids = [str(a["requestId"]) for a in done.answers if a.get("requestId")]
        self.remember(batch.batch_id, None, ids)
        stats = {"sent": len(done.delivered), "requests": done.requests}
        return BatchResult(rejected=rejected, retry=done.retry, stats=stats)

    def _sender(self, what: str) -> Callable[[Sequence[Event]], dict[str, Any]]:
        def send(chunk: Sequence[Event]) -> dict[str, Any]:
            return self.client.call(self.request(chunk), what)

        return send

    def dry_run(self, batch: Batch | ConversionBatch) -> list[dict[str, Any]]:
        """The `events:ingest` requests `send_conversions` would make, authorization left out."""
        return self.preview(batch).requests

    def preview(self, batch: Batch | ConversionBatch) -> DryRun:
        """The requests and the conversions refused before sending, with the reasons."""
        if not isinstance(batch, ConversionBatch):
            raise PermanentError("google_conversions receives conversions, not audience changes")
        events, rejected = self.plan(batch)
        requests = [
            self.request(events[i : i + MAX_EVENTS]).describe()
            for i in range(0, len(events), MAX_EVENTS)
        ]
        return DryRun(requests, rejected)

    def plan(self, batch: ConversionBatch) -> tuple[list[Event], dict[int, str]]:
        """The events to send, in batch order, and the conversions rejected before sending."""
        events: list[Event] = []
        rejected: dict[int, str] = {}
        for conversion in batch.conversions:
            event, reason = self.event(conversion)
            if event is None:
                rejected[conversion.conversion_id] = reason
            else:
                events.append(Event(conversion.conversion_id, event))
        return events, rejected

    def event(self, conversion: Conversion) -> tuple[dict[str, Any] | None, str]:
        """One `events[]` entry for a conversion, or None and why Google would refuse it."""
        identifiers = user_identifiers(conversion.identifiers, self.settings.default_region)
        clicks = click_ids(conversion.properties, conversion.context)
        if not identifiers and not clicks:
            return None, NO_IDENTIFIER
        event: dict[str, Any] = {
            "transactionId": conversion.message_id,
            "eventTimestamp": rfc3339(conversion.at),
            "eventSource": self.settings.event_source,
        }
        if conversion.value is not None:
            event["conversionValue"] = conversion.value
        if conversion.currency:
            currency = conversion.currency.strip().upper()
            if not _CURRENCY.fullmatch(currency):
                return None, "currency must be an ISO 4217 code such as USD"
            event["currency"] = currency
        if identifiers:
            event["userData"] = {"userIdentifiers": identifiers}
        if clicks:
            event["adIdentifiers"] = clicks
        return event, ""

    def request(self, events: Sequence[Event]) -> PreparedRequest:
        """The exact `events:ingest` request for these events."""
        body: dict[str, Any] = {
            "destinations": [self.settings.destination(self.settings.conversion_action_id)],
            "events": [e.body for e in events],
        }
        if any("userData" in e.body for e in events):
            body["encoding"] = "HEX"
        consent = self.settings.consent()
        if consent:
            body["consent"] = consent
        return self.client.prepare("POST", "v1/events:ingest", body)


def click_ids(properties: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, str]:
    """`gclid`, `gbraid`, `wbraid`: from the properties, else the context (or its campaign),
    else the page URL's query string."""
    page = context.get("page")
    url = page.get("url") if isinstance(page, Mapping) else None
    query = dict(parse_qsl(urlsplit(url).query)) if isinstance(url, str) else {}
    campaign = context.get("campaign")
    found: dict[str, str] = {}
    for key in CLICK_IDS:
        for source in (properties, context, campaign, query):
            value = source.get(key) if isinstance(source, Mapping) else None
            if isinstance(value, str) and value.strip():
                found[key] = value.strip()
                break
    return found


def rfc3339(moment: datetime) -> str:
    """UTC RFC 3339 with a `Z` (naive datetimes are UTC)."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _conversion_id(event: Event) -> int:
    return event.conversion_id
