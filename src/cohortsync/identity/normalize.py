"""Normalise identifiers before they are matched: email lower-cased and validated, phone to E.164.

Ad platforms hash after their own normalisation (see the destinations reference: Meta wants
trimmed, lower-cased emails and digits-only phones with country code; Google wants E.164);
storing the canonical form here lets every destination derive its own from one value.
"""

from __future__ import annotations

from functools import lru_cache

import phonenumbers
from email_validator import EmailNotValidError, validate_email


class IdentifierError(ValueError):
    """An identifier that cannot be normalised; the message never contains the raw value."""


@lru_cache(maxsize=65_536)
def normalize_email(value: str) -> str:
    """Trim, lower-case and check the syntax of an email address."""
    candidate = value.strip().lower()
    if not candidate:
        raise IdentifierError("email is empty")
    try:
        checked = validate_email(
            candidate, check_deliverability=False, allow_smtputf8=True, allow_display_name=False
        )
    except EmailNotValidError:
        raise IdentifierError("email is not a valid address (expected name@domain.tld)") from None
    return checked.normalized.lower()


@lru_cache(maxsize=65_536)
def normalize_phone(value: str, default_region: str = "US") -> str:
    """Parse a phone number (national ones read in `default_region`) to E.164: +14155550134."""
    if not value.strip():
        raise IdentifierError("phone is empty")
    try:
        number = phonenumbers.parse(value, default_region)
    except phonenumbers.NumberParseException:
        raise IdentifierError("phone is not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise IdentifierError(f"phone is not a valid number for region {default_region}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_identifier(kind: str, value: object, default_region: str = "US") -> str:
    """Normalise any identifier kind; ids other than email and phone are kept as given (trimmed)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise IdentifierError(f"{kind} must be a string")
    text = str(value)
    if kind == "email":
        return normalize_email(text)
    if kind == "phone":
        return normalize_phone(text, default_region)
    text = text.strip()
    if not text:
        raise IdentifierError(f"{kind} is empty")
    return text
