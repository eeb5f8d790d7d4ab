"""An explicit `timestamp` wins over `originalTimestamp`, over HTTP and in files alike.

rudder-sdk-node sets `originalTimestamp` to the moment of the call on every message, and keeps
the caller's `timestamp` beside it: a historical import sent through it must land at the time
it names, not at the time it was sent.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from cohortsync.engine import Engine
from cohortsync.events.timestamps import parse_timestamp
from tests.conftest import WRITE_KEY, LiveServer

HISTORICAL = "2024-03-01T12:00:00Z"
SECOND_US = 1_000_000


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def imported(message_id: str, kind: str = "track", **extra: Any) -> dict[str, Any]:
    """A message as rudder-sdk-node sends a historical event: its time, and "now" beside it."""
    now = iso(datetime.now(UTC))
    message = {
        "type": kind,
        "messageId": message_id,
        "userId": "u1",
        "timestamp": HISTORICAL,
        "originalTimestamp": now,
        "sentAt": now,
        **extra,
    }
    if kind == "track":
        message["event"] = "Order Completed"
    return message


def stored_times(engine: Engine) -> dict[str, tuple[int, int]]:
    rows = engine.store.query(  # type: ignore[attr-defined]
        "SELECT message_id, epoch_us(timestamp), epoch_us(original_timestamp) FROM events"
    )
    return {row[0]: (row[1], row[2]) for row in rows}


def near(value: int, iso_time: str) -> bool:
    """Within a few seconds: the skew correction moves a time by the client's clock error."""
    return abs(value - parse_timestamp(iso_time)) < 5 * SECOND_US


def test_http_event_lands_at_its_explicit_timestamp(
    live_server: LiveServer, engine: Engine
) -> None:
    single = imported("single")
    batch = {"batch": [imported("in-batch"), imported("identify", "identify")]}
    for path, body in (("/v1/track", single), ("/v1/batch", batch)):
        response = httpx.post(live_server.url + path, json=body, auth=(WRITE_KEY, ""))
        assert response.status_code == 200, response.text

    times = stored_times(engine)
    assert set(times) == {"single", "in-batch", "identify"}
    for message_id, (timestamp, original) in times.items():
        assert near(timestamp, HISTORICAL), message_id
        assert original == parse_timestamp(HISTORICAL), message_id


def test_original_timestamp_alone_still_sets_the_time(
    live_server: LiveServer, engine: Engine
) -> None:
    then = iso(datetime.now(UTC) - timedelta(days=3))
    body = {"userId": "u1", "event": "A", "messageId": "m", "originalTimestamp": then}
    response = httpx.post(f"{live_server.url}/v1/track", json=body, auth=(WRITE_KEY, ""))

    assert response.status_code == 200, response.text
    assert stored_times(engine)["m"] == (parse_timestamp(then), parse_timestamp(then))


def test_file_ingest_picks_the_same_time_on_its_bulk_and_per_line_paths(
    engine: Engine, tmp_path: Path
) -> None:
    # A track line takes the bulk (SQL) path; an identify line is validated on its own.
    lines = [imported("bulk-track"), imported("line-identify", "identify")]
    jsonl = tmp_path / "history.jsonl"
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")

    engine.ingest_file(jsonl)

    times = stored_times(engine)
    assert set(times) == {"bulk-track", "line-identify"}
    for message_id, (timestamp, original) in times.items():
        assert near(timestamp, HISTORICAL), message_id
        assert original == parse_timestamp(HISTORICAL), message_id
