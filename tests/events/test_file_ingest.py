"""Ingesting files: JSON Lines, CSV and Parquet, bad rows quarantined at `PATH:LINE`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cohortsync.engine import Engine
from cohortsync.errors import InputError


@pytest.fixture
def engine(project_on_both: Path) -> Iterator[Engine]:
    """The project on each store engine: a file ingests the same into both."""
    with Engine.open(project_on_both) as opened:
        yield opened


def query(engine: Engine, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    if engine.store.dialect == "postgres":  # its driver's placeholder
        sql = sql.replace("?", "%s")
    return engine.store.query(sql, params or [])  # type: ignore[attr-defined]


def quarantine(engine: Engine) -> list[tuple[str, str]]:
    return [
        (o, r) for o, r in query(engine, "SELECT origin, reason FROM quarantine ORDER BY origin")
    ]


def properties(engine: Engine, where: str, params: list[Any]) -> dict[str, Any]:
    rows = query(engine, f"SELECT properties FROM events WHERE {where}", params)
    assert len(rows) == 1, rows
    value = rows[0][0]  # DuckDB hands JSON back as text, Postgres decoded
    return dict(json.loads(value) if isinstance(value, str) else value)


def snapshot(engine: Engine) -> dict[str, Any]:
    return {
        "stats": engine.stats(),
        "events": query(engine, "SELECT * FROM events ORDER BY message_id"),
        "quarantine": query(engine, "SELECT * FROM quarantine ORDER BY quarantine_id"),
        "identities": query(engine, "SELECT * FROM identities ORDER BY kind, value"),
        "traits": query(engine, "SELECT * FROM profile_traits ORDER BY profile_id, name"),
        "profiles": query(engine, "SELECT * FROM profiles ORDER BY profile_id"),
    }


# --- JSON Lines --------------------------------------------------------------------------------

JSONL_LINES = [
    # 1: good identify
    '{"type": "identify", "messageId": "f-1", "userId": "u1", "timestamp": "2026-05-01T10:00:00Z",'
    ' "traits": {"email": "Ann@Example.com", "plan": "pro"}}',
    # 2: good track
    '{"type": "track", "messageId": "f-2", "userId": "u1", "event": "Order Completed",'
    ' "timestamp": "2026-05-01T11:00:00Z", "properties": {"revenue": 42.5}}',
    # 3: broken JSON
    '{"type": "track", "userId": "u1", "event": "Broken"',
    # 4: blank
    "",
    # 5: neither userId nor anonymousId
    '{"type": "track", "messageId": "f-5", "event": "Order Completed"}',
    # 6: a track without an event name
    '{"type": "track", "messageId": "f-6", "userId": "u1", "timestamp": "2026-05-01T12:00:00Z"}',
    # 7: good, without messageId
    '{"type": "page", "anonymousId": "a7", "name": "Home", "timestamp": "2026-05-01T12:30:00Z"}',
]


@pytest.fixture
def jsonl_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(JSONL_LINES) + "\n", encoding="utf-8")
    return path


def test_jsonl_good_rows_are_stored_and_bad_rows_quarantined_with_file_and_line(
    engine: Engine, jsonl_file: Path
) -> None:
    report = engine.ingest_file(jsonl_file)

    assert report.path == jsonl_file
    assert report.result.received == 6
    assert report.result.stored == 3
    assert report.result.quarantined == 3
    assert engine.stats()["events"]["by_type"] == {"identify": 1, "page": 1, "track": 1}
    assert quarantine(engine) == [
        (f"{jsonl_file}:3", "invalid_json"),
        (f"{jsonl_file}:5", "no_user_anon_id"),
        (f"{jsonl_file}:6", "missing_event"),
    ]
    assert engine.stats()["quarantined"] == {
        "total": 3,
        "by_reason": {"invalid_json": 1, "missing_event": 1, "no_user_anon_id": 1},
    }


def test_quarantined_row_keeps_its_text_a_fix_hint_and_its_source(
    engine: Engine, jsonl_file: Path
) -> None:
    engine.ingest_file(jsonl_file)

    rows = query(
        engine,
        "SELECT reason, detail, payload, source FROM quarantine WHERE origin = ?",
        [f"{jsonl_file}:3"],
    )
    assert len(rows) == 1
    reason, detail, payload, source = rows[0]
    assert reason == "invalid_json"
    assert "JSON" in detail
    assert payload == JSONL_LINES[2]
    assert source == "file:events.jsonl"

    (missing_event_detail,) = query(
        engine, "SELECT detail FROM quarantine WHERE reason = 'missing_event'"
    )[0]
    assert "event" in missing_event_detail


def test_jsonl_identify_builds_the_profile(engine: Engine, jsonl_file: Path) -> None:
    engine.ingest_file(jsonl_file)

    view = engine.find_profile("email:ann@example.com")
    assert view.profile_id == engine.find_profile("user_id:u1").profile_id
    assert view.traits["plan"] == "pro"
    assert {"f-1", "f-2"} <= {e["message_id"] for e in view.recent_events}


def test_reingesting_the_same_file_changes_nothing(engine: Engine, jsonl_file: Path) -> None:
    engine.ingest_file(jsonl_file)
    before = snapshot(engine)

    again = engine.ingest_file(jsonl_file)

    assert again.result.stored == 0
    assert again.result.duplicates == 3
    assert snapshot(engine) == before


def test_row_without_message_id_gets_a_stable_id_so_a_renamed_copy_is_a_duplicate(
    engine: Engine, jsonl_file: Path, tmp_path: Path
) -> None:
    engine.ingest_file(jsonl_file)
    ids = query(engine, "SELECT message_id FROM events WHERE type = 'page'")
    assert len(ids) == 1
    assert ids[0][0].startswith("content-")

    copy = tmp_path / "export-again.jsonl"
    shutil.copy(jsonl_file, copy)
    again = engine.ingest_file(copy)

    assert again.result.stored == 0
    assert query(engine, "SELECT message_id FROM events WHERE type = 'page'") == ids


def test_reingesting_an_old_export_without_timestamps_keeps_newer_traits(
    engine: Engine, tmp_path: Path
) -> None:
    export = tmp_path / "crm.jsonl"
    export.write_text(
        '{"type": "identify", "userId": "u1", "traits": {"plan": "free"}}\n', encoding="utf-8"
    )
    engine.ingest_file(export)
    engine.ingest_messages(
        [{"type": "identify", "messageId": "upgrade", "userId": "u1", "traits": {"plan": "pro"}}]
    )

    again = engine.ingest_file(export)

    assert again.result.duplicates == 1
    assert engine.find_profile("user_id:u1").traits["plan"] == "pro"


def test_reingesting_a_file_with_an_invalid_email_counts_it_once(
    engine: Engine, tmp_path: Path
) -> None:
    path = tmp_path / "bad-email.jsonl"
    path.write_text(
        '{"type": "identify", "messageId": "b-1", "userId": "u1", "traits": {"email": "jane@"}}\n',
        encoding="utf-8",
    )
    engine.ingest_file(path)
    engine.ingest_file(path)

    assert engine.stats()["identifiers"]["rejected"] == {"email": 1}


def test_jsonl_line_that_is_not_an_object_is_quarantined(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    path.write_text(
        '[1, 2]\n{"type": "track", "userId": "u", "event": "E", "messageId": "ok"}\n',
        encoding="utf-8",
    )
    report = engine.ingest_file(path)

    assert report.result.stored == 1
    assert quarantine(engine) == [(f"{path}:1", "invalid_message")]


def test_jsonl_line_over_the_message_size_limit_is_quarantined_at_its_line(
    engine: Engine, tmp_path: Path
) -> None:
    path = tmp_path / "big.jsonl"
    big = {"type": "track", "userId": "u", "event": "E", "properties": {"blob": "x" * 40_000}}
    small = {"type": "track", "userId": "u", "event": "E", "messageId": "small"}
    path.write_text(json.dumps(small) + "\n" + json.dumps(big) + "\n", encoding="utf-8")

    report = engine.ingest_file(path)

    assert report.result.stored == 1
    assert quarantine(engine) == [(f"{path}:2", "message_too_large")]


# --- CSV ---------------------------------------------------------------------------------------

CSV_TEXT = """\
type,userId,event,timestamp,properties.revenue,traits.email,zip,coupon,gift
identify,00123,,2026-05-01T10:00:00Z,,Cat@Example.com,02139,,
track,00123,Order Completed,2026-05-01T11:00:00Z,42.50,,02139,SPRING,true
track,00123,,2026-05-01T12:00:00Z,10,,,,
track,00123,Order Completed,2026-05-01T13:00:00Z,1,,,,,surplus
track,00123,Order Completed,2026-05-01T14:00:00Z,7,,90210,,false
"""


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    path = tmp_path / "orders.csv"
    path.write_text(CSV_TEXT, encoding="utf-8")
    return path


def test_csv_columns_map_to_segment_fields(engine: Engine, csv_file: Path) -> None:
    report = engine.ingest_file(csv_file)

    assert report.result.stored == 3
    assert report.result.quarantined == 2
    view = engine.find_profile("email:cat@example.com")
    assert view.profile_id == engine.find_profile("user_id:00123").profile_id
    assert view.traits["zip"] == "02139"
    assert view.traits["email"] == "Cat@Example.com"

    first = properties(engine, "timestamp = ?", [datetime(2026, 5, 1, 11, tzinfo=UTC)])
    assert first == {"revenue": 42.5, "zip": "02139", "coupon": "SPRING", "gift": True}
    # Documented cell decoding: numbers are decoded, a leading zero keeps the text.
    last = properties(engine, "timestamp = ?", [datetime(2026, 5, 1, 14, tzinfo=UTC)])
    assert last == {"revenue": 7, "zip": 90210, "gift": False}
    assert query(engine, "SELECT DISTINCT user_id, event FROM events WHERE type = 'track'") == [
        ("00123", "Order Completed")
    ]


def test_csv_bad_rows_are_quarantined_with_their_line(engine: Engine, csv_file: Path) -> None:
    engine.ingest_file(csv_file)

    assert quarantine(engine) == [
        (f"{csv_file}:4", "missing_event"),
        (f"{csv_file}:5", "invalid_row"),
    ]


def test_reingesting_a_csv_file_changes_nothing(engine: Engine, csv_file: Path) -> None:
    engine.ingest_file(csv_file)
    before = snapshot(engine)

    again = engine.ingest_file(csv_file)

    assert again.result.stored == 0
    assert snapshot(engine) == before


def test_csv_with_snake_case_headers_and_json_cells(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "snake.csv"
    path.write_text(
        "type,message_id,user_id,anonymous_id,event,timestamp,properties,context.traits.phone\n"
        'track,s-1,42,anon-42,Signed Up,2026-05-01T09:00:00Z,"{""plan"": ""pro"", ""seats"": 3}",'
        "(415) 555-2671\n",
        encoding="utf-8",
    )

    report = engine.ingest_file(path)

    assert report.result.stored == 1
    assert query(engine, "SELECT message_id, user_id, anonymous_id, event FROM events") == [
        ("s-1", "42", "anon-42", "Signed Up")
    ]
    assert properties(engine, "message_id = ?", ["s-1"]) == {"plan": "pro", "seats": 3}
    view = engine.find_profile("phone:+14155552671")
    assert view.profile_id == engine.find_profile("user_id:42").profile_id


def test_csv_saved_by_excel_with_a_byte_order_mark_is_read(engine: Engine, tmp_path: Path) -> None:
    # Excel's "CSV UTF-8" writes a BOM before the first header.
    path = tmp_path / "excel.csv"
    path.write_bytes("type,userId,traits.email\nidentify,x1,xl@example.com\n".encode("utf-8-sig"))

    report = engine.ingest_file(path)

    assert quarantine(engine) == []
    assert report.result.stored == 1
    assert engine.stats()["events"]["by_type"] == {"identify": 1}
    assert engine.find_profile("email:xl@example.com").profile_id


def test_csv_row_after_a_multiline_cell_is_located_on_its_own_line(
    engine: Engine, tmp_path: Path
) -> None:
    path = tmp_path / "notes.csv"
    path.write_text(
        "type,userId,event,note\n"
        'track,u1,Note Added,"line one\nline two"\n'
        "track,u1,,no event here\n",
        encoding="utf-8",
    )
    engine.ingest_file(path)

    assert quarantine(engine) == [(f"{path}:4", "missing_event")]


# --- Parquet -----------------------------------------------------------------------------------


def _write_parquet(path: Path, columns: dict[str, pa.Array | list[Any]]) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


@pytest.fixture
def parquet_file(tmp_path: Path) -> Path:
    struct = pa.struct([("revenue", pa.float64()), ("sku", pa.string())])
    return _write_parquet(
        tmp_path / "events.parquet",
        {
            "type": ["identify", "track", "track", "track"],
            "userId": ["p1", "p1", None, "p1"],
            "event": [None, "Order Completed", "Order Completed", None],
            "timestamp": [
                "2026-05-01T10:00:00Z",
                "2026-05-01T11:00:00Z",
                "2026-05-01T12:00:00Z",
                "2026-05-01T13:00:00Z",
            ],
            "properties": pa.array(
                [None, {"revenue": 19.5, "sku": "COF-1"}, {"revenue": 1.0, "sku": "X"}, None],
                struct,
            ),
            "traits.email": ["PQ@example.com", None, None, None],
            "channel": ["web", "web", "web", "web"],
        },
    )


def test_parquet_rows_with_struct_properties_are_stored(engine: Engine, parquet_file: Path) -> None:
    report = engine.ingest_file(parquet_file)

    assert report.result.stored == 2
    view = engine.find_profile("email:pq@example.com")
    assert view.profile_id == engine.find_profile("user_id:p1").profile_id
    assert view.traits["channel"] == "web"
    assert properties(engine, "type = 'track'", []) == {
        "revenue": 19.5,
        "sku": "COF-1",
        "channel": "web",
    }
    assert quarantine(engine) == [
        (f"{parquet_file}:3", "no_user_anon_id"),
        (f"{parquet_file}:4", "missing_event"),
    ]


def test_reingesting_a_parquet_file_changes_nothing(engine: Engine, parquet_file: Path) -> None:
    engine.ingest_file(parquet_file)
    before = snapshot(engine)
    ids = query(engine, "SELECT message_id FROM events")
    assert all(mid.startswith("content-") for (mid,) in ids)

    again = engine.ingest_file(parquet_file)

    assert again.result.stored == 0
    assert again.result.duplicates == 2
    assert snapshot(engine) == before


def test_parquet_integer_ids_become_strings(engine: Engine, tmp_path: Path) -> None:
    path = _write_parquet(
        tmp_path / "ints.parquet",
        {"userId": pa.array([1001], pa.int64()), "event": ["Signed Up"], "messageId": ["i-1"]},
    )
    engine.ingest_file(path)

    assert query(engine, "SELECT user_id, type FROM events") == [("1001", "track")]
    assert engine.find_profile("user_id:1001").profile_id


def test_parquet_timestamp_column_typed_as_timestamp_is_accepted(
    engine: Engine, tmp_path: Path
) -> None:
    # Warehouse exports write event times as Parquet timestamps, not strings.
    moment = datetime(2026, 5, 1, 11, 30, tzinfo=UTC)
    path = _write_parquet(
        tmp_path / "typed.parquet",
        {
            "userId": ["t1"],
            "event": ["Order Completed"],
            "messageId": ["ts-1"],
            "timestamp": pa.array([moment], pa.timestamp("us", tz="UTC")),
        },
    )

    report = engine.ingest_file(path)

    assert quarantine(engine) == []
    assert report.result.stored == 1
    assert query(engine, 'SELECT "timestamp" FROM events') == [(moment,)]


def test_parquet_decimal_and_date_columns_are_stored(engine: Engine, tmp_path: Path) -> None:
    # Warehouses export money as DECIMAL and days as DATE.
    path = _write_parquet(
        tmp_path / "orders.parquet",
        {
            "userId": ["d1"],
            "event": ["Order Completed"],
            "messageId": ["dec-1"],
            "properties.revenue": pa.array([Decimal("19.99")], pa.decimal128(10, 2)),
            "properties.ship_date": pa.array([date(2026, 5, 3)], pa.date32()),
        },
    )

    report = engine.ingest_file(path)

    assert report.result.stored == 1
    stored = properties(engine, "message_id = ?", ["dec-1"])
    assert float(stored["revenue"]) == 19.99
    assert stored["ship_date"] == "2026-05-03"


# --- unreadable inputs -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["events.txt", "events.xlsx", "events"])
def test_unknown_extension_is_a_clear_input_error(
    engine: Engine, tmp_path: Path, name: str
) -> None:
    path = tmp_path / name
    path.write_text('{"type": "track", "userId": "u", "event": "E"}\n', encoding="utf-8")

    with pytest.raises(InputError) as caught:
        engine.ingest_file(path)

    message = str(caught.value)
    assert str(path) in message
    for extension in (".jsonl", ".csv", ".parquet"):
        assert extension in message
    assert engine.stats()["events"]["total"] == 0


def test_missing_file_is_a_clear_input_error(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        engine.ingest_file(tmp_path / "nope.jsonl")
