"""Custom Audiences customer-file uploads: payload and session rules, and audience membership.

Validation follows destinations.md §1.3–1.5 and the §10 checklist: a known schema, rows as wide
as the schema, hashed columns as 64 lowercase hex (or `""` for an unknown value), MADID and
EXTERN_ID as free text (or hashed too, for an account that promised hashed ids), 1 to 10,000
rows. A raw value in a hashed column refuses the whole
request with a message that never repeats the value. Membership follows §1.8: a member is the
row it was uploaded as; a removal removes every member sharing any (key, value) with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tests.fakes.graph import invalid

HASHED_KEYS = frozenset(
    {
        "EMAIL",
        "PHONE",
        "GEN",
        "DOBY",
        "DOBM",
        "DOBD",
        "LN",
        "FN",
        "FI",
        "CT",
        "ST",
        "ZIP",
        "COUNTRY",
    }
)
FREE_KEYS = frozenset({"EXTERN_ID", "MADID"})
OPTION_KEYS = frozenset(
    {"DATA_PROCESSING_OPTIONS", "DATA_PROCESSING_OPTIONS_COUNTRY", "DATA_PROCESSING_OPTIONS_STATE"}
)
SINGLE_KEYS = {
    "EMAIL_SHA256": "EMAIL",
    "PHONE_SHA256": "PHONE",
    "MOBILE_ADVERTISER_ID": "MADID",
    **{key: key for key in HASHED_KEYS | FREE_KEYS},
}
MAX_ROWS = 10_000
MAX_SAMPLES = 100
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SHA256_HEX = re.compile(r"[0-9a-f]{64}")

Row = frozenset[tuple[str, str]]
Suspect = Callable[[str, str], bool]


class Batch(NamedTuple):
    """One accepted `/users` request, as the fake recorded it."""

    audience_id: str
    op: str
    session_id: int | None
    batch_seq: int | None
    rows: list[dict[str, str]]


@dataclass(frozen=True)
class Session:
    """The `session` object of an upload (§1.4); all None when the client sent none."""

    session_id: int | None = None
    batch_seq: int | None = None
    last_batch_flag: bool = False


@dataclass
class Upload:
    """A validated payload: the usable rows and the entries counted as invalid."""

    schema: tuple[str, ...]
    received: int
    rows: list[dict[str, str]] = field(default_factory=list)
    samples: dict[str, str] = field(default_factory=dict)
    invalid_entries: int = 0

    def reject(self, where: str, reason: str) -> None:
        """Count one invalid entry and keep a sample of why (up to 100, as Meta does)."""
        self.invalid_entries += 1
        if len(self.samples) < MAX_SAMPLES:
            self.samples[where] = reason


@dataclass
class Audience:
    """A customer-file custom audience and its members."""

    id: str
    name: str
    description: str
    customer_file_source: str
    time_created: int
    members: set[Row] = field(default_factory=set)

    def add(self, rows: Iterable[dict[str, str]]) -> None:
        """Add each row as a member (re-adding the same row changes nothing)."""
        self.members.update(frozenset(row.items()) for row in rows)

    def remove(self, rows: Iterable[dict[str, str]]) -> None:
        """Remove every member that shares any (key, value) pair with a removed row."""
        gone = {pair for row in rows for pair in row.items()}
        self.members = {member for member in self.members if not member & gone}

    def values(self, key: str) -> set[str]:
        """The values of one key (EMAIL, PHONE, …) across all members."""
        return {value for member in self.members for k, value in member if k == key}


def parse_schema(value: Any) -> tuple[str, ...]:
    """The schema as a tuple of keys; code 100 for an unknown key or a malformed schema."""
    if isinstance(value, str):
        if value not in SINGLE_KEYS:
            raise invalid(
                "Invalid schema: use EMAIL_SHA256, PHONE_SHA256, MOBILE_ADVERTISER_ID or a list "
                "of multi-key fields (EMAIL, PHONE, FN, LN, ...)",
                title="Invalid schema",
            )
        return (SINGLE_KEYS[value],)
    if not isinstance(value, list) or not value or not all(isinstance(k, str) for k in value):
        raise invalid("payload.schema must be a key name or a non-empty list of key names")
    unknown = [key for key in value if key not in HASHED_KEYS | FREE_KEYS | OPTION_KEYS]
    if unknown:
        raise invalid(f"Invalid schema field(s): {', '.join(unknown)}", title="Invalid schema")
    if len(set(value)) != len(value):
        raise invalid("payload.schema lists the same field twice")
    return tuple(value)


def parse_payload(
    payload: dict[str, Any], suspect: Suspect, *, hashed_extern_id: bool = False
) -> Upload:
    """Validate a `payload` object (§1.3, §1.5); `suspect(key, hash)` flags bad normalisation,
    and with `hashed_extern_id` an EXTERN_ID must be a SHA-256 hash like the PII columns."""
    free = FREE_KEYS - {"EXTERN_ID"} if hashed_extern_id else FREE_KEYS
    schema = parse_schema(payload.get("schema"))
    data = payload.get("data")
    if not isinstance(data, list) or not data:
        raise invalid("payload.data must be a non-empty list of rows", title="Empty data")
    if len(data) > MAX_ROWS:
        raise invalid(
            f"payload.data has {len(data)} rows; send at most {MAX_ROWS} per request",
            title="Too many users",
        )
    upload = Upload(schema=schema, received=len(data))
    for index, raw_row in enumerate(data):
        row = _row_cells(schema, raw_row, index)
        cells = {
            key: _cell(key, cell, index, suspect, free)
            for key, cell in zip(schema, row, strict=True)
        }
        values = {k: v for k, v in cells.items() if k not in OPTION_KEYS and v != ""}
        identity = {k: v for k, v in values.items() if v != EMPTY_SHA256}
        if len(identity) < len(values):
            upload.reject(f"row {index}", 'SHA-256 of an empty value; send "" instead')
        elif not identity:
            upload.reject(f"row {index}", "row has no identifier")
        if identity:
            upload.rows.append(identity)
    return upload


def parse_session(value: Any) -> Session:
    """The optional `session` object (§1.4): positive session_id, batch_seq ≥ 1."""
    if value is None:
        return Session()
    if not isinstance(value, dict):
        raise invalid("Param session must be a JSON object")
    session_id = _positive_int(value.get("session_id"), "session.session_id")
    seq = value.get("batch_seq")
    batch_seq = None if seq is None else _positive_int(seq, "session.batch_seq")
    last = value.get("last_batch_flag", False)
    if not isinstance(last, bool):
        raise invalid("session.last_batch_flag must be true or false")
    return Session(session_id, batch_seq, last)


def _row_cells(schema: tuple[str, ...], raw_row: Any, index: int) -> list[Any]:
    """The cells of one row, as a list as wide as the schema."""
    if isinstance(raw_row, str) and len(schema) == 1:
        return [raw_row]
    if not isinstance(raw_row, list) or len(raw_row) != len(schema):
        raise invalid(
            f"payload.data row {index} has the wrong number of columns; each row must have "
            f'exactly {len(schema)} cell(s), one per schema field (use "" for unknown)',
            title="Invalid row width",
        )
    return raw_row


def _cell(key: str, cell: Any, index: int, suspect: Suspect, free: frozenset[str]) -> Any:
    """One cell checked against its key's rule (`free` keys take any text); returns the value
    kept for membership."""
    if key in OPTION_KEYS:
        return cell
    where = f"payload.data row {index}, field {key}"
    if not isinstance(cell, str):
        raise invalid(f"{where} must be a string")
    if key in free or cell == "":
        return cell
    if not SHA256_HEX.fullmatch(cell):
        raise invalid(
            f"{where} is not a SHA-256 hash: normalise the value, hash it with SHA-256 and send "
            "64 lowercase hex characters",
            title="Data not hashed",
        )
    if suspect(key, cell):
        raise invalid(
            f"{where} is the hash of a badly normalised value (see the normalisation rules for "
            f"{key}: trim, lower-case, phone digits with country code and no '+')",
            title="Badly normalised data",
        )
    return cell


def _positive_int(value: Any, name: str) -> int:
    """An int ≥ 1, given as a JSON number or a string of digits."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid(f"{name} must be a positive integer")
    return value
