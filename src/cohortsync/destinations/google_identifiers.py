"""Google's normalisation of user identifiers before SHA-256 (Data Manager "Format user data").

Emails: every whitespace character removed, lower-cased; for `gmail.com` and `googlemail.com`
only, every `.` before the `@` removed and a `+tag` dropped
(`cloudy.sanfrancisco+shopping@gmail.com` → `cloudysanfrancisco@gmail.com`); other domains keep
dots and plus signs. Phones: E.164 with the `+`. Hashes go as 64 lowercase hex digits
(`encoding: HEX`). https://developers.google.com/data-manager/api/devguides/concepts/formatting
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from cohortsync.destinations.hashing import is_hashed, normalize, sha256_hex

GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})
MAX_IDENTIFIERS = 10
"""Google takes at most 10 identifiers per member or event."""
_EMAIL = re.compile(r"[^@]+@[^@]+\.[^@.]+")


def normalize_google_email(value: str) -> str | None:
    """An email as Google hashes it, or None when it is not an email."""
    text = unicodedata.normalize("NFC", re.sub(r"\s", "", value).lower())
    if not _EMAIL.fullmatch(text):
        return None
    local, _, domain = text.partition("@")
    if domain in GMAIL_DOMAINS:
        local = local.split("+", 1)[0].replace(".", "")
        if not local:
            return None
    return f"{local}@{domain}"


def normalize_google_phone(value: str, default_region: str = "US") -> str | None:
    """A phone number as Google hashes it: E.164 with `+`, or None when it is not one."""
    return normalize("phone", value, "google", default_region)


def hash_google(kind: str, value: str, default_region: str = "US") -> str | None:
    """SHA-256 hex of an email or phone in Google's normal form (a hash passes through)."""
    if not value or not value.strip():
        return None
    if is_hashed(value):
        return value.strip().lower()
    if kind == "email":
        normal = normalize_google_email(value)
    elif kind == "phone":
        normal = normalize_google_phone(value, default_region)
    else:
        raise ValueError(f"Google matches emails and phones, not {kind!r}")
    return None if normal is None else sha256_hex(normal)


def user_identifiers(
    identifiers: Mapping[str, str], default_region: str = "US"
) -> list[dict[str, Any]]:
    """The `userData.userIdentifiers` of a person: hashed email, then hashed phone."""
    found: list[dict[str, Any]] = []
    for kind, key in (("email", "emailAddress"), ("phone", "phoneNumber")):
        digest = hash_google(kind, identifiers.get(kind) or "", default_region)
        if digest:
            found.append({key: digest})
    return found[:MAX_IDENTIFIERS]
