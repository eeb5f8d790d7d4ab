"""Conversions API events: validation of a `/events` request and the 48-hour dedupe ledger.

Rules from destinations.md §2: at most 1,000 events; any invalid event refuses the whole request
(nothing is processed); `event_time` at most 7 days old (62 for `physical_store`); required
`event_name`, `event_time`, `action_source` (enum), `user_data`; `website` events also need
`event_source_url` and `user_data.client_user_agent`; hashed `user_data` keys are 64 lowercase
hex (`external_id` too, for an account that promised hashed ids), and `client_ip_address`,
`client_user_agent`, `fbc`, `fbp` are never hashed. Events with the
same `event_name` and `event_id` within 48 hours count once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from tests.fakes.graph import GraphError, invalid

MAX_EVENTS = 1_000
MAX_AGE = timedelta(days=7)
MAX_AGE_PHYSICAL_STORE = timedelta(days=62)
DEDUPE_WINDOW = timedelta(hours=48)
ACTION_SOURCES = frozenset(
    {
        "email",
        "website",
        "app",
        "phone_call",
        "chat",
        "physical_store",
        "system_generated",
        "business_messaging",
        "other",
    }
)
HASHED = frozenset({"em", "ph", "fn", "ln", "db", "ge", "ct", "st", "zp", "country"})
NEVER_HASHED = frozenset({"client_ip_address", "client_user_agent", "fbc", "fbp"})
CUSTOMER_KEYS = (
    HASHED
    | NEVER_HASHED
    | {
        "external_id",
        "subscription_id",
        "fb_login_id",
        "lead_id",
        "anon_id",
        "madid",
        "page_id",
        "page_scoped_user_id",
        "ctwa_clid",
        "ig_account_id",
        "ig_sid",
    }
)
# user_data key → Custom Audiences column, for the badly-normalised check of known people.
COLUMNS = {"em": "EMAIL", "ph": "PHONE", "fn": "FN", "ln": "LN"}
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
FB_COOKIE = re.compile(r"fb\.\d+\.\d+\..+")

Suspect = Callable[[str, str], bool]


def parse_events(
    raw: Any, now: datetime, suspect: Suspect, *, hashed_external_id: bool = False
) -> list[dict[str, Any]]:
    """The events of a request, every one valid, or a Graph error refusing them all; with
    `hashed_external_id`, `user_data.external_id` must be SHA-256 hashes."""
    if not isinstance(raw, list) or not raw:
        raise invalid("Param data must be a non-empty list of events", title="Missing data")
    if len(raw) > MAX_EVENTS:
        raise invalid(
            f"Param data has {len(raw)} events; send at most {MAX_EVENTS} per request",
            title="Too many events",
        )
    events = [_event_object(item, index) for index, item in enumerate(raw)]
    hashed = HASHED | {"external_id"} if hashed_external_id else HASHED
    for index, event in enumerate(events):
        check_event(event, index, now, suspect, hashed)
    return events


def check_event(
    event: dict[str, Any],
    index: int,
    now: datetime,
    suspect: Suspect,
    hashed: frozenset[str] = HASHED,
) -> None:
    """Refuse the request if this event breaks a rule of §2, naming the field at fault;
    `hashed` are the user_data keys that must be SHA-256 hashes."""
    where = f"data[{index}]"
    name = event.get("event_name")
    if not isinstance(name, str) or not name:
        raise _missing(f"{where}.event_name")
    _check_time(event.get("event_time"), event.get("action_source"), where, now)
    source = event.get("action_source")
    if source not in ACTION_SOURCES:
        raise invalid(
            f"{where}.action_source must be one of {', '.join(sorted(ACTION_SOURCES))}",
            title="Invalid action_source",
        )
    user_data = event.get("user_data")
    if not isinstance(user_data, dict) or not set(user_data) & CUSTOMER_KEYS:
        raise _missing(f"{where}.user_data (at least one customer information parameter)")
    if source == "website":
        if not event.get("event_source_url"):
            raise _missing(f"{where}.event_source_url (required for website events)")
        if not user_data.get("client_user_agent"):
            raise _missing(f"{where}.user_data.client_user_agent (required for website events)")
    for key, value in user_data.items():
        _check_user_data(key, value, f"{where}.user_data.{key}", suspect, hashed)


@dataclass
class EventLedger:
    """Every event received, and the ones that count after the 48-hour dedupe."""

    received: list[dict[str, Any]] = field(default_factory=list)
    effective: list[dict[str, Any]] = field(default_factory=list)
    first_seen: dict[tuple[str, str, str], datetime] = field(default_factory=dict)

    def record(self, pixel_id: str, events: list[dict[str, Any]], now: datetime) -> None:
        """Keep every event; count one as effective unless its (name, id) was seen < 48 h ago."""
        for event in events:
            self.received.append(event)
            event_id = event.get("event_id")
            if event_id is None:
                self.effective.append(event)
                continue
            key = (pixel_id, str(event["event_name"]), str(event_id))
            seen = self.first_seen.get(key)
            if seen is None or now - seen >= DEDUPE_WINDOW:
                self.first_seen[key] = now
                self.effective.append(event)


def _event_object(item: Any, index: int) -> dict[str, Any]:
    """One element of `data`: an object, or the JSON text of one (the SDK's form)."""
    if isinstance(item, str):
        try:
            item = orjson.loads(item)
        except orjson.JSONDecodeError:
            raise invalid(f"data[{index}] is not valid JSON") from None
    if not isinstance(item, dict):
        raise invalid(f"data[{index}] must be an event object")
    return item


def _check_time(value: Any, source: Any, where: str, now: datetime) -> None:
    """`event_time` in Unix seconds, not older than the platform allows."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _missing(f"{where}.event_time (Unix seconds)")
    limit = MAX_AGE_PHYSICAL_STORE if source == "physical_store" else MAX_AGE
    if now.timestamp() - value > limit.total_seconds():
        raise invalid(
            f"{where}.event_time is more than {limit.days} days in the past; "
            "no event of this request was processed",
            title="Event Timestamp Too Old",
        )


def _check_user_data(
    key: str, value: Any, where: str, suspect: Suspect, hashed: frozenset[str]
) -> None:
    """Hashed keys are SHA-256 hex (string or list); never-hashed keys are not hashes."""
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(item, str) for item in values):
        raise invalid(f"{where} must be a string or a list of strings")
    for item in values:
        if key in hashed:
            _check_hash(key, item, where, suspect)
        elif key in NEVER_HASHED and SHA256_HEX.fullmatch(item):
            raise invalid(f"{where} must be sent as is, not hashed", title="Hashed by mistake")
        elif key in ("fbc", "fbp") and not FB_COOKIE.fullmatch(item):
            raise invalid(f"{where} must look like fb.<subdomain>.<time>.<value>")


def _check_hash(key: str, item: str, where: str, suspect: Suspect) -> None:
    """One hashed value: 64 lowercase hex, not the hash of "", not a badly normalised form."""
    if not SHA256_HEX.fullmatch(item):
        raise invalid(
            f"{where} is not a SHA-256 hash: normalise, hash with SHA-256 and send 64 "
            "lowercase hex characters",
            title="Data not hashed",
        )
    if item == EMPTY_SHA256:
        raise invalid(f"{where} is the SHA-256 of an empty value; omit empty values")
    if key in COLUMNS and suspect(COLUMNS[key], item):
        raise invalid(
            f"{where} is the hash of a badly normalised value (trim, lower-case, phone digits "
            "with country code and no '+')",
            title="Badly normalised data",
        )


def _missing(what: str) -> GraphError:
    """Code 100 naming a missing or malformed required field."""
    return invalid(f"Missing or invalid required parameter {what}", title="Missing parameter")
