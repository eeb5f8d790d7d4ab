"""Finding and hiding emails and phones in free text: every form the normalisers accept is gone
after scrubbing, wherever it sits in arbitrary text and however it is encoded; ordinary numbers
of an error message (statuses, codes, amounts, dates, ids) stay."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, quote_plus

import phonenumbers
import pytest
from hypothesis import HealthCheck, assume, given, reject, settings
from hypothesis import strategies as st

from cohortsync.destinations.hashing import normalize as platform_normalize
from cohortsync.destinations.http import EXCERPT, scrub
from cohortsync.identity.normalize import IdentifierError, normalize_email, normalize_phone
from cohortsync.identity.pii import identifier_kinds, scrub_identifiers

REGIONS = ["US", "CA", "GB", "DE", "FR", "ES", "IT", "NL", "BR", "MX", "IN", "AU", "JP", "ZA"]
TYPES = [phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE]
SEPARATORS = [" ", ".", "-", "/", "", "\u00a0", "\u2013"]
JOINERS = [" ", ": ", "=", '"', "(", ")", ", ", "\n", "\t", "<", ">", "'", "|", "; ", "&x="]
FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
SURROUNDING = st.text(max_size=24)
PROPERTY = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much]
)


@st.composite
def phones(draw: st.DrawFn) -> tuple[str, str]:
    """(E.164, a rendering of it that a normaliser accepts in one of `REGIONS`)."""
    region = draw(st.sampled_from(REGIONS))
    example = phonenumbers.example_number_for_type(region, draw(st.sampled_from(TYPES)))
    if example is None:
        reject()
    nsn = phonenumbers.national_significant_number(example)
    cut = draw(st.integers(min_value=len(nsn) // 2, max_value=len(nsn)))
    tail = draw(st.text("0123456789", min_size=len(nsn) - cut, max_size=len(nsn) - cut))
    number = phonenumbers.parse(f"+{example.country_code}{nsn[:cut]}{tail}")
    assume(phonenumbers.is_valid_number(number))
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    rendered = _render(draw, number, e164)
    accepted = {_identity(rendered, region), _platform(rendered, region)}
    assume(e164 in accepted)
    return e164, rendered


def _render(draw: st.DrawFn, number: phonenumbers.PhoneNumber, e164: str) -> str:
    fmt = phonenumbers.PhoneNumberFormat
    international = phonenumbers.format_number(number, fmt.INTERNATIONAL)
    national = phonenumbers.format_number(number, fmt.NATIONAL)
    separator = draw(st.sampled_from(SEPARATORS))
    forms = [
        e164,
        international,
        national,
        phonenumbers.format_number(number, fmt.RFC3966),
        re.sub(r"\D", "", national),
        e164[1:],
        "00" + e164[1:],
        re.sub(r"[ -]", separator, international),
        re.sub(r"[ -]", separator, national),
        national.translate(FULL_WIDTH),
    ]
    return draw(st.sampled_from(forms))


def _identity(text: str, region: str) -> str | None:
    try:
        return normalize_phone(text, region)
    except IdentifierError:
        return None


def _platform(text: str, region: str) -> str | None:
    digits = platform_normalize("phone", text, "meta", region)
    return "+" + digits if digits else None


Draw = Callable[[st.SearchStrategy[Any]], Any]


def _encoded(draw: Draw, text: str) -> str:
    """The text as written, or URL-encoded as a query value, or JSON-escaped."""
    how = draw(st.sampled_from(["as is", "quote", "quote_plus", "json"]))
    if how == "quote":
        return quote(text, safe="")
    if how == "quote_plus":
        return quote_plus(text)
    if how == "json":
        return json.dumps(text, ensure_ascii=True)[1:-1].replace("@", "\\u0040")
    return text


def _embedded(draw: Draw, value: str) -> str:
    before, after = str(draw(SURROUNDING)), str(draw(SURROUNDING))
    left, right = str(draw(st.sampled_from(JOINERS))), str(draw(st.sampled_from(JOINERS)))
    return before + left + _encoded(draw, value) + right + after


def _digits(text: str) -> str:
    return "".join(str(unicodedata.digit(c)) for c in text if c.isdecimal())


@PROPERTY
@given(st.data(), phones())
def test_every_accepted_phone_form_is_gone_after_scrubbing(
    data: st.DataObject, phone: tuple[str, str]
) -> None:
    """A phone in any form a normaliser accepts (international, national, digits only, with
    any separator, `00`, `tel:`, full-width), embedded in any text and URL-encoded or not,
    leaves no trace: neither its form nor its national number's digits."""
    e164, rendered = phone
    text = _embedded(data.draw, rendered)
    out = scrub_identifiers(text)
    national = phonenumbers.national_significant_number(phonenumbers.parse(e164))
    assert rendered not in out
    assert national not in _digits(out)
    assert identifier_kinds(text)  # as a phone, or inside what reads as an email


@st.composite
def emails(draw: st.DrawFn) -> tuple[str, str]:
    """(normal form, a way of writing it that the normaliser accepts)."""
    address = draw(st.emails())
    local, _, domain = address.rpartition("@")
    if draw(st.booleans()):
        local += "+" + draw(st.text("abcxyz019", min_size=1, max_size=6))
    cases: list[Callable[[str], str]] = [str.lower, str.upper, str.title, str]
    written = draw(st.sampled_from(cases))(f"{local}@{domain}")
    try:
        normal = normalize_email(written)
    except IdentifierError:
        assume(False)
        raise
    return normal, written


@PROPERTY
@given(st.data(), emails())
def test_every_accepted_email_form_is_gone_after_scrubbing(
    data: st.DataObject, email: tuple[str, str]
) -> None:
    """An email as written (any case, plus-addressed), embedded in any text, as is,
    URL-encoded (`%40`) or JSON-escaped (`\\u0040`), is gone: neither its form nor its normal
    form is left."""
    normal, written = email
    text = _embedded(data.draw, written)
    out = scrub_identifiers(text).lower()
    assert written.lower() not in out
    assert normal not in out
    assert "email" in identifier_kinds(text)


@pytest.mark.parametrize(
    "text",
    [
        "用户@例子.广告",
        "josé.garcía@correo.es",
        "o'brien@example.ie",
        "ANN.LEE+VIP@EXAMPLE.COM",
        "ann.lee%2Bvip%40example.com",
        "ann.lee%252Bvip%2540example.com",
        "mailto:ann@example.com?subject=hi",
    ],
)
def test_unusual_email_forms_are_found(text: str) -> None:
    """International addresses, apostrophes, upper case, single and double URL-encoding."""
    out = scrub_identifiers(f"refused: {text}.")
    assert "@" not in out and "%40" not in out and "%2540" not in out
    assert out.startswith("refused: ")


def test_a_query_string_keeps_its_structure() -> None:
    """Names and other parameters stay readable around the identifiers."""
    url = "/thanks?email=ann%40example.com&phone=%2B1%20650%20555%201212&utm_source=fb"
    assert scrub_identifiers(url) == "/thanks?email=<email>&phone=<phone>&utm_source=fb"


NORMAL = [
    "HTTP 503 Service Unavailable: upstream timed out after 30 s (attempt 4 of 10)",
    "(#100) Invalid parameter: event_time 2026-05-01T12:00:00Z is more than 7 days old",
    "order o-12345 of 129.99 USD failed at 2026-05-01 12:00:00.123456+00",
    "rate limited: retry in 120 seconds (usage 95.5%, 1,234,567.89 spent)",
    "payload.data row 3, field EMAIL is not a SHA-256 hash",
    "Conversion Error: Could not convert string 'abc' to INT64 at line 42",
    "connect to 203.0.113.7:5432 failed at 12:00:05",
    'invalid_entry_samples: {"e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"}',
    "batch 9f1c2e7a-4b3d-4c2a-9e8f-1a2b3c4d5e6f refused on 05/01/2026",
    "audience 23851234567890123, session 8842014519347620219, user u-42",
]


@pytest.mark.parametrize("message", NORMAL)
def test_ordinary_numbers_of_error_messages_survive(message: str) -> None:
    """Statuses, counts, amounts, dates, times, IPs, hashes, UUIDs and long ids stay."""
    assert scrub_identifiers(message) == message
    assert identifier_kinds(message) == frozenset()


@pytest.mark.parametrize(
    "user_id",
    [
        "u-42",
        "cust_42",
        "123456",
        "9f1c2e7a-4b3d-4c2a-9e8f-1a2b3c4d5e6f",
        "507f1f77bcf86cd799439011",
        "auth0|5f7c8ec7c33c6c004bbafe82",
    ],
)
def test_opaque_user_ids_hold_no_identifier(user_id: str) -> None:
    """Short numbers, UUIDs and hex ids (MongoDB, Auth0) are not taken for phones."""
    assert identifier_kinds(user_id) == frozenset()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            '{"error": "unknown user 6505551212 (ann.lee%40example.com)"}',
            '{"error": "unknown user <phone> (<email>)"}',
        ),
        ("phone 6505551212 or 650 5551212 invalid", "phone <phone> or <phone> invalid"),
        ("phone 07700 900123, 0044 7700 900123 refused", "phone <phone>, <phone> refused"),
    ],
)
def test_dead_letter_excerpts_hide_national_phones_and_encoded_emails(
    body: str, expected: str
) -> None:
    """The forms the old scrubber let through into dead-letter reasons."""
    assert scrub(body) == expected


def test_a_long_body_is_scrubbed_before_it_is_cut() -> None:
    """Only `EXCERPT` characters are kept, and none of them is an identifier."""
    body = "x" * (EXCERPT - 10) + " ann.lee@example.com 6505551212 " + "y" * 5_000
    out = scrub(body)
    assert len(out) == EXCERPT
    assert "ann.lee" not in out and "650555" not in out
