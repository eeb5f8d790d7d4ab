"""Identifier normalisation: one canonical form per person, errors that never echo the raw value."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cohortsync.identity.normalize import (
    IdentifierError,
    normalize_email,
    normalize_identifier,
    normalize_phone,
)

# Example-based cases: destinations reference §1.6 (trim, lower-case) and §9.1 vectors; phones
# are stored as E.164 so each destination can derive its own form (Meta: digits only).


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Jane.Doe@Gmail.COM ", "jane.doe@gmail.com"),
        ("jane.doe@gmail.com", "jane.doe@gmail.com"),
        ("  John_Smith@Gmail.com ", "john_smith@gmail.com"),
        ("Mary@Example.com", "mary@example.com"),
        (" Dana@Example.com ", "dana@example.com"),
        ("alex.2@example.com", "alex.2@example.com"),
        ("\tjane.doe+promo@googlemail.com\n", "jane.doe+promo@googlemail.com"),
    ],
)
def test_email_is_trimmed_and_lower_cased(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected
    assert normalize_identifier("email", raw) == expected


def test_email_dots_and_plus_tags_are_kept_so_distinct_addresses_stay_distinct() -> None:
    # Gmail dot-stripping is a per-destination hashing rule (§9.1), not identity.
    assert normalize_email("Jane.Doe@gmail.com") != normalize_email("JaneDoe@gmail.com")
    assert normalize_email("jane+promo@example.com") == "jane+promo@example.com"


@pytest.mark.parametrize(
    "raw",
    ["(415) 555-2671", "+1 415 555 2671", "415.555.2671", "415-555-2671", "1-415-555-2671",
     "4155552671", " +1 (415) 555 2671 "],
)  # fmt: skip
def test_us_phone_formats_become_one_e164_number(raw: str) -> None:
    assert normalize_phone(raw) == "+14155552671"
    assert normalize_identifier("phone", raw, "US") == "+14155552671"


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+1 (650) 555-1212", "US", "+16505551212"),
        ("(650)555-1212", "US", "+16505551212"),
        ("+1 800 5550101", "US", "+18005550101"),
        ("+44 844 412 4653", "US", "+448444124653"),
        ("07911 123456", "GB", "+447911123456"),
        ("+44 7911 123456", "GB", "+447911123456"),
        ("020 7123 4567", "GB", "+442071234567"),
        ("+374 93 828222", "US", "+37493828222"),
    ],
)
def test_phone_national_numbers_use_the_default_region(
    raw: str, region: str, expected: str
) -> None:
    assert normalize_phone(raw, region) == expected


def test_phone_number_given_as_an_integer_is_normalised() -> None:
    assert normalize_identifier("phone", 4155552671, "US") == "+14155552671"


@pytest.mark.parametrize(
    ("kind", "raw", "expected"),
    [
        ("user_id", "  u-1 ", "u-1"),
        ("user_id", 42, "42"),
        ("anonymous_id", "AbC-123", "AbC-123"),  # ids are case-sensitive
    ],
)
def test_other_ids_are_trimmed_but_otherwise_kept(kind: str, raw: object, expected: str) -> None:
    assert normalize_identifier(kind, raw) == expected


@pytest.mark.parametrize(
    ("kind", "raw"),
    [
        ("email", "jane@"),
        ("email", "not-an-email"),
        ("email", "@example.com"),
        ("email", "jane doe@example.com"),
        ("email", "jane@@example.com"),
        ("email", "x@y.test"),
        ("phone", "12"),
        ("phone", "call me maybe"),
        ("phone", "+1 000 000 0000"),
        ("phone", "555-0000-00000-0000"),
    ],
)
def test_invalid_identifier_raises_without_echoing_the_value(kind: str, raw: str) -> None:
    with pytest.raises(IdentifierError) as caught:
        normalize_identifier(kind, raw, "US")
    assert raw not in str(caught.value)
    assert raw.strip() not in str(caught.value)
    assert kind in str(caught.value)


@pytest.mark.parametrize("kind", ["email", "phone", "user_id", "anonymous_id"])
@pytest.mark.parametrize("raw", ["", "   "])
def test_empty_identifier_is_rejected(kind: str, raw: str) -> None:
    with pytest.raises(IdentifierError, match="empty"):
        normalize_identifier(kind, raw)


@pytest.mark.parametrize("raw", [None, True, ["a@b.com"], {"email": "a@b.com"}])
def test_identifier_that_is_not_a_string_or_number_is_rejected(raw: object) -> None:
    with pytest.raises(IdentifierError, match="must be a string"):
        normalize_identifier("email", raw)


def test_identifier_error_is_a_value_error() -> None:
    assert issubclass(IdentifierError, ValueError)


# --- properties --------------------------------------------------------------------------------

_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_local = st.text(alphabet=_ALNUM + "_+", min_size=1, max_size=20).filter(
    lambda s: s[0] not in "+_" or len(s) > 1
)
_label = st.text(alphabet=_ALNUM, min_size=1, max_size=12)
_tld = st.sampled_from(["com", "org", "net", "io", "co", "de", "COM", "Shop"])
_space = st.sampled_from(["", " ", "  ", "\t", "\n"])


@st.composite
def emails(draw: st.DrawFn) -> str:
    local = draw(st.lists(_local, min_size=1, max_size=3).map(".".join))
    domain = draw(st.lists(_label, min_size=1, max_size=3).map(".".join))
    return f"{draw(_space)}{local}@{domain}.{draw(_tld)}{draw(_space)}"


_area = st.sampled_from(["212", "213", "305", "312", "415", "617", "646", "702", "206", "303"])
_exchange = st.integers(min_value=200, max_value=999).map(str)
_line = st.integers(min_value=0, max_value=9999).map(lambda n: f"{n:04d}")
_FORMATS = ("({a}) {e}-{n}", "+1 {a} {e} {n}", "{a}.{e}.{n}", "{a}-{e}-{n}", "1{a}{e}{n}",
            "+1-{a}-{e}-{n}", "{a}{e}{n}")  # fmt: skip


@st.composite
def us_phones(draw: st.DrawFn) -> tuple[str, str]:
    """A valid US number written in one of the usual ways, and its digits."""
    area, exchange, line = draw(_area), draw(_exchange), draw(_line)
    text = draw(st.sampled_from(_FORMATS)).format(a=area, e=exchange, n=line)
    return draw(_space) + text + draw(_space), area + exchange + line


@settings(deadline=None)
@given(emails())
def test_normalising_an_email_twice_equals_once(raw: str) -> None:
    once = normalize_email(raw)
    assert normalize_email(once) == once
    assert once == once.strip().lower()
    assert normalize_email(raw.upper()) == once


@settings(deadline=None)
@given(us_phones())
def test_normalising_a_phone_twice_equals_once(case: tuple[str, str]) -> None:
    raw, digits = case
    once = normalize_phone(raw, "US")
    assert once == "+1" + digits
    assert normalize_phone(once, "US") == once
    assert normalize_phone(once, "GB") == once  # E.164 does not depend on the region


@settings(deadline=None)
@given(st.text(alphabet="0123456789", min_size=1, max_size=5))
def test_too_short_phone_is_refused_without_echoing_it(raw: str) -> None:
    with pytest.raises(IdentifierError) as caught:
        normalize_phone(raw, "US")
    assert raw not in str(caught.value)


@settings(deadline=None)
@given(
    st.text(alphabet=_ALNUM + ".-_ ", min_size=3, max_size=30).filter(
        lambda s: any(c.isdigit() for c in s)
    )
)
def test_address_without_at_sign_is_refused_without_echoing_it(raw: str) -> None:
    with pytest.raises(IdentifierError) as caught:
        normalize_email(raw)
    assert raw.strip() not in str(caught.value)
