"""Find emails and phone numbers in free text, in the forms the normaliser accepts, and hide them.

Error excerpts (a receiver's 400 body, a database error quoting a row) and user ids may hold
an identifier in any form `normalize.py` takes: any case, plus-addressed, URL-encoded
(`ann%40example.com`, `%2B1%20650…`), JSON-escaped, or a phone written internationally
(`+1 650-555-1212`, `0044 7700 900123`, `16505551212`) or nationally (`(650) 555-1212`,
`650.555.1212`, `07700 900123`, `6505551212`), with spaces, dots, dashes, slashes or
parentheses, in ASCII or full-width digits.

Emails are found by their `@` (after percent- and JSON-decoding), whatever their local part;
one holding `/ ? & = #` (legal, unseen in practice) is cut there, as the end of a URL or query
before it: `a=b@c.com` shows `a=<email>`.
A phone is any number written with a leading `+`, any group of 7 or more digits joined by phone
punctuation, and any bare run of 7 to 15 digits (the most E.164 allows). The trade-off: a bare
number of that length (an order number, a price in cents, a Unix timestamp) reads as a phone,
since nothing tells it from a national number. Kept as they are: numbers under 7 digits (HTTP
statuses, codes, counts, amounts), runs of 16 or more digits (Meta object and session ids),
dates and times in ISO form, IPv4 addresses, decimals such as `129.99`, UUIDs, and hex ids and
digests (16 or more hex characters, such as a MongoDB ObjectId or a SHA-256).
Not found: vanity numbers spelled with letters (`1-800-FLOWERS`).
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

EMAIL = "<email>"
PHONE = "<phone>"
MIN_DIGITS = 7
"""Fewer digits never make a phone number here (see the module docstring)."""
MAX_BARE_DIGITS = 15
"""E.164 numbers have at most 15 digits; longer bare runs are ids (`00` + 15 digits aside)."""
DECODE_ROUNDS = 3

# The characters phonenumbers accepts between digits (its VALID_PUNCTUATION without `x`), plus
# `+` (a space in a form-encoded query).
_PUNCTUATION = (
    " \t\u00a0\u2000-\u200b\u202f\u205f\u3000\u00ad\u2060"
    "\\-\u2010-\u2015\u2212\u30fc\uff0d./\uff0f()\uff08\uff09\\[\\]\uff3b\uff3d~\u2053\u223c\uff5e+"
)
_PLUS = "+\uff0b"
_NUMBER = re.compile(rf"[{_PLUS}]?\d(?:[{_PUNCTUATION}]{{0,3}}\d)*")
_SEPARATED = re.compile(rf"\d[{_PUNCTUATION}]+\d")
_KEEP = re.compile(
    "|".join(
        [
            # ISO dates and date-times: 2026-05-01, 2026-05-01T12:00:00.5+00:00
            r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?"
            r"(?:Z|[+-]\d{2}(?::?\d{2})?)?)?(?![-./]?\d)",
            # dates written 05/01/2026 or 01.05.2026, and times: 12:00, 12:00:00.123
            r"\d{1,2}[./]\d{1,2}[./]\d{4}(?![-./]?\d)",
            r"\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?(?![:.,]?\d)",
            r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
            # hex ids and digests (a MongoDB ObjectId, a SHA-256): 16+ hex characters, a letter
            r"(?<![0-9A-Za-z])(?=[0-9]*[a-fA-F])[0-9a-fA-F]{16,}(?![0-9A-Za-z])",
            r"(?:25[0-5]|2[0-4]\d|1?\d?\d)(?:\.(?:25[0-5]|2[0-4]\d|1?\d?\d)){3}(?!\.?\d)",
            # amounts: 129.99, 1234567.89, 12,50
            r"\d+[.,]\d{1,2}(?![.,]?\d)",
        ]
    )
)
_TOKEN = re.compile(rf"(?P<keep>{_KEEP.pattern})|(?P<number>{_NUMBER.pattern})")
# An email is read back from its `@` over every character an address may hold; a URL delimiter
# in that run (`/ ? & = #`: legal in an address, unseen in practice) is taken for the end of
# a URL or query before the address, so `?email=ann%40example.com` keeps its `?email=`. The
# domain holds letters, digits, `-` and `.`.
_LOCAL_STOP = frozenset('"(),:;<>@[]\\')
_URL_DELIMITERS = "/?&=#"
_DOMAIN = re.compile(r"[^\s\"(),:;<>@\[\]\\/?&=#!$%*+{}|^`~']+")
_JSON_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")
_PERCENT = re.compile(r"(?:%[0-9a-fA-F]{2})+")


def scrub_identifiers(text: str) -> str:
    """`text` with every email replaced by `<email>` and every phone number by `<phone>`.

    Percent-encoded and JSON-escaped text is decoded first, so the result shows the decoded
    form (`a%40b.com` becomes `<email>`).
    """
    return _TOKEN.sub(_phone, _without_emails(decode(text), EMAIL))


def identifier_kinds(text: str) -> frozenset[str]:
    """The kinds of identifier (`email`, `phone`) found in `text`: empty when it holds none."""
    if _plainly_none(text):
        return frozenset()
    decoded = decode(text)
    rest = _without_emails(decoded, " ")
    kinds = {"email"} if rest != decoded else set()
    if PHONE in _TOKEN.sub(_phone, rest):
        kinds.add("phone")
    return frozenset(kinds)


def _plainly_none(text: str) -> bool:
    """Text that cannot hold an identifier: no `@`, nothing encoded to decode into one, and
    fewer digits than any phone has (the common case of a URL path segment or an order id)."""
    if "@" in text or "%" in text or "\\" in text:
        return False
    return sum(char.isdigit() for char in text) < MIN_DIGITS


def decode(text: str) -> str:
    """Undo percent-encoding (up to three layers) and JSON `\\uXXXX` escapes, so an encoded
    identifier reads as itself; encoded blanks become spaces and control characters stay
    encoded (decoding never adds a line break to a message)."""
    for _ in range(DECODE_ROUNDS):
        step = _JSON_ESCAPE.sub(_unescape, _PERCENT.sub(_unpercent, text))
        if step == text:
            break
        text = step
    return text


def _unpercent(match: re.Match[str]) -> str:
    return "".join(_readable(char, quote(char, safe="")) for char in unquote(match.group()))


def _unescape(match: re.Match[str]) -> str:
    return _readable(chr(int(match.group(1), 16)), match.group())


def _readable(char: str, encoded: str) -> str:
    """A decoded character as it may appear in a message: itself, a space, or still encoded."""
    if char.isprintable():
        return char
    return " " if char.isspace() else encoded


def _without_emails(text: str, mark: str) -> str:
    """`text` with each email address replaced by `mark` (see `_DOMAIN` for what is taken)."""
    parts: list[str] = []
    done = 0
    at = text.find("@")
    while at >= 0:
        domain = _DOMAIN.match(text, at + 1)
        start = at
        while domain and start > done and _local(text[start - 1]):
            start -= 1
        if domain is not None and start < at:
            run = text[start:at]
            cut = max(run.rfind(char) for char in _URL_DELIMITERS) + 1
            parts += [text[done:start], run[:cut] if cut < len(run) else "", mark]
            done = domain.end()
        at = text.find("@", max(at + 1, done))
    return "".join([*parts, text[done:]])


def _local(char: str) -> bool:
    """Whether `char` may be part of an address's local part."""
    return char not in _LOCAL_STOP and not char.isspace()


def _phone(match: re.Match[str]) -> str:
    """`<phone>` for a number that may be a phone (see the module docstring), else itself."""
    text = match.group()
    if match.group("keep") is not None:
        return text
    digits = sum(char.isdigit() for char in text)
    if digits < MIN_DIGITS:
        return text
    if text[0] in _PLUS or _SEPARATED.search(text):
        return PHONE
    international = text.startswith("00")
    return PHONE if digits <= MAX_BARE_DIGITS + (2 if international else 0) else text
