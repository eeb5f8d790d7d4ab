"""Validate JSON Lines in bulk: DuckDB parses a chunk of lines and applies Segment's rules as SQL.

A line takes the bulk path only when SQL can prove the per-message validator would accept it
unchanged: a JSON object of at most 7,000 bytes and `MAX_DEPTH` opening brackets (so it cannot
nest deeper than the validator allows) that orjson reads the same way (no NaN, Infinity,
trailing commas or out-of-range numbers, which DuckDB's reader tolerates), a track, page, screen
or group call with a string messageId, string ids, and strict ISO-8601 times in range. Every other
line — blank, broken, rejected, an identify or alias call, a message carrying person traits or
anything unusual — goes through `validate_message`, so the result is the same either way.
Two differences remain, both outside what JSON defines: a number is stored with the same value
but possibly another notation (1e16 as 10000000000000000.0), and an object that repeats a key
keeps its first value where orjson keeps the last.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cohortsync.events.columnar import ColumnarBatch, int64s, python_rows
from cohortsync.events.readers import BadRow, parse_jsonl_line
from cohortsync.events.timestamps import MAX_US, MIN_US
from cohortsync.events.validate import MAX_DEPTH, content_message_id, validate_message
from cohortsync.segments.names import event_key
from cohortsync.store.records import Message, Rejection

BULK_MAX_LINE_BYTES = 7_000  # orjson re-serialises at most 4.5× larger (1e15 → 1000000000000000.0)
_SCAN_BYTES = 1 << 23
_BRACKET_SCAN_BYTES = 1 << 20
_SCAN_ROWS = 16_384
_FIELDS = (
    "type", "messageId", "userId", "anonymousId", "event", "name", "groupId", "timestamp",
    "originalTimestamp", "sentAt", "receivedAt", "properties", "traits", "context", "integrations",
)  # fmt: skip
_SCHEMA = "{" + ",".join(f'"{field}":"JSON"' for field in _FIELDS) + "}"
# A strict ISO-8601 subset that Python's fromisoformat and DuckDB's cast read identically.
_ISO = (
    r'"[0-9]{4}-[0-9]{2}-[0-9]{2}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?'
    r'(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?"'
)
# What DuckDB's JSON reader accepts and orjson refuses or reads differently: NaN and Infinity in
# any case, integers of 19+ digits, exponents of 3 digits, trailing commas. One pattern per
# leading byte keeps each scan on RE2's fast path. A line that is not JSON at all makes
# json_transform fail: try() turns that into NULL, and a non-object yields no type.
_ODD_VALUE = r"\s*-?([NnIi]|[0-9]{19}|[0-9][0-9.]*[eE][+-]?[0-9]{3})"
_MACROS = (
    # The text of a JSON string field, or NULL if absent, null or not a string.
    "CREATE MACRO jstr(x) AS CASE WHEN starts_with(x, '\"') THEN (CASE WHEN contains(x, '\\') "
    "THEN x->>'$' ELSE substring(x, 2, length(x) - 2) END) END",
    # Microseconds of a strict ISO-8601 field, NULL if absent or null, -1 (out of range) if odd.
    f"CREATE MACRO jtime(x) AS CASE WHEN x IS NULL THEN NULL WHEN regexp_full_match(x, '{_ISO}') "
    "THEN coalesce(epoch_us(TRY_CAST(substring(x, 2, length(x) - 2) AS TIMESTAMPTZ)), -1) "
    "ELSE -1 END",
    "CREATE MACRO jobject(x) AS x IS NULL OR starts_with(x, '{')",
    "CREATE MACRO jid(x, v) AS x IS NULL OR (starts_with(x, '\"') AND strlen(v) <= 1024)",
    f"CREATE MACRO in_range(t) AS t IS NULL OR t BETWEEN {MIN_US} AND {MAX_US}",
)
_PARSE = f"""
SELECT n, unnest(CASE
    WHEN strlen(line) <= {BULK_MAX_LINE_BYTES}
     AND shallow
     AND NOT regexp_matches(line, ':{_ODD_VALUE}')
     AND NOT regexp_matches(line, ',(\\s*[\\]}}]|{_ODD_VALUE})')
     AND NOT regexp_matches(line, '\\[{_ODD_VALUE}')
    THEN try(json_transform(line, '{_SCHEMA}')) END)
FROM lines
"""
_VALUES = f"""
SELECT n, type IS NOT NULL AS parsed, jstr(type) AS kind, jstr(messageId) AS message_id,
    userId, jstr(userId) AS uid, anonymousId, jstr(anonymousId) AS aid,
    jstr(event) AS ev, jstr(name) AS name, groupId, jstr(groupId) AS gid,
    jtime(timestamp) AS ts, jtime(originalTimestamp) AS ots, jtime(sentAt) AS sent,
    jtime(receivedAt) AS recv, properties, traits, context, integrations
FROM ({_PARSE})
"""
_TIMES = """
SELECT *, coalesce(recv, $received) AS received, coalesce(ts, ots, coalesce(recv, $received))
    AS original
FROM values_
"""
_ROWS = f"""
WITH values_ AS ({_VALUES}), times AS ({_TIMES})
SELECT n,
    coalesce(parsed
    AND kind IN ('track', 'page', 'screen', 'group')
    AND strlen(message_id) BETWEEN 1 AND 100
    AND jid(userId, uid) AND jid(anonymousId, aid)
    AND coalesce(nullif(uid, ''), nullif(aid, '')) IS NOT NULL
    AND (kind <> 'track' OR regexp_matches(ev, '[!-~]'))
    AND (kind <> 'group' OR (strlen(gid) BETWEEN 1 AND 1024 AND starts_with(groupId, '"')))
    AND jobject(properties) AND jobject(traits) AND jobject(integrations)
    AND jobject(context) AND NOT coalesce(contains(context, '"traits"'), false)
    AND in_range(ts) AND in_range(ots) AND in_range(sent) AND in_range(recv)
    AND in_range(CASE WHEN sent IS NOT NULL THEN received - (sent - original) END), false)
    AS bulk,
    message_id, kind AS type, $source AS source,
    CASE WHEN kind = 'track' THEN ev END AS event, NULL::VARCHAR AS event_key, name,
    nullif(uid, '') AS user_id, nullif(aid, '') AS anonymous_id, NULL::VARCHAR AS previous_id,
    CASE WHEN kind = 'group' THEN gid END AS group_id,
    CASE WHEN sent IS NULL THEN original ELSE received - (sent - original) END AS "timestamp",
    original AS original_timestamp, sent AS sent_at, received AS received_at,
    properties, traits, context, integrations
FROM times
"""


@dataclass(frozen=True)
class LineChunk:
    """Whole lines of a file: line i spans data[bounds[i]:bounds[i + 1]], newline included."""

    first_line: int
    data: bytes
    bounds: np.ndarray

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def line(self, index: int) -> bytes:
        """The bytes of line `index` of the chunk (0-based)."""
        return self.data[self.bounds[index] : self.bounds[index + 1]]


def read_chunks(path: Path, lines: int) -> Iterator[LineChunk]:
    """Split a file into chunks of `lines` whole lines (the last one may lack its newline)."""
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            start, first = 0, 1
            while start < size:
                ends = _line_ends(view, start, size, lines)
                bounds = np.concatenate(([0], ends - start))
                yield LineChunk(first, view[start : int(ends[-1])], bounds)
                first += len(ends)
                start = int(ends[-1])


def _line_ends(view: mmap.mmap, start: int, size: int, lines: int) -> np.ndarray:
    """Offsets just past each of the next `lines` lines from `start` (newline included)."""
    found: list[np.ndarray] = []
    count = 0
    position = start
    while count < lines and position < size:
        stop = min(size, position + _SCAN_BYTES)
        block = np.frombuffer(view, np.uint8, stop - position, position)
        ends = np.flatnonzero(block == 10) + (position + 1)
        del block  # the mmap cannot close while a view of it is alive
        found.append(ends[: lines - count])
        count += len(found[-1])
        position = stop
    result = np.concatenate(found) if found else np.empty(0, np.int64)
    if count < lines and (not len(result) or result[-1] != size):
        result = np.append(result, size)  # the last line has no newline
    return result.astype(np.int64)


class BulkValidator:
    """Validates chunks of JSON Lines with a private in-memory DuckDB (it never sees the store)."""

    def __init__(self) -> None:
        self._con = duckdb.connect()
        self._con.execute("SET TimeZone = 'UTC'")
        for macro in _MACROS:
            self._con.execute(macro)

    def close(self) -> None:
        """Release the in-memory database."""
        self._con.close()

    def validate(
        self, chunk: LineChunk, path: Path, source: str, received_at_us: int
    ) -> ColumnarBatch:
        """Validate every line of `chunk`; bad lines become rejections at `path:LINE`."""
        numbers = int64s(np.arange(chunk.first_line, chunk.first_line + len(chunk)))
        shallow = _bracket_counts(chunk) <= MAX_DEPTH
        lines = pa.table({"n": numbers, "line": _text(chunk), "shallow": shallow})
        # Several record batches let DuckDB scan them on all its threads.
        self._con.register("lines", pa.Table.from_batches(lines.to_batches(_SCAN_ROWS)))
        try:
            params = {"received": received_at_us, "source": source}
            table = self._con.sql(_ROWS, params=params).to_arrow_table()
        finally:
            self._con.unregister("lines")
        bulk = table.column("bulk")
        events = _with_event_keys(table.filter(bulk).drop_columns(["bulk"]))
        others = table.filter(pc.invert(bulk)).column("n").to_pylist()
        messages: list[tuple[int, Message]] = []
        rejections: list[Rejection] = []
        for number in others:
            checked = _one_line(chunk, number, path, source, received_at_us)
            if isinstance(checked, Message):
                messages.append((number, checked))
            elif checked is not None:
                rejections.append(checked)
        return ColumnarBatch.of(messages, rejections, bulk=events)


def _text(chunk: LineChunk) -> pa.Array:
    """The chunk's lines as one Arrow string array over the same bytes (no copy per line)."""
    offsets = pa.py_buffer(chunk.bounds.astype(np.int64))
    lines = pa.LargeStringArray.from_buffers(len(chunk), offsets, pa.py_buffer(chunk.data))
    try:
        lines.validate(full=True)
    except pa.ArrowInvalid:  # not UTF-8: such lines are left to the per-line reader
        texts = [_utf8_or_empty(chunk.line(i)) for i in range(len(chunk))]
        return pa.array(texts, pa.large_string())
    return lines


def _bracket_counts(chunk: LineChunk) -> np.ndarray:
    """How many `{` and `[` each line holds: no line nests deeper (one vectorised pass)."""
    view = np.frombuffer(chunk.data, np.uint8)
    found = [
        # "[" (0x5B) and "{" (0x7B) differ in one bit, which no other byte pair maps onto 0x7B
        np.flatnonzero((view[start : start + _BRACKET_SCAN_BYTES] | 0x20) == 0x7B) + start
        for start in range(0, len(view), _BRACKET_SCAN_BYTES)
    ]
    where = np.concatenate(found) if found else np.empty(0, np.int64)
    return np.diff(np.searchsorted(where, chunk.bounds))


def _utf8_or_empty(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return ""


def _one_line(
    chunk: LineChunk, number: int, path: Path, source: str, received_at_us: int
) -> Message | Rejection | None:
    """What the per-line reader and `validate_message` make of one line (None if blank)."""
    row = parse_jsonl_line(chunk.line(number - chunk.first_line))
    if row is None:
        return None
    origin = f"{path}:{number}"
    if isinstance(row, BadRow):
        return Rejection(row.reason, row.detail, origin, row.text, source=source)
    return validate_message(
        row,
        source=source,
        received_at_us=received_at_us,
        origin=origin,
        new_id=content_message_id,
        keep_received_at=True,
    )


def _with_event_keys(table: pa.Table) -> pa.Table:
    """Fill `event_key` from `event`, computed once per distinct event name."""
    events = table.column("event").combine_chunks().dictionary_encode()
    names = events.dictionary.to_pylist()
    keys = pa.array([event_key(name) for name in names], pa.string()).take(events.indices)
    position = table.schema.get_field_index("event_key")
    return table.set_column(position, "event_key", keys)


__all__ = ["BULK_MAX_LINE_BYTES", "BulkValidator", "LineChunk", "python_rows", "read_chunks"]
