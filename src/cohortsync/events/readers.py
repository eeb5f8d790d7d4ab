"""Read Segment messages from files: JSON Lines, CSV and Parquet, with a row position for errors.

Column mapping for CSV and Parquet (documented in the README):
- `type` (default `track`), `messageId`, `timestamp`, `userId`, `anonymousId`, `event`, `name`,
  `previousId`, `groupId`, `sentAt`, `receivedAt`; snake_case spellings (`user_id`) work too;
- `properties`, `traits`, `context` columns may hold a JSON object (or a Parquet struct);
- dotted columns nest: `properties.revenue`, `traits.email`, `context.traits.phone`;
- any other column goes to `properties` (track, page, screen) or `traits` (identify, group).
CSV cells: empty means absent; `true`/`false`, numbers and JSON objects or arrays are decoded.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from cohortsync.errors import InputError
from cohortsync.events.models import MAX_MESSAGE_BYTES

_TOP_LEVEL = {
    "type": "type",
    "messageId": "messageId",
    "message_id": "messageId",
    "timestamp": "timestamp",
    "userId": "userId",
    "user_id": "userId",
    "anonymousId": "anonymousId",
    "anonymous_id": "anonymousId",
    "event": "event",
    "name": "name",
    "previousId": "previousId",
    "previous_id": "previousId",
    "groupId": "groupId",
    "group_id": "groupId",
    "sentAt": "sentAt",
    "sent_at": "sentAt",
    "receivedAt": "receivedAt",
    "received_at": "receivedAt",
}
_OBJECTS = ("properties", "traits", "context", "integrations")
_STRING_FIELDS = frozenset(_TOP_LEVEL.values())
_PROGRESS_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that is not a message at all (broken JSON); it is quarantined with this reason."""

    reason: str
    detail: str
    text: str


Row = tuple[int, Any]  # (line or row number, message dict or BadRow)
Progress = Callable[[int], None]


def detect_format(path: Path) -> str:
    """The reader for a file, by its extension."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffixes and suffixes[-1] in (".csv", ".tsv"):
        return "csv"
    if suffixes and suffixes[-1] in (".parquet", ".pq"):
        return "parquet"
    raise InputError(
        f"{path}: cannot tell the format from the extension: "
        "use .jsonl (one Segment message per line), .csv or .parquet"
    )


def file_size(path: Path) -> int:
    """The unit of progress for a file: bytes for text files, rows for Parquet."""
    if detect_format(path) == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    return path.stat().st_size


def read_rows(path: Path, progress: Progress | None = None) -> Iterator[Row]:
    """Yield (position, message-or-BadRow) for every row in `path`."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    kind = detect_format(path)
    if kind == "jsonl":
        return _read_jsonl(path, progress)
    if kind == "csv":
        return _read_csv(path, progress)
    return _read_parquet(path, progress)


def _read_jsonl(path: Path, progress: Progress | None) -> Iterator[Row]:
    pending = 0
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            pending += len(line)
            if progress is not None and pending >= _PROGRESS_BYTES:
                progress(pending)
                pending = 0
            row = parse_jsonl_line(line)
            if row is not None:
                yield number, row
    if progress is not None and pending:
        progress(pending)


def parse_jsonl_line(line: bytes) -> Any:
    """One line of a JSON Lines file (newline included): its value, a `BadRow`, or None if blank."""
    if not line.strip():
        return None
    if len(line) > MAX_MESSAGE_BYTES:
        return BadRow(
            "message_too_large",
            f"a message may be at most {MAX_MESSAGE_BYTES} bytes: move large data out of it",
            line[:MAX_MESSAGE_BYTES].decode("utf-8", "replace"),
        )
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        text = line.decode("utf-8", "replace").rstrip("\n")
        return BadRow("invalid_json", f"not valid JSON ({exc.msg})", text)


def _read_csv(path: Path, progress: Progress | None) -> Iterator[Row]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open("rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")  # Excel writes a BOM
        reader = csv.DictReader(text, delimiter=delimiter)
        position = 0
        for row in reader:
            if progress is not None and reader.line_num % 1000 == 0:
                now = raw.tell()
                progress(now - position)
                position = now
            line = reader.line_num
            if None in row:
                yield line, BadRow("invalid_row", "this row has more cells than the header", "")
                continue
            cells = {k: v if k in _TOP_LEVEL else _cell(v) for k, v in row.items() if v}
            yield line, map_columns(cells)
        if progress is not None:
            progress(raw.tell() - position)


def _read_parquet(path: Path, progress: Progress | None) -> Iterator[Row]:
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=50_000):
        for row in batch.to_pylist():
            number += 1
            yield number, map_columns({k: _plain(v) for k, v in row.items() if v is not None})
        if progress is not None:
            progress(batch.num_rows)


def map_columns(row: dict[str, Any]) -> dict[str, Any]:
    """Turn one flat row into a Segment message using the documented column mapping."""
    message: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for column, value in row.items():
        if column in _TOP_LEVEL:
            message[_TOP_LEVEL[column]] = str(value) if isinstance(value, int | float) else value
        elif column in _OBJECTS:
            message[column] = orjson.loads(value) if isinstance(value, str) else value
        elif "." in column and column.split(".", 1)[0] in _OBJECTS:
            head, rest = column.split(".", 1)
            target = message.setdefault(head, {})
            *parents, leaf = rest.split(".")
            for part in parents:
                target = target.setdefault(part, {})
            target[leaf] = value
        else:
            extra[column] = value
    message.setdefault("type", "track")
    if extra:
        field = "traits" if message["type"] in ("identify", "group") else "properties"
        message.setdefault(field, {}).update(extra)
    return message


def _plain(value: Any) -> Any:
    """Parquet values as JSON would carry them: times as ISO-8601 text, decimals as floats."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _cell(value: str) -> Any:
    """Decode a CSV cell: booleans, numbers and JSON objects or arrays; otherwise the text."""
    if value in ("true", "false"):
        return value == "true"
    first = value[0]
    if first in "{[":
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    if value.startswith("0") and len(value) > 1 and value[1] != ".":
        return value  # a zip code or an id with leading zeros, not a number
    if first.isdigit() or first in "-.":
        try:
            number = float(value)
        except ValueError:
            return value
        if number.is_integer() and "." not in value and "e" not in value.lower():
            return int(value) if len(value) < 16 else value
        return number
    return value
