"""Google's normalisation of emails and phones, against the vectors of its "Format user data"
guide (more-destinations.md §1.4), and hashing as 64 lowercase hex digits."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cohortsync.destinations.google_identifiers import (
    hash_google,
    normalize_google_email,
    normalize_google_phone,
    user_identifiers,
)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("cloudy.sanfrancisco+shopping@gmail.com", "cloudysanfrancisco@gmail.com"),
        ("user.name+NYC@Example.com", "user.name+nyc@example.com"),
        ("  Jo.Ann @ GoogleMail.com ", "joann@googlemail.com"),
        ("A.B.C+x+y@GMAIL.COM", "abc@gmail.com"),
        ("dana@example.co.uk", "dana@example.co.uk"),
        ("first.last@gmail.com.au", "first.last@gmail.com.au"),
    ],
)
def test_emails_normalise_as_google_documents(raw: str, normal: str) -> None:
    assert normalize_google_email(raw) == normal
    assert hash_google("email", raw) == sha(normal)


@pytest.mark.parametrize("raw", ["", "   ", "not-an-email", "a@b", "+tag@gmail.com"])
def test_what_is_not_an_email_is_never_hashed(raw: str) -> None:
    assert hash_google("email", raw) is None


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("(800)555-0100", "+18005550100"),
        ("+1 650 555 1212", "+16505551212"),
        ("+44 7700 900123", "+447700900123"),
    ],
)
def test_phones_are_e164_with_the_plus(raw: str, normal: str) -> None:
    assert normalize_google_phone(raw) == normal
    assert hash_google("phone", raw) == sha(normal)


def test_a_hash_passes_through_lower_cased_and_is_never_hashed_twice() -> None:
    digest = sha("joann@gmail.com")
    assert hash_google("email", digest.upper()) == digest


def test_user_identifiers_are_hashed_email_then_phone() -> None:
    found = user_identifiers({"email": "Jo.Ann@gmail.com", "phone": "+16505551212", "user_id": "u"})
    assert found == [{"emailAddress": sha("joann@gmail.com")}, {"phoneNumber": sha("+16505551212")}]


@given(
    st.text(alphabet="abcXYZ.+ 12", min_size=1, max_size=12),
    st.sampled_from(["gmail.com", "googlemail.com", "Example.com"]),
)
def test_normalising_twice_changes_nothing(local: str, domain: str) -> None:
    once = normalize_google_email(f"{local}@{domain}")
    if once is not None:
        assert normalize_google_email(once) == once
