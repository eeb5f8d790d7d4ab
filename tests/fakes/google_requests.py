"""Request rules of the Data Manager fake (more-destinations.md §1.2–1.4, §1.7–1.9).

Each check raises `RpcError` (HTTP 400 with Google's `ErrorReason` and the field path) and fails
the whole request, as the API's fast-fail validation does. Identifiers must be SHA-256 in the
request's `encoding`; the hash of a badly normalised form of a registered person's email or
phone is refused too (`KnownPeople`): the real API cannot tell, and only the match rate drops.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import phonenumbers

from tests.fakes.google_rpc import invalid

ACCOUNT_TYPES = frozenset(
    {
        "GOOGLE_ADS",
        "DISPLAY_VIDEO_PARTNER",
        "DISPLAY_VIDEO_ADVERTISER",
        "DATA_PARTNER",
        "GOOGLE_ANALYTICS_PROPERTY",
        "GOOGLE_AD_MANAGER_AUDIENCE_LINK",
        "FLOODLIGHT_CONFIG",
    }
)
CONSENT = frozenset({"CONSENT_STATUS_UNSPECIFIED", "CONSENT_GRANTED", "CONSENT_DENIED"})
EVENT_SOURCES = frozenset({"WEB", "APP", "IN_STORE", "PHONE", "MESSAGE", "OTHER"})
MEMBER_DATA = (
    "userData",
    "compositeData",
    "mobileData",
    "userIdData",
    "pairData",
    "ppidData",
    "googleUserIdData",
    "partnerProvidedIdData",
)
INGEST_FIELDS = frozenset(
    {
        "destinations",
        "audienceMembers",
        "consent",
        "encoding",
        "encryptionInfo",
        "termsOfService",
        "validateOnly",
    }
)
REMOVE_FIELDS = frozenset(
    {"destinations", "audienceMembers", "validateOnly", "encoding", "encryptionInfo"}
)
REMOVE_ALL_FIELDS = frozenset({"destinations", "removeAsOfTime", "validateOnly"})
EVENTS_FIELDS = frozenset(
    {"destinations", "events", "consent", "encoding", "encryptionInfo", "validateOnly"}
)
EVENT_FIELDS = frozenset(
    {
        "destinationReferences",
        "transactionId",
        "eventTimestamp",
        "lastUpdatedTimestamp",
        "userData",
        "consent",
        "adIdentifiers",
        "currency",
        "conversionValue",
        "conversionCount",
        "eventSource",
        "eventDeviceInfo",
        "cartData",
        "customVariables",
        "experimentalFields",
        "userProperties",
    }
)
MAX_MEMBERS = 10_000
MAX_EVENTS = 2_000
MAX_IDENTIFIERS = 10
MAX_DESTINATIONS = 10
_HEX = re.compile(r"[0-9a-fA-F]*")
_ACCOUNT_ID = re.compile(r"[0-9]{10}")
_CURRENCY = re.compile(r"[A-Z]{3}")


def sha256(text: str) -> str:
    """Lowercase hex SHA-256 of the UTF-8 bytes of `text`."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_fields(body: Mapping[str, Any], allowed: frozenset[str], where: str = "") -> None:
    """Proto JSON refuses unknown fields: `Invalid JSON payload received. Unknown name`."""
    for name in body:
        if name not in allowed:
            raise invalid(
                f'Invalid JSON payload received. Unknown name "{name}"',
                "INVALID_ARGUMENT",
                where + name,
            )


@dataclass(frozen=True)
class Destination:
    """One checked `destinations[]` entry."""

    reference: str | None
    account_type: str
    account_id: str
    product_destination_id: str


def parse_destinations(body: Mapping[str, Any]) -> list[Destination]:
    """The request's destinations: 1–10, each with operatingAccount and productDestinationId."""
    raw = body.get("destinations")
    if not isinstance(raw, list) or not raw:
        raise invalid("destinations is required", "REQUIRED_FIELD_MISSING", "destinations")
    if len(raw) > MAX_DESTINATIONS:
        raise invalid(
            f"at most {MAX_DESTINATIONS} destinations", "TOO_MANY_DESTINATIONS", "destinations"
        )
    found: list[Destination] = []
    for index, entry in enumerate(raw):
        where = f"destinations[{index}]"
        if not isinstance(entry, dict):
            raise invalid("a destination must be an object", "INVALID_DESTINATION", where)
        check_fields(
            entry,
            frozenset(
                {
                    "reference",
                    "operatingAccount",
                    "loginAccount",
                    "linkedAccount",
                    "productDestinationId",
                }
            ),
            where + ".",
        )
        account_type, account_id = _account(
            entry.get("operatingAccount"), where + ".operating_account"
        )
        if "loginAccount" in entry:
            _account(entry["loginAccount"], where + ".login_account")
        product = entry.get("productDestinationId")
        if not isinstance(product, str) or not product:
            raise invalid(
                "productDestinationId is required",
                "REQUIRED_FIELD_MISSING",
                where + ".product_destination_id",
            )
        reference = entry.get("reference")
        found.append(Destination(reference, account_type, account_id, product))
    references = [d.reference for d in found if d.reference is not None]
    if len(set(references)) != len(references):
        raise invalid("destination references must be unique", "DUPLICATE_DESTINATION_REFERENCE")
    return found


def _account(raw: Any, where: str) -> tuple[str, str]:
    """An `{accountType, accountId}` pair: a known type and, for Google Ads, 10 digits."""
    if not isinstance(raw, dict):
        raise invalid(f"{where} is required", "REQUIRED_FIELD_MISSING", where)
    account_type = raw.get("accountType")
    if account_type not in ACCOUNT_TYPES:
        raise invalid(
            f"{where}.account_type must be one of the AccountType values",
            "REQUIRED_FIELD_MISSING" if account_type is None else "INVALID_ARGUMENT",
            where + ".account_type",
        )
    account_id = raw.get("accountId")
    if not isinstance(account_id, str) or not _ACCOUNT_ID.fullmatch(account_id):
        raise invalid(
            f"{where}.account_id must be 10 digits without hyphens",
            "INVALID_DESTINATION",
            where + ".account_id",
        )
    return str(account_type), account_id


def check_consent(raw: Any, where: str) -> None:
    """`consent`: `adUserData` and `adPersonalization`, each a ConsentStatus value."""
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise invalid(f"{where} must be an object", "INVALID_ARGUMENT", where)
    check_fields(raw, frozenset({"adUserData", "adPersonalization"}), where + ".")
    for key in ("adUserData", "adPersonalization"):
        if key in raw and raw[key] not in CONSENT:
            raise invalid(
                f"{where}.{key} must be a ConsentStatus value", "INVALID_ARGUMENT", f"{where}.{key}"
            )


def check_encoding(body: Mapping[str, Any]) -> str:
    """`encoding` is required whenever UserData is sent: HEX or BASE64."""
    encoding = body.get("encoding")
    if encoding is None:
        raise invalid("encoding is required with user data", "REQUIRED_FIELD_MISSING", "encoding")
    if encoding not in ("HEX", "BASE64"):
        raise invalid("encoding must be HEX or BASE64", "INVALID_ARGUMENT", "encoding")
    return str(encoding)


def check_terms(body: Mapping[str, Any]) -> None:
    """Customer Match UserData needs `termsOfService.customerMatchTermsOfServiceStatus`
    ACCEPTED."""
    terms = body.get("termsOfService")
    status = terms.get("customerMatchTermsOfServiceStatus") if isinstance(terms, dict) else None
    if status != "ACCEPTED":
        raise invalid(
            "The Customer Match terms of service must be accepted",
            "TERMS_AND_CONDITIONS_NOT_SIGNED",
            "terms_of_service",
        )


@dataclass
class KnownPeople:
    """Registered raw emails and phones, and the hashes of wrongly normalised forms of them."""

    right: dict[str, str] = field(default_factory=dict)
    wrong: set[str] = field(default_factory=set)

    def register(self, people: Iterable[Mapping[str, str]]) -> None:
        """Add people given as raw `email` and `phone` (read in `country`, default US)."""
        for person in people:
            if person.get("email"):
                right, wrong = email_forms(person["email"])
                self._add(right, wrong)
            if person.get("phone"):
                right, wrong = phone_forms(person["phone"], person.get("country", "US"))
                self._add(right, wrong)

    def badly_normalised(self, digest: str) -> bool:
        """Whether a lowercase hex digest hashes a wrong form of a registered identifier."""
        return digest not in self.right and digest in self.wrong

    def _add(self, right: str, wrong: set[str]) -> None:
        digest = sha256(right)
        self.right[digest] = right
        self.wrong |= {sha256(form) for form in wrong} | {sha256(digest)}
        self.wrong.discard(digest)


def email_forms(raw: str) -> tuple[str, set[str]]:
    """Google's form of an email (no whitespace, lower case; gmail/googlemail without dots
    and `+tag` before the `@`) and the usual wrong ones."""
    compact = re.sub(r"\s", "", raw).lower()
    local, _, domain = compact.partition("@")
    right = compact
    wrong = {raw, raw.strip(), raw.upper(), raw.strip().lower() + " "}
    if domain in ("gmail.com", "googlemail.com"):
        right = local.split("+", 1)[0].replace(".", "") + "@" + domain
        wrong |= {compact, local.replace(".", "") + "@" + domain}
        wrong.add(local.split("+", 1)[0] + "@" + domain)
    return right, wrong - {right}


def phone_forms(raw: str, region: str) -> tuple[str, set[str]]:
    """Google's form of a phone (E.164 with `+`) and the usual wrong ones (no `+`, national)."""
    number = phonenumbers.parse(raw, region)
    right = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    national = str(number.national_number)
    wrong = {raw, right[1:], "00" + right[1:], national, re.sub(r"\D", "", raw)}
    return right, wrong - {right}


def check_hash(value: Any, encoding: str, where: str, people: KnownPeople) -> str:
    """One hashed value: 64 hex (HEX) or 44 base64 (BASE64) characters of a SHA-256; returns
    it as lowercase hex."""
    if not isinstance(value, str) or not value:
        raise invalid(f"{where} is required", "REQUIRED_FIELD_MISSING", where)
    if encoding == "HEX":
        if not _HEX.fullmatch(value):
            raise invalid(f"{where} is not hex encoded", "INVALID_HEX_ENCODING", where)
        if len(value) != 64:
            raise invalid(f"{where} is not a SHA-256 hash", "INVALID_SHA256_FORMAT", where)
        digest = value.lower()
    else:
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise invalid(
                f"{where} is not base64 encoded", "INVALID_BASE64_ENCODING", where
            ) from None
        if len(value) != 44 or len(raw) != 32:
            raise invalid(f"{where} is not a SHA-256 hash", "INVALID_SHA256_FORMAT", where)
        digest = raw.hex()
    if people.badly_normalised(digest):
        raise invalid(
            f"{where} is the hash of a value not normalised as Google documents",
            "INVALID_FORMAT_NOT_NORMALIZED",
            where,
        )
    return digest


def parse_user_data(raw: Any, encoding: str, where: str, people: KnownPeople) -> list[str]:
    """`userData.userIdentifiers`: 1–10 identifiers, each exactly one of emailAddress,
    phoneNumber, address; returns them as `kind:digest` keys."""
    if not isinstance(raw, dict):
        raise invalid(f"{where} must be an object", "INVALID_ARGUMENT", where)
    check_fields(raw, frozenset({"userIdentifiers"}), where + ".")
    identifiers = raw.get("userIdentifiers")
    if not isinstance(identifiers, list) or not identifiers:
        raise invalid("no user identifiers", "NO_IDENTIFIERS_PROVIDED", where + ".user_identifiers")
    if len(identifiers) > MAX_IDENTIFIERS:
        raise invalid(
            f"at most {MAX_IDENTIFIERS} identifiers",
            "TOO_MANY_USER_IDENTIFIERS",
            where + ".user_identifiers",
        )
    keys: list[str] = []
    for index, identifier in enumerate(identifiers):
        at = f"{where}.user_identifiers[{index}]"
        if not isinstance(identifier, dict) or len(identifier) != 1:
            raise invalid(
                "an identifier holds exactly one of emailAddress, phoneNumber, address",
                "INVALID_ARGUMENT",
                at,
            )
        check_fields(identifier, frozenset({"emailAddress", "phoneNumber", "address"}), at + ".")
        if "emailAddress" in identifier:
            digest = check_hash(identifier["emailAddress"], encoding, at + ".email_address", people)
            keys.append("email:" + digest)
        elif "phoneNumber" in identifier:
            digest = check_hash(identifier["phoneNumber"], encoding, at + ".phone_number", people)
            keys.append("phone:" + digest)
        else:
            keys.append("address:" + _address(identifier["address"], encoding, at, people))
    return keys


def _address(raw: Any, encoding: str, where: str, people: KnownPeople) -> str:
    """An address: hashed names, plain `regionCode` (alpha-2) and `postalCode`."""
    if not isinstance(raw, dict):
        raise invalid("address must be an object", "INVALID_ARGUMENT", where + ".address")
    given = check_hash(raw.get("givenName"), encoding, where + ".address.given_name", people)
    family = check_hash(raw.get("familyName"), encoding, where + ".address.family_name", people)
    region = raw.get("regionCode")
    if not isinstance(region, str) or not re.fullmatch(r"[A-Z]{2}", region):
        raise invalid("regionCode is ISO-3166-1 alpha-2", "INVALID_ARGUMENT", where + ".address")
    postal = raw.get("postalCode")
    if not isinstance(postal, str) or not postal.strip():
        raise invalid("postalCode is required", "INVALID_POSTAL_CODE", where + ".address")
    return f"{given}/{family}/{region}/{postal}"


def parse_members(body: Mapping[str, Any], encoding: str, people: KnownPeople) -> list[list[str]]:
    """`audienceMembers`: 1–10,000 members, all of one data type (`userData` or
    `compositeData.userData` is what the fake stores); each member as its identifier keys."""
    members = body.get("audienceMembers")
    if not isinstance(members, list) or not members:
        raise invalid("audienceMembers is required", "REQUIRED_FIELD_MISSING", "audience_members")
    if len(members) > MAX_MEMBERS:
        raise invalid(
            f"at most {MAX_MEMBERS} audience members per request",
            "TOO_MANY_AUDIENCE_MEMBERS",
            "audience_members",
        )
    kinds: set[str] = set()
    found: list[list[str]] = []
    for index, member in enumerate(members):
        where = f"audience_members[{index}]"
        if not isinstance(member, dict):
            raise invalid("a member must be an object", "INVALID_ARGUMENT", where)
        check_fields(
            member, frozenset({"destinationReferences", "consent", *MEMBER_DATA}), where + "."
        )
        present = [kind for kind in MEMBER_DATA if kind in member]
        if len(present) != 1:
            raise invalid("a member holds exactly one kind of data", "INVALID_ARGUMENT", where)
        kinds.add(present[0])
        check_consent(member.get("consent"), where + ".consent")
        if present[0] == "userData":
            found.append(
                parse_user_data(member["userData"], encoding, where + ".user_data", people)
            )
        elif present[0] == "compositeData":
            composite = member["compositeData"]
            data = composite.get("userData") if isinstance(composite, dict) else None
            at = where + ".composite_data.user_data"
            found.append(parse_user_data(data, encoding, at, people))
        else:
            raise invalid(
                f"the fake takes user data only, not {present[0]}", "INVALID_ARGUMENT", where
            )
    if len(kinds) > 1:
        raise invalid(
            "members of one request hold one kind of data", "MULTIPLE_DATA_TYPES_NOT_ALLOWED"
        )
    return found


def parse_timestamp(raw: Any, where: str) -> datetime:
    """An RFC 3339 timestamp with its offset (`Z` or `+hh:mm`)."""
    if not isinstance(raw, str) or not re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)", raw
    ):
        raise invalid(f"{where} must be an RFC 3339 timestamp", "EVENT_TIME_INVALID", where)
    text = re.sub(r"\.(\d{6})\d+", r".\1", raw.replace("Z", "+00:00"))
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise invalid(f"{where} is not a valid time", "EVENT_TIME_INVALID", where) from None


def parse_event(
    event: Any, index: int, encoding: str | None, people: KnownPeople, now: datetime
) -> dict[str, Any]:
    """One event of `events:ingest`: a timestamp not in the future, identifiers (user data or
    ad identifiers), an ISO 4217 currency, a known event source."""
    where = f"events[{index}]"
    if not isinstance(event, dict):
        raise invalid("an event must be an object", "INVALID_ARGUMENT", where)
    check_fields(event, EVENT_FIELDS, where + ".")
    at = parse_timestamp(event.get("eventTimestamp"), where + ".event_timestamp")
    if at > now:
        raise invalid(
            "the event is in the future", "EVENT_TIME_INVALID", where + ".event_timestamp"
        )
    check_consent(event.get("consent"), where + ".consent")
    if "currency" in event and not (
        isinstance(event["currency"], str) and _CURRENCY.fullmatch(event["currency"])
    ):
        raise invalid("currency must be ISO 4217", "INVALID_CURRENCY_CODE", where + ".currency")
    if "eventSource" in event and event["eventSource"] not in EVENT_SOURCES:
        raise invalid("unknown eventSource", "INVALID_ARGUMENT", where + ".event_source")
    value = event.get("conversionValue")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise invalid("conversionValue must be a number", "INVALID_ARGUMENT", where)
    keys: list[str] = []
    if "userData" in event:
        if encoding is None:
            raise invalid(
                "encoding is required with user data", "REQUIRED_FIELD_MISSING", "encoding"
            )
        keys = parse_user_data(event["userData"], encoding, where + ".user_data", people)
    ads = event.get("adIdentifiers")
    clicks = {}
    if ads is not None:
        if not isinstance(ads, dict):
            raise invalid("adIdentifiers must be an object", "INVALID_ARGUMENT", where)
        check_fields(
            ads,
            frozenset({"sessionAttributes", "gclid", "gbraid", "wbraid", "landingPageDeviceInfo"}),
            where + ".ad_identifiers.",
        )
        clicks = {k: v for k, v in ads.items() if k in ("gclid", "gbraid", "wbraid") and v}
    if not keys and not clicks:
        raise invalid("the event has no identifiers", "NO_IDENTIFIERS_PROVIDED", where)
    return {**event, "_keys": keys}


def parse_events(
    body: Mapping[str, Any], people: KnownPeople, now: datetime
) -> list[dict[str, Any]]:
    """`events`: 1–2,000 events, each checked by `parse_event`."""
    events = body.get("events")
    if not isinstance(events, list) or not events:
        raise invalid("events is required", "REQUIRED_FIELD_MISSING", "events")
    if len(events) > MAX_EVENTS:
        raise invalid(f"at most {MAX_EVENTS} events per request", "TOO_MANY_EVENTS", "events")
    encoding = (
        check_encoding(body)
        if any(isinstance(e, dict) and "userData" in e for e in events)
        else body.get("encoding")
    )
    return [parse_event(e, i, encoding, people, now) for i, e in enumerate(events)]
