"""Identifier normalisation and SHA-256 hashing, the way each ad platform matches on them.

Ad platforms match hashed identifiers only when both sides normalised the value the same way
before hashing, and the rules differ by platform: Meta wants phones as digits with country code
and no `+`, Google wants E.164 with the `+`. `normalize` applies the platform's documented rule
(never an SDK quirk), `hash_identifier` hashes the result. Values that are already SHA-256 pass
through unchanged, blank or invalid values give None (so the hash of "" is never sent), and
mobile advertiser ids are never hashed.
"""

from __future__ import annotations

import hashlib
import re
import string
import unicodedata
from collections.abc import Callable
from datetime import date
from functools import cache

import phonenumbers
import pycountry

PLATFORMS = ("meta", "google", "tiktok")

_ALIASES = {
    "em": "email",
    "ph": "phone",
    "fn": "first_name",
    "ln": "last_name",
    "fi": "first_initial",
    "ge": "gender",
    "gen": "gender",
    "db": "date_of_birth",
    "doby": "dob_year",
    "dobm": "dob_month",
    "dobd": "dob_day",
    "ct": "city",
    "st": "state",
    "zp": "zip",
    "extern_id": "external_id",
}
KINDS = (
    "email",
    "phone",
    "first_name",
    "last_name",
    "first_initial",
    "gender",
    "date_of_birth",
    "dob_year",
    "dob_month",
    "dob_day",
    "city",
    "state",
    "zip",
    "country",
    "external_id",
    "madid",
)
UNHASHED_KINDS = frozenset({"madid"})
"""Kinds sent as normalised plain text: Meta and TikTok match mobile advertiser ids unhashed."""

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")
_MONTHS = {
    name: number
    for number, names in enumerate(
        [
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "sept", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ],
        start=1,
    )
    for name in names
}
_COUNTRY_ALIASES = {
    "uk": "gb",
    "greatbritain": "gb",
    "britain": "gb",
    "england": "gb",
    "scotland": "gb",
    "wales": "gb",
    "northernireland": "gb",
    "america": "us",
    "unitedstatesofamerica": "us",
    "russia": "ru",
    "korea": "kr",
    "southkorea": "kr",
    "northkorea": "kp",
    "iran": "ir",
    "syria": "sy",
    "vietnam": "vn",
    "laos": "la",
    "bolivia": "bo",
    "venezuela": "ve",
    "tanzania": "tz",
    "moldova": "md",
    "czechia": "cz",
    "czechrepublic": "cz",
    "turkey": "tr",
    "holland": "nl",
    "deutschland": "de",
    "espana": "es",
    "brasil": "br",
}


def sha256_hex(text: str) -> str:
    """SHA-256 of the UTF-8 bytes of `text`, as 64 lowercase hex digits."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_hashed(value: str) -> bool:
    """Whether `value` already is a SHA-256 hex digest (either case; surrounding blanks ignored)."""
    return _HEX64.fullmatch(value.strip()) is not None


def canonical_kind(kind: str) -> str:
    """The kind's canonical name (`fn` → `first_name`, `zp` → `zip`); unknown kinds raise."""
    key = kind.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in KINDS:
        raise ValueError(f"unknown identifier kind {kind!r}; use one of: {', '.join(KINDS)}")
    return key


def normalize(
    kind: str, value: str, platform: str = "meta", default_region: str = "US"
) -> str | None:
    """The platform's normal form of one identifier, or None when blank or not a valid value.

    Phones without a country code are read in `default_region` (ISO alpha-2).
    """
    if platform not in PLATFORMS:
        raise ValueError(f"unknown platform {platform!r}; use one of: {', '.join(PLATFORMS)}")
    rule = _RULES[canonical_kind(kind)]
    if not isinstance(value, str) or not value.strip():
        return None
    result = rule(value, platform, default_region.upper())
    return result or None


def hash_identifier(
    kind: str, value: str, platform: str = "meta", default_region: str = "US"
) -> str | None:
    """What leaves the process for this identifier: SHA-256 of its normal form, or None.

    An already-hashed value passes through (lower-cased, never hashed twice); a mobile
    advertiser id is normalised and sent unhashed.
    """
    key = canonical_kind(kind)
    if not isinstance(value, str) or not value.strip():
        return None
    if key in UNHASHED_KINDS:
        return normalize(key, value, platform, default_region)
    if is_hashed(value):
        return value.strip().lower()
    normal = normalize(key, value, platform, default_region)
    return None if normal is None else sha256_hex(normal)


# --- rules: each takes (value, platform, default_region) and returns the normal form or "" ---


def _email(value: str, platform: str, region: str) -> str:
    text = unicodedata.normalize("NFC", value.strip().lower())
    return text if _EMAIL.fullmatch(text) else ""


def _phone(value: str, platform: str, region: str) -> str:
    e164 = _to_e164(value.strip(), region)
    if e164 is None:
        return ""
    return e164 if platform == "google" else e164[1:]


def _to_e164(text: str, region: str) -> str | None:
    """E.164 of a phone written internationally, nationally, or as digits with country code.

    Digits without `+` are read first as a number of `region` (which also recognises the
    region's own country code, as in `16505551212`), then as country code + number
    (`447700900123`); `00` starts an international number and a single leading `0` a
    national one. A valid reading wins over a merely plausible one.
    """
    digits = re.sub(r"\D", "", text)
    if not digits:
        return None
    readings: list[tuple[str, str | None]]
    if text.startswith("+"):
        readings = [("+" + digits, None)]
    elif digits.startswith("00"):
        readings = [("+" + digits[2:], None), (text, region)]
    elif digits.startswith("0"):
        readings = [(text, region)]
    else:
        readings = [(text, region), ("+" + digits, None)]
    numbers: list[phonenumbers.PhoneNumber] = []
    for candidate, candidate_region in readings:
        try:
            numbers.append(phonenumbers.parse(candidate, candidate_region))
        except phonenumbers.NumberParseException:
            continue
    for check in (phonenumbers.is_valid_number, phonenumbers.is_possible_number):
        for number in numbers:
            if check(number):
                return _stable_e164(number)
    return None


def _stable_e164(number: phonenumbers.PhoneNumber) -> str | None:
    """E.164 of `number`, or None when reading that E.164 back gives another number (the
    library keeps odd leading zeros of garbage input such as `000000`)."""
    e164 = str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))
    again = phonenumbers.parse(e164, None)
    if phonenumbers.format_number(again, phonenumbers.PhoneNumberFormat.E164) != e164:
        return None
    return e164 if phonenumbers.is_possible_number(again) else None


def _settle(step: Callable[[str], str], text: str) -> str:
    """Apply `step` until the text stops changing: Unicode case mapping and composition can
    interact (lower-casing may leave a sequence that composes further), and a normal form
    must be a fixed point so normalising twice never changes a hash."""
    for _ in range(4):
        following = step(text)
        if following == text:
            break
        text = following
    return text


def _name_step(keep_spaces: bool) -> Callable[[str], str]:
    def step(text: str) -> str:
        text = unicodedata.normalize("NFC", text).lower()
        kept = []
        for char in text:
            category = unicodedata.category(char)
            if category[0] in "LMN":
                kept.append(char)
            elif keep_spaces and char.isspace():
                kept.append(" ")
        joined = "".join(kept)
        if keep_spaces:
            joined = " ".join(joined.split())
        return unicodedata.normalize("NFC", joined)

    return step


def _name(value: str, platform: str, region: str) -> str:
    """Lower-case, NFC, no punctuation; Google keeps single inner spaces, Meta and TikTok none."""
    return _settle(_name_step(keep_spaces=platform == "google"), value)


def _first_initial(value: str, platform: str, region: str) -> str:
    name = _name(value, "meta", region)
    return name[:1]


def _letters_only(text: str) -> str:
    """Lower-case letters only, accents removed (`São Paulo` → `saopaulo`), in NFC."""

    def step(current: str) -> str:
        decomposed = unicodedata.normalize("NFKD", current.lower())
        kept = "".join(c for c in decomposed if c.isalpha() and unicodedata.category(c) != "Mn")
        return unicodedata.normalize("NFC", kept)

    return _settle(step, text)


def _city(value: str, platform: str, region: str) -> str:
    return _letters_only(value)


@cache
def _us_states() -> dict[str, str]:
    """Compact US state and territory names (`newyork`) → their two-letter code (`ny`)."""
    states: dict[str, str] = {}
    for subdivision in pycountry.subdivisions:
        if subdivision.country_code != "US":
            continue
        code = subdivision.code.split("-", 1)[1].lower()
        states[_letters_only(subdivision.name)] = code
        states[code] = code
    return states


def _state(value: str, platform: str, region: str) -> str:
    compact = _letters_only(value)
    return _us_states().get(compact, compact)


def _zip(value: str, platform: str, region: str) -> str:
    """US ZIP → first 5 digits (`94035-1234` → `94035`); others lower-case without blanks or
    dashes (`M1 1AE` → `m11ae`)."""
    compact = re.sub(r"[\s\-]", "", value.lower())
    compact = "".join(c for c in compact if c.isalnum())
    if re.fullmatch(r"[0-9]{5}([0-9]{4})?", compact):
        return compact[:5]
    return compact


@cache
def _countries() -> dict[str, str]:
    """Compact country names, official names and alpha-3 codes → lower-case alpha-2 code."""
    table: dict[str, str] = {}
    for country in pycountry.countries:
        code = country.alpha_2.lower()
        for attribute in ("name", "official_name", "common_name", "alpha_3"):
            name = getattr(country, attribute, None)
            if name:
                table.setdefault(_letters_only(name), code)
        table[code] = code
    for alias, code in _COUNTRY_ALIASES.items():
        table.setdefault(alias, code)
    return table


def _country(value: str, platform: str, region: str) -> str:
    return _countries().get(_letters_only(value), "")


def _gender(value: str, platform: str, region: str) -> str:
    word = _letters_only(value)
    if word in ("m", "male", "man"):
        return "m"
    if word in ("f", "female", "woman"):
        return "f"
    return ""


def _dob(value: str, platform: str, region: str) -> str:
    """YYYYMMDD from `19970216`, ISO `1997-02-16`, or US-ordered `2/16/1997` (day first when
    the first number cannot be a month)."""
    text = value.strip()
    parts = [p for p in re.split(r"[^0-9]+", text) if p]
    year = month = day = 0
    if len(parts) == 1 and len(parts[0]) == 8:
        year, month, day = int(parts[0][:4]), int(parts[0][4:6]), int(parts[0][6:])
    elif len(parts) == 3 and len(parts[0]) == 4:
        year, month, day = (int(p) for p in parts)
    elif len(parts) == 3 and len(parts[2]) == 4:
        first, second, year = (int(p) for p in parts)
        month, day = (first, second) if first <= 12 else (second, first)
    else:
        return ""
    return _valid_date(year, month, day)


def _valid_date(year: int, month: int, day: int) -> str:
    if year < 1900:
        return ""
    try:
        return date(year, month, day).strftime("%Y%m%d")
    except ValueError:
        return ""


def _dob_year(value: str, platform: str, region: str) -> str:
    text = value.strip()
    if re.fullmatch(r"[0-9]{4}", text) and int(text) >= 1900:
        return text
    return ""


def _dob_month(value: str, platform: str, region: str) -> str:
    text = value.strip().lower().rstrip(".")
    if text in _MONTHS:
        return f"{_MONTHS[text]:02d}"
    if re.fullmatch(r"[0-9]{1,2}", text) and 1 <= int(text) <= 12:
        return f"{int(text):02d}"
    return ""


def _dob_day(value: str, platform: str, region: str) -> str:
    text = value.strip()
    if re.fullmatch(r"[0-9]{1,2}", text) and 1 <= int(text) <= 31:
        return f"{int(text):02d}"
    return ""


def _external_id(value: str, platform: str, region: str) -> str:
    return value.strip()


def _madid(value: str, platform: str, region: str) -> str:
    text = value.strip().lower()
    return text if all(c in string.hexdigits or c == "-" for c in text) else ""


_RULES: dict[str, Callable[[str, str, str], str]] = {
    "email": _email,
    "phone": _phone,
    "first_name": _name,
    "last_name": _name,
    "first_initial": _first_initial,
    "gender": _gender,
    "date_of_birth": _dob,
    "dob_year": _dob_year,
    "dob_month": _dob_month,
    "dob_day": _dob_day,
    "city": _city,
    "state": _state,
    "zip": _zip,
    "country": _country,
    "external_id": _external_id,
    "madid": _madid,
}
