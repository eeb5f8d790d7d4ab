"""Per-profile summaries of the event log, kept at ingest so segments need not rescan it.

`event_summaries` holds, per stored profile id and event key, how many events and their first
and last timestamps; `property_summaries` the same per value (JSON text) of each property listed
in `summarised_properties`. Ingest appends one row per group of each batch (no upsert, no
index); `compact` folds every (profile, event[, property, value]) into one row, sorted by event,
so a query of a few events reads few row groups. Rows are keyed by the profile id the event was
stored under: a merge changes `profile_aliases`, never a summary. How a query reads them exactly
as of any instant is in `segments/summary.py`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

SUMMARY_TABLES = ("event_summaries", "property_summaries")
COMPACT_AT_LEAST = 65_536  # appended rows before a compaction is worth its rewrite
_EVENT_ROWS = """
INSERT INTO event_summaries
SELECT profile_id, event_key, count(*), min("timestamp"), max("timestamp")
FROM {source} WHERE event_key IS NOT NULL
GROUP BY profile_id, event_key
"""
_PROPERTY_ROWS = """
INSERT INTO property_summaries
SELECT profile_id, event_key, prop, value, count(*), min(ts), max(ts)
FROM (
    SELECT e.profile_id, e.event_key, s.prop, e."timestamp" AS ts,
        CAST(json_extract(e.properties, s.path) AS VARCHAR) AS value
    FROM {source} e JOIN {props} s ON s.event_key = e.event_key
)
WHERE value IS NOT NULL AND value <> 'null'
GROUP BY profile_id, event_key, prop, value
"""
_FOLD = {
    "event_summaries": """
        SELECT profile_id, event_key, sum(n)::BIGINT, min(first_ts), max(last_ts)
        FROM event_summaries GROUP BY profile_id, event_key ORDER BY event_key, profile_id
    """,
    "property_summaries": """
        SELECT profile_id, event_key, prop, value, sum(n)::BIGINT, min(first_ts), max(last_ts)
        FROM property_summaries GROUP BY profile_id, event_key, prop, value
        ORDER BY event_key, prop, profile_id
    """,
}


def append(con: duckdb.DuckDBPyConnection, source: str, properties: bool) -> int:
    """Summarise the events of table `source` (events layout); how many rows were appended.

    `properties`: whether any property is summarised (else that statement is skipped).
    """
    added = _count(con.execute(_EVENT_ROWS.format(source=source)).fetchall())
    if properties:
        sql = _PROPERTY_ROWS.format(source=source, props="summarised_properties")
        added += _count(con.execute(sql).fetchall())
    return added


def append_batch(
    con: duckdb.DuckDBPyConnection, events: pa.Table, summarised_events: set[str]
) -> int:
    """Summarise a batch of events held as Arrow (events layout); how many rows were appended.

    Event rows are grouped in Arrow and appended as they are (a statement per batch costs
    more than the grouping on the small batches of HTTP ingest); property rows are extracted
    by DuckDB, only when the batch holds an event whose properties are summarised.
    """
    keyed = events.filter(pc.is_valid(events.column("event_key")))
    grouped = keyed.group_by(["profile_id", "event_key"], use_threads=False).aggregate(
        [("timestamp", "count"), ("timestamp", "min"), ("timestamp", "max")]
    )
    names = ["profile_id", "event_key", "timestamp_count", "timestamp_min", "timestamp_max"]
    con.from_arrow(grouped.select(names)).insert_into("event_summaries")
    added = int(grouped.num_rows)
    kinds = pc.unique(keyed.column("event_key")).to_pylist()
    if summarised_events.intersection(kinds):
        con.register("_events", keyed)
        try:
            sql = _PROPERTY_ROWS.format(source="_events", props="summarised_properties")
            added += _count(con.execute(sql).fetchall())
        finally:
            con.unregister("_events")
    return added


def summarised(con: duckdb.DuckDBPyConnection) -> set[tuple[str, str]]:
    """The (event key, property) pairs summarised."""
    rows = con.execute("SELECT event_key, prop FROM summarised_properties").fetchall()
    return {(str(e), str(p)) for e, p in rows}


def summarise(
    con: duckdb.DuckDBPyConnection, wanted: Iterable[tuple[str, str, str]]
) -> list[tuple[str, str]]:
    """Start summarising (event key, property, JSON pointer) triples not summarised yet, and
    fill their summaries from every stored event; the pairs added."""
    known = summarised(con)
    new = sorted({(e, p, path) for e, p, path in wanted if (e, p) not in known})
    if not new:
        return []
    table = pa.table(
        {
            "event_key": [e for e, _, _ in new],
            "prop": [p for _, p, _ in new],
            "path": [path for _, _, path in new],
        }
    )
    con.register("_summarised", table)
    try:
        con.execute("INSERT INTO summarised_properties SELECT * FROM _summarised")
        con.execute(_PROPERTY_ROWS.format(source="events", props="_summarised"))
    finally:
        con.unregister("_summarised")
    return [(e, p) for e, p, _ in new]


def coverage(
    con: duckdb.DuckDBPyConnection, at: datetime
) -> tuple[set[str], set[tuple[str, str]], set[tuple[str, str]]]:
    """The events and (event, property) pairs with a row straddling `at` (events on both sides
    of it), and the summarised pairs. Zone maps answer the first two at once when computing
    now (no row has events after it)."""
    straddling = "WHERE first_ts <= $at AND last_ts > $at"
    sql = f"SELECT DISTINCT event_key FROM event_summaries {straddling}"
    events = {str(e) for (e,) in con.execute(sql, {"at": at}).fetchall()}
    sql = f"SELECT DISTINCT event_key, prop FROM property_summaries {straddling}"
    props = {(str(e), str(p)) for e, p in con.execute(sql, {"at": at}).fetchall()}
    return events, props, summarised(con)


def latest(con: duckdb.DuckDBPyConnection) -> int:
    """The latest timestamp any summary row covers, in µs (0 when there is none)."""
    rows = con.execute(
        "SELECT epoch_us(greatest((SELECT max(last_ts) FROM event_summaries), "
        "(SELECT max(last_ts) FROM property_summaries)))"
    ).fetchall()
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


def compact(con: duckdb.DuckDBPyConnection) -> int:
    """Fold the summaries to one row per group, sorted by event; the rows left."""
    rows = 0
    for table, fold in _FOLD.items():
        con.execute(f"CREATE TEMP TABLE _folded AS {fold}")
        try:
            con.execute(f"DELETE FROM {table}")
            con.execute(f"INSERT INTO {table} SELECT * FROM _folded")
            rows += _count(con.execute(f"SELECT count(*) FROM {table}").fetchall())
        finally:
            con.execute("DROP TABLE _folded")
    return rows


def rebuild(con: duckdb.DuckDBPyConnection) -> int:
    """Summaries recomputed from the whole event log (after events were written by other
    means than ingest); the rows written."""
    for table in SUMMARY_TABLES:
        con.execute(f"DELETE FROM {table}")
    append(con, "events", properties=bool(summarised(con)))
    return compact(con)


def _count(rows: list[tuple[object, ...]]) -> int:
    """The number a statement answered with (an insert's row count, a count(*))."""
    value = rows[0][0] if rows else 0
    return int(value) if isinstance(value, int) else 0
