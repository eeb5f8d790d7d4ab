"""JSON Lines ingested in bulk store exactly what validating each line in Python stores.

The reference is the per-line path (`read_rows` → `validate_message` → `Engine.commit`), which
HTTP ingest also uses; the bulk path must agree with it on every line, odd ones included.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cohortsync.engine as engine_module
from cohortsync.engine import Engine
from cohortsync.events.readers import BadRow, read_rows
from cohortsync.events.validate import content_message_id, validate_message
from cohortsync.store.records import Message, Rejection
from tests.conftest import PROJECT_YAML

TS = "2026-05-01T10:00:00Z"
_JSON_COLUMNS = (15, 16, 17, 18)  # properties, traits, context, integrations


RECEIVED_US = 1_780_000_000_000_000  # "now" for both paths, so defaulted times agree


def reference_ingest(engine: Engine, path: Path) -> None:
    """What `ingest_file` did for JSON Lines before the bulk path: one line at a time."""
    received = RECEIVED_US
    source = f"file:{path.name}"
    messages: list[Message] = []
    rejections: list[Rejection] = []
    for line, row in read_rows(path):
        origin = f"{path}:{line}"
        if isinstance(row, BadRow):
            rejections.append(Rejection(row.reason, row.detail, origin, row.text, source=source))
            continue
        checked = validate_message(
            row,
            source=source,
            received_at_us=received,
            origin=origin,
            new_id=content_message_id,
            keep_received_at=True,
        )
        if isinstance(checked, Message):
            messages.append(checked)
        else:
            rejections.append(checked)
    engine.commit(messages, rejections)


def snapshot(engine: Engine) -> dict[str, Any]:
    """Everything ingest writes (quarantine times aside); JSON columns compared as values.

    Numbers keep their value either way, but DuckDB writes 1e16 as 10000000000000000.0.
    """
    query = engine.store.query  # type: ignore[attr-defined]
    events = query("SELECT * FROM events ORDER BY message_id")
    return {
        "events": [
            tuple(
                json.loads(v) if i in _JSON_COLUMNS and v is not None else v
                for i, v in enumerate(row)
            )
            for row in events
        ],
        "quarantine": query(
            "SELECT quarantine_id, source, origin, reason, detail, message_id, payload "
            "FROM quarantine ORDER BY quarantine_id"
        ),
        "identities": query("SELECT * FROM identities ORDER BY kind, value"),
        "traits": query("SELECT * FROM profile_traits ORDER BY profile_id, name"),
        "profiles": query("SELECT profile_id, merged_into FROM profiles ORDER BY profile_id"),
        "merges": query("SELECT * FROM merges ORDER BY message_id, from_profile"),
        "rejected": query("SELECT * FROM identifier_rejections ORDER BY message_id, kind"),
    }


def both_ways(tmp_path: Path, *files: list[bytes]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ingest the same files, in order, in bulk and line by line; return both stores' contents."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine_module, "now_micros", lambda: RECEIVED_US)
        return _both_ways(tmp_path, files)


def _both_ways(
    tmp_path: Path, files: tuple[list[bytes], ...]
) -> tuple[dict[str, Any], dict[str, Any]]:
    paths = []
    for index, lines in enumerate(files):
        paths.append(tmp_path / f"events-{index}.jsonl")
        paths[-1].write_bytes(b"".join(lines))
    results = []
    for name, ingest in (("bulk", Engine.ingest_file), ("reference", reference_ingest)):
        project = tmp_path / name
        project.mkdir()
        (project / "cohortsync.yml").write_text(PROJECT_YAML, encoding="utf-8")
        with Engine.open(project) as engine:
            for path in paths:
                ingest(engine, path)
            results.append(snapshot(engine))
    return results[0], results[1]


def line(message: Any) -> bytes:
    return json.dumps(message, ensure_ascii=False).encode() + b"\n"


def track(**fields: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Order Completed", "userId": "u1", "timestamp": TS, **fields}


ODD_LINES: list[bytes] = [
    line(track(messageId="plain", properties={"revenue": 19.5, "sku": "A"})),
    line({"type": "page", "messageId": "page", "anonymousId": "a1", "name": "Home"}),
    line({"type": "screen", "messageId": "screen", "userId": "u2", "name": 7, "timestamp": TS}),
    line({"type": "group", "messageId": "group", "userId": "u1", "groupId": "g1", "traits": {}}),
    line({"type": "group", "messageId": "group-no-id", "userId": "u1", "groupId": ""}),
    line({"type": "identify", "messageId": "ident", "userId": "u1", "traits": {"email": "A@x.io"}}),
    line({"type": "alias", "messageId": "alias", "previousId": "a1", "userId": "u1"}),
    line(track(messageId="ctx", context={"traits": {"phone": "(415) 555-2671"}})),
    line(track(messageId="ctx-null", context={"traits": None, "ip": "1.2.3.4"})),
    line(track(messageId="num-user", userId=1234)),
    line(track(messageId="float-user", userId=12.5)),
    line(track(messageId="bool-user", userId=True)),
    line(track(messageId="empty-user", userId="", anonymousId="a9")),
    line(track(messageId="no-ids", userId=None)),
    line(track(messageId="long-user", userId="u" * 1025)),
    line(track(messageId="long-user-ok", userId="é" * 1000)),
    line(track(messageId="", event="E")),
    line(track(messageId="m" * 101)),
    line(track(messageId=5)),
    line(track(event="no message id")),
    line(track(messageId="ws-event", event="   ")),
    line(track(messageId="wide-space-event", event="\u3000")),
    line(track(messageId="cjk-event", event="注文 完了")),
    line(track(messageId="event-num", event=5)),
    line({"type": "track", "messageId": "no-event", "userId": "u1"}),
    line(track(messageId="escaped-ids", userId='a"b\\c\u00e9', anonymousId="x/y")),
    line(track(messageId="props-list", properties=[1, 2])),
    line(track(messageId="props-null", properties=None, context=None, integrations={"All": True})),
    line(track(messageId="ctx-str", context="x")),
    line(track(messageId="ts-space", timestamp="2026-05-01 10:00:00")),
    line(track(messageId="ts-lower-z", timestamp="2026-05-01T10:00:00z")),
    line(track(messageId="ts-7-digits", timestamp="2026-05-01T10:00:00.1234567Z")),
    line(track(messageId="ts-offset", timestamp="2026-05-01T10:00:00.5+05:30")),
    line(track(messageId="ts-naive", timestamp="2026-05-01T10:00:00")),
    line(track(messageId="ts-date", timestamp="2026-05-01")),
    line(track(messageId="ts-bad-day", timestamp="2026-02-30T10:00:00Z")),
    line(track(messageId="ts-1969", timestamp="1969-12-31T23:59:59Z")),
    line(track(messageId="ts-2300", timestamp="2300-01-01T00:00:00Z")),
    line(track(messageId="ts-number", timestamp=1714557600)),
    line(track(messageId="ts-empty", timestamp="")),
    line(track(messageId="ts-missing", timestamp=None)),
    line(track(messageId="skew", sentAt="2026-05-01T10:05:00Z")),
    line(track(messageId="skew-out", timestamp="1970-01-01T00:00:01Z", sentAt=TS)),
    line(track(messageId="received", receivedAt="2026-05-02T00:00:00Z")),
    line(track(messageId="received-bad", receivedAt="yesterday")),
    line(track(messageId="original", originalTimestamp="2026-04-01T00:00:00Z", timestamp="junk")),
    line(track(messageId="original-empty", originalTimestamp="")),
    line(track(messageId="original-zero", originalTimestamp=0)),
    line(track(messageId="original-bad", originalTimestamp="junk")),
    line(track(messageId="dup", properties={"n": 1})),
    line(track(messageId="dup", properties={"n": 2})),
    line(track(messageId="late", timestamp="2026-05-01T09:00:00Z", anonymousId="a1")),
    line(track(messageId="big-number", properties={"n": 12345678901234567890123})),
    line(track(messageId="exp-number", properties={"n": 1e15, "m": 1.5e-7, "k": -0.0})),
    b'{"type":"track","messageId":"nan","userId":"u1","event":"E","properties":{"x":NaN}}\n',
    b'{"type":"track","messageId":"inf","userId":"u1","event":"E","properties":{"x":-Infinity}}\n',
    b'{"type":"track","messageId":"inf-key","userId":"u1","event":"E","v":inf}\n',
    b'{"type":"track","messageId":"overflow","userId":"u1","event":"E","properties":{"x":1e400}}\n',
    b'{"type":"track","messageId":"trailing","userId":"u1","event":"E","properties":{"x":1,}}\n',
    b'{"type":"track","messageId":"exp-text","userId":"u1","event":"E","properties":{"x":1E5}}\n',
    b'{"type" : "track" , "messageId":"spaced", "userId" : "u1", "event":"E"  }  \r\n',
    b'{"type":"track","messageId":"\\u00e9scaped","userId":"\\u0075\\/1","event":"E\\n"}\n',
    b'{"type":"track","messageId":"lone","userId":"u1","event":"\\ud800"}\n',
    b"\xef\xbb\xbf" + line(track(messageId="bom")),
    b'{"type":"track","messageId":"latin1","userId":"u1","event":"caf\xe9"}\n',
    b"\n",
    b"   \t \n",
    b"[1, 2]\n",
    b'"just a string"\n',
    b"null\n",
    b"{broken\n",
    b'{"type":"track","messageId":"deep","userId":"u1","event":"E","properties":'
    + b'{"a":' * 300
    + b"{}"
    + b"}" * 301
    + b"\n",
    b'{"type":"track","messageId":"deep-ok","userId":"u1","event":"E","properties":'
    + b'{"a":' * 200
    + b"{}"
    + b"}" * 201
    + b"\n",
    line(track(messageId="big-line", properties={"blob": "x" * 8_000})),
    line(track(messageId="too-big", properties={"blob": "x" * 40_000})),
    line(track(messageId="many-numbers", properties={"v": [1e15] * 1_000})),
    line({"type": "Track", "messageId": "type-case", "userId": "u1", "event": "E"}),
    line({"type": 1, "messageId": "type-num", "userId": "u1"}),
    line({"messageId": "no-type", "userId": "u1"}),
    line(track(messageId="last-no-newline")).rstrip(b"\n"),
]


def test_odd_lines_are_stored_as_the_per_line_path_stores_them(tmp_path: Path) -> None:
    bulk, reference = both_ways(tmp_path, ODD_LINES, ODD_LINES)

    assert len(reference["events"]) > 30
    assert len(reference["quarantine"]) > 30
    assert bulk == reference


def test_a_second_file_repeating_stored_and_its_own_messages_adds_only_new_ones(
    tmp_path: Path,
) -> None:
    first = [line(track(messageId=f"m{i}", anonymousId=f"a{i % 3}")) for i in range(6)]
    second = [
        line(track(messageId="m4", timestamp="2026-05-01T08:00:00Z", context={"traits": {"a": 1}})),
        line(track(messageId="n1", anonymousId="a7", timestamp="2026-05-01T09:00:00Z")),
        line(track(messageId="n2", anonymousId="a1", timestamp="2026-05-01T09:00:00Z")),
        line(track(messageId="n1", anonymousId="a8", timestamp="2026-05-01T07:00:00Z")),
        line(track(messageId="m1", timestamp="2026-05-01T08:00:00Z")),
        line({"type": "identify", "messageId": "n3", "anonymousId": "a7", "traits": {"b": 2}}),
        line(track(messageId="n2", anonymousId="a2")),
    ]

    bulk, reference = both_ways(tmp_path, first, second)

    assert len(reference["events"]) == 9
    assert bulk == reference


def test_a_file_of_demo_traffic_is_stored_as_the_per_line_path_stores_it(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from cohortsync.demo.shop import generate_shop

    messages = generate_shop(200, seed=5, now=datetime(2026, 6, 1, tzinfo=UTC))
    bulk, reference = both_ways(tmp_path, [line(m) for m in messages])

    assert reference["merges"] and reference["traits"] and reference["rejected"]
    assert bulk == reference


_IDS = st.sampled_from(["u1", "u2", "a1", "a2", "", None, 7, "é"])
_TIMES = st.sampled_from(
    [TS, "2026-05-01T09:59:59.999Z", "2026-05-01T10:00:00+01:00", "2026-05-01", "", None, "x"]
)
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)


@st.composite
def _message(draw: st.DrawFn) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": draw(st.sampled_from(["track", "page", "screen", "group", "identify", "alias"])),
        "messageId": draw(st.sampled_from(["m1", "m2", "m3", "m4", "m5", None])),
    }
    for field in ("userId", "anonymousId", "previousId", "groupId"):
        if draw(st.booleans()):
            message[field] = draw(_IDS)
    for field in ("timestamp", "sentAt", "originalTimestamp"):
        if draw(st.booleans()):
            message[field] = draw(_TIMES)
    if draw(st.booleans()):
        message["event"] = draw(st.sampled_from(["Order Completed", " ", "x", 3]))
    if draw(st.booleans()):
        message["properties"] = draw(st.dictionaries(st.text(max_size=4), _VALUES, max_size=3))
    if draw(st.booleans()):
        traits = {"email": draw(st.sampled_from(["a@x.io", "bad@", "B@X.IO"])), "plan": "p"}
        message["context"] = {"traits": traits} if draw(st.booleans()) else {"ip": "1.1.1.1"}
    return message


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(_message(), min_size=1, max_size=12))
def test_random_messages_are_stored_as_the_per_line_path_stores_them(
    tmp_path_factory: pytest.TempPathFactory, messages: list[dict[str, Any]]
) -> None:
    tmp_path = tmp_path_factory.mktemp("random")
    lines = [json.dumps(m).encode() + b"\n" for m in messages]
    bulk, reference = both_ways(tmp_path, lines[: len(lines) // 2], lines)

    assert bulk == reference
