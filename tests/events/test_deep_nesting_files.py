"""Files with messages nested past `MAX_DEPTH` quarantine those rows as `too_deep`; the rest
of the file is stored, and nothing crashes (JSON readers accept ~1,000 levels)."""

from __future__ import annotations

import json
from pathlib import Path

from cohortsync.engine import Engine
from cohortsync.events.validate import MAX_DEPTH

TS = "2026-05-01T10:00:00Z"


def nested(depth: int) -> str:
    """JSON text of lists nested `depth` levels (text: Python's own encoder would recurse)."""
    return "[" * depth + "1" + "]" * depth


def track_line(message_id: str, deep: str = "1") -> str:
    """A track call whose properties.deep holds `deep` (JSON text); the message and its
    properties are the first two levels."""
    return (
        f'{{"type":"track","userId":"u1","event":"E","messageId":"{message_id}",'
        f'"timestamp":"{TS}","properties":{{"deep":{deep}}}}}'
    )


def outcome(engine: Engine) -> tuple[set[str], dict[str, str]]:
    """The stored message ids, and the reason of each quarantined line (by line number)."""
    query = engine.store.query  # type: ignore[attr-defined]
    stored = {row[0] for row in query("SELECT message_id FROM events")}
    reasons = {
        row[0].rsplit(":", 1)[1]: row[1] for row in query("SELECT origin, reason FROM quarantine")
    }
    return stored, reasons


def test_jsonl_lines_nested_too_deep_are_quarantined_and_the_rest_stored(
    engine: Engine, tmp_path: Path
) -> None:
    many_shallow = json.dumps([{"n": i} for i in range(80)])  # 81 brackets, 3 levels
    lines = [
        track_line("fine"),
        track_line("at-limit", nested(MAX_DEPTH - 2)),
        track_line("over-limit", nested(MAX_DEPTH - 1)),
        track_line("past-orjson-writer", nested(300)),
        track_line("near-reader-limit", nested(1_000)),
        track_line("past-reader-limit", nested(1_030)),
        track_line("wide-not-deep", many_shallow),
        json.dumps({"type": "identify", "userId": "u2", "traits": {"deep": 1}}),
        '{"type":"identify","userId":"u3","traits":{"deep":' + nested(500) + "}}",
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    engine.ingest_file(path)
    stored, reasons = outcome(engine)
    assert {"fine", "at-limit", "wide-not-deep"} <= stored
    assert len(stored) == 4  # and the shallow identify call
    assert reasons == {
        "3": "too_deep",
        "4": "too_deep",
        "5": "too_deep",
        "6": "invalid_json",  # past what a JSON reader takes: not JSON we can read at all
        "9": "too_deep",
    }


def test_csv_cell_nested_too_deep_is_quarantined(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    deep = '{"a":' + nested(MAX_DEPTH) + "}"
    rows = ["messageId,userId,event,timestamp,properties", f"ok,u1,E,{TS},{{}}"]
    rows.append(f'deep,u1,E,{TS},"{deep.replace(chr(34), chr(34) * 2)}"')
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    engine.ingest_file(path)
    stored, reasons = outcome(engine)
    assert stored == {"ok"}
    assert reasons == {"3": "too_deep"}
