"""The Segment-compatible HTTP ingest API, over real HTTP against a real uvicorn server.

Each test states a promise a sender relies on: what is accepted and stored, what is refused and
why, and that nothing is lost or stored twice. Storage is checked in the engine's own tables.
"""

from __future__ import annotations

import base64
import gc
import gzip
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from cohortsync.engine import Engine
from tests.conftest import OTHER_KEY, WRITE_KEY, LiveServer

KB = 1024
HOUR_US = 3_600 * 1_000_000
MINUTE_US = 60 * 1_000_000
SECOND_US = 1_000_000

_ID_COLUMNS = (
    "message_id", "type", "source", "event", "event_key", "name", "user_id", "anonymous_id",
    "previous_id", "group_id", "profile_id",
)  # fmt: skip
_TIME_COLUMNS = ("timestamp", "original_timestamp", "sent_at", "received_at")
_JSON_COLUMNS = ("properties", "traits", "context", "integrations")


@pytest.fixture
def engine(project_on_both: Path) -> Iterator[Engine]:
    """The project on each store engine: what a sender is promised holds on both."""
    with Engine.open(project_on_both) as opened:
        yield opened


# --- helpers -------------------------------------------------------------------------------------


def _on_postgres(engine: Engine) -> bool:
    return engine.store.dialect == "postgres"


def stored_event(engine: Engine, message_id: str) -> dict[str, Any]:
    """The stored row of one event; times as microseconds since the epoch, JSON decoded."""
    postgres = _on_postgres(engine)
    micros = '(extract(epoch FROM "{}") * 1000000)::bigint' if postgres else 'epoch_us("{}")'
    select = ", ".join(
        [f'"{c}"' for c in _ID_COLUMNS]
        + [micros.format(c) for c in _TIME_COLUMNS]
        + [f'"{c}"' for c in _JSON_COLUMNS]
    )
    mark = "%s" if postgres else "?"
    rows = engine.store.query(  # type: ignore[attr-defined]
        f"SELECT {select} FROM events WHERE message_id = {mark}", [message_id]
    )
    assert len(rows) == 1, f"expected exactly one stored event {message_id!r}, found {len(rows)}"
    row = dict(zip((*_ID_COLUMNS, *_TIME_COLUMNS, *_JSON_COLUMNS), rows[0], strict=True))
    for column in _JSON_COLUMNS:
        if isinstance(row[column], str):  # DuckDB hands JSON back as text, Postgres decoded
            row[column] = json.loads(row[column])
    return row


def count_stored(engine: Engine, message_id: str) -> int:
    mark = "%s" if _on_postgres(engine) else "?"
    rows = engine.store.query(  # type: ignore[attr-defined]
        f"SELECT count(*) FROM events WHERE message_id = {mark}", [message_id]
    )
    return int(rows[0][0])


def total_events(engine: Engine) -> int:
    return engine.stats()["events"]["total"]


def quarantine(engine: Engine) -> list[dict[str, Any]]:
    """Every quarantined row, oldest origin first."""
    columns = ("source", "origin", "reason", "detail", "message_id", "payload")
    rows = engine.store.query(  # type: ignore[attr-defined]
        f"SELECT {', '.join(columns)} FROM quarantine ORDER BY origin, reason"
    )
    return [dict(zip(columns, row, strict=True)) for row in rows]


def assert_nothing_stored(engine: Engine) -> None:
    stats = engine.stats()
    assert stats["events"]["total"] == 0, stats
    assert stats["quarantined"]["total"] == 0, stats


def assert_ok(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"success": True}


def assert_refused(response: httpx.Response, status: int, code: str | None = None) -> None:
    """Segment's error shape: {"success": false, "code": ..., "message": ...}."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    assert isinstance(body["message"], str) and body["message"]
    if code is not None:
        assert body["code"] == code, body


def now_us() -> int:
    """The wall clock in whole milliseconds, as microseconds (ISO strings carry milliseconds)."""
    return time.time_ns() // 1_000_000 * 1_000


def iso(micros: int) -> str:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def track(message_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": "u1",
        "event": "Order Completed",
        "messageId": message_id,
        **extra,
    }


def padded_body(size: int, **message: Any) -> bytes:
    """A compact JSON message of exactly `size` bytes, padded in properties.pad."""
    base = {**message, "properties": {"pad": ""}}
    empty = len(json.dumps(base, separators=(",", ":")).encode())
    base["properties"]["pad"] = "x" * (size - empty)
    body = json.dumps(base, separators=(",", ":")).encode()
    assert len(body) == size
    return body


JSON_HEADERS = {"Content-Type": "application/json"}


# --- each message type on its own endpoint --------------------------------------------------------

SINGLE_CALLS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "track": (
        {"userId": "u-t", "event": "Order Completed", "properties": {"revenue": 42.5}},
        {"user_id": "u-t", "event": "Order Completed", "event_key": "order_completed",
         "properties": {"revenue": 42.5}},
    ),
    "identify": (
        {"userId": "u-i", "traits": {"email": "ada@example.com", "plan": "pro"}},
        {"user_id": "u-i", "event": None, "traits": {"email": "ada@example.com", "plan": "pro"}},
    ),
    "alias": (
        {"userId": "u-a", "previousId": "anon-a"},
        {"user_id": "u-a", "previous_id": "anon-a", "event": None},
    ),
    "page": (
        {"anonymousId": "anon-p", "name": "Pricing", "properties": {"path": "/pricing"}},
        {"anonymous_id": "anon-p", "user_id": None, "name": "Pricing",
         "properties": {"path": "/pricing"}},
    ),
    "screen": (
        {"userId": "u-s", "name": "Home", "properties": {"variant": "b"}},
        {"user_id": "u-s", "name": "Home", "properties": {"variant": "b"}},
    ),
    "group": (
        {"userId": "u-g", "groupId": "acme", "traits": {"employees": 120}},
        {"user_id": "u-g", "group_id": "acme", "traits": {"employees": 120}},
    ),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(SINGLE_CALLS))
def test_each_message_type_is_stored_from_its_own_endpoint(
    kind: str, client: httpx.Client, engine: Engine
) -> None:
    body, expected = SINGLE_CALLS[kind]
    response = client.post(f"/v1/{kind}", json={**body, "messageId": f"single-{kind}"})
    assert_ok(response)
    row = stored_event(engine, f"single-{kind}")
    assert row["type"] == kind
    assert row["source"] == "web"
    assert row["profile_id"]
    for column, value in expected.items():
        assert row[column] == value, column
    assert engine.stats()["events"]["by_type"] == {kind: 1}


def test_endpoint_decides_the_type_of_a_single_call(client: httpx.Client, engine: Engine) -> None:
    response = client.post(
        "/v1/track",
        json={"type": "identify", "userId": "u1", "event": "Signed Up", "messageId": "m1"},
    )
    assert_ok(response)
    assert stored_event(engine, "m1")["type"] == "track"


def test_a_message_with_only_an_anonymous_id_is_stored(
    client: httpx.Client, engine: Engine
) -> None:
    response = client.post(
        "/v1/track", json={"anonymousId": "anon-1", "event": "Viewed", "messageId": "m1"}
    )
    assert_ok(response)
    row = stored_event(engine, "m1")
    assert (row["user_id"], row["anonymous_id"]) == (None, "anon-1")


def test_a_message_without_message_id_is_stored_under_a_fresh_id(
    client: httpx.Client, engine: Engine
) -> None:
    for _ in range(2):
        assert_ok(client.post("/v1/track", json={"userId": "u1", "event": "Viewed"}))
    ids = engine.store.query("SELECT message_id FROM events")  # type: ignore[attr-defined]
    assert len({row[0] for row in ids}) == 2


# --- batches --------------------------------------------------------------------------------------


def test_batch_with_every_message_type_stores_each_with_its_type(
    client: httpx.Client, engine: Engine
) -> None:
    batch = [
        {**body, "type": kind, "messageId": f"batch-{kind}"}
        for kind, (body, _) in SINGLE_CALLS.items()
    ]
    assert_ok(client.post("/v1/batch", json={"batch": batch}))
    for kind, (_, expected) in SINGLE_CALLS.items():
        row = stored_event(engine, f"batch-{kind}")
        assert row["type"] == kind
        for column, value in expected.items():
            assert row[column] == value, (kind, column)
    assert engine.stats()["events"]["by_type"] == {kind: 1 for kind in SINGLE_CALLS}


def test_batch_context_and_integrations_are_merged_into_each_message(
    client: httpx.Client, engine: Engine
) -> None:
    shared_context = {"ip": "10.0.0.1", "library": {"name": "analytics-go", "version": "3.0"}}
    shared_integrations = {"All": False, "Mixpanel": True}
    response = client.post(
        "/v1/batch",
        json={
            "batch": [
                track("plain"),
                track(
                    "own",
                    context={"ip": "192.0.2.7", "locale": "fr-FR"},
                    integrations={"Mixpanel": False},
                ),
            ],
            "context": shared_context,
            "integrations": shared_integrations,
        },
    )
    assert_ok(response)
    plain = stored_event(engine, "plain")
    assert plain["context"] == shared_context
    assert plain["integrations"] == shared_integrations
    own = stored_event(engine, "own")
    assert own["context"] == {**shared_context, "ip": "192.0.2.7", "locale": "fr-FR"}
    assert own["integrations"] == {"All": False, "Mixpanel": False}


def test_batch_with_bad_message_stores_the_good_ones(client: httpx.Client, engine: Engine) -> None:
    batch = [
        track("good-0"),
        {"type": "track", "event": "Order Completed", "messageId": "bad-1"},
        track("good-2"),
        {"type": "track", "userId": "u1", "messageId": "bad-3"},
        {"userId": "u1", "event": "No Type", "messageId": "bad-4"},
    ]
    response = client.post("/v1/batch", json={"batch": batch})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert [(q["index"], q["code"]) for q in body["quarantined"]] == [
        (1, "no_user_anon_id"),
        (3, "missing_event"),
        (4, "invalid_type"),
    ]
    assert all(q["message"] for q in body["quarantined"])
    assert count_stored(engine, "good-0") == count_stored(engine, "good-2") == 1
    assert total_events(engine) == 2
    rows = {row["message_id"]: row for row in quarantine(engine)}
    assert set(rows) == {"bad-1", "bad-3", "bad-4"}
    assert rows["bad-1"]["reason"] == "no_user_anon_id"
    assert rows["bad-3"]["reason"] == "missing_event"
    assert rows["bad-4"]["reason"] == "invalid_type"
    assert all(row["source"] == "web" for row in rows.values())
    assert json.loads(rows["bad-1"]["payload"]) == batch[1]


def test_batch_whose_messages_are_all_bad_answers_200_and_quarantines_them(
    client: httpx.Client, engine: Engine
) -> None:
    response = client.post("/v1/batch", json={"batch": [1, "two", {"type": "track"}]})
    assert response.status_code == 200, response.text
    assert [q["index"] for q in response.json()["quarantined"]] == [0, 1, 2]
    assert total_events(engine) == 0
    assert engine.stats()["quarantined"]["total"] == 3


def test_batch_of_2500_messages_is_accepted_whole(client: httpx.Client, engine: Engine) -> None:
    batch = [track(f"m-{i}") for i in range(2_500)]
    assert_ok(client.post("/v1/batch", json={"batch": batch}))
    assert total_events(engine) == 2_500


# --- authentication -------------------------------------------------------------------------------


def test_basic_auth_with_write_key_as_user_and_empty_password_is_accepted(
    anonymous_client: httpx.Client, engine: Engine
) -> None:
    token = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    response = anonymous_client.post(
        "/v1/track",
        json={"userId": "u1", "event": "Viewed", "messageId": "m1"},
        headers={"Authorization": f"Basic {token}"},
    )
    assert_ok(response)
    assert count_stored(engine, "m1") == 1


@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
def test_write_key_in_the_body_is_accepted(
    path: str, anonymous_client: httpx.Client, engine: Engine
) -> None:
    message = {"userId": "u1", "event": "Viewed", "messageId": "m1"}
    body = {**message, "writeKey": WRITE_KEY}
    if path == "/v1/batch":
        body = {"batch": [{**message, "type": "track"}], "writeKey": WRITE_KEY}
    assert_ok(anonymous_client.post(path, json=body))
    assert count_stored(engine, "m1") == 1


@pytest.mark.parametrize("path", ["/v1/track", "/v1/identify", "/v1/batch"])
def test_missing_write_key_is_refused_with_401(
    path: str, anonymous_client: httpx.Client, engine: Engine
) -> None:
    message = {"type": "track", "userId": "u1", "event": "Viewed", "traits": {}}
    body = {"batch": [message]} if path == "/v1/batch" else message
    response = anonymous_client.post(path, json=body)
    assert_refused(response, 401, "invalid_write_key")
    assert_nothing_stored(engine)


@pytest.mark.parametrize(
    ("headers", "body_key"),
    [
        ({"Authorization": "Basic " + base64.b64encode(b"wk_wrong:").decode()}, None),
        ({}, "wk_wrong"),
        ({"Authorization": "Bearer " + WRITE_KEY}, None),
        ({"Authorization": "Basic !!not-base64!!"}, None),
        ({"Authorization": "Basic " + base64.b64encode(f":{WRITE_KEY}".encode()).decode()}, None),
    ],
    ids=[
        "basic-wrong-key",
        "body-wrong-key",
        "bearer-not-basic",
        "basic-garbage",
        "key-as-password",
    ],
)
def test_wrong_write_key_is_refused_with_401(
    headers: dict[str, str], body_key: str | None, anonymous_client: httpx.Client, engine: Engine
) -> None:
    body: dict[str, Any] = {"userId": "u1", "event": "Viewed"}
    if body_key:
        body["writeKey"] = body_key
    assert_refused(
        anonymous_client.post("/v1/track", json=body, headers=headers), 401, "invalid_write_key"
    )
    assert_nothing_stored(engine)


def test_unauthenticated_bad_message_leaves_no_quarantine_row(
    anonymous_client: httpx.Client, engine: Engine
) -> None:
    response = anonymous_client.post("/v1/track", json={"event": "no ids", "writeKey": "wk_wrong"})
    assert_refused(response, 401, "invalid_write_key")
    assert_nothing_stored(engine)


def test_events_record_the_source_of_their_write_key(
    anonymous_client: httpx.Client, engine: Engine
) -> None:
    web = anonymous_client.post(
        "/v1/track", json={"userId": "u1", "event": "A", "messageId": "web-1"}, auth=(WRITE_KEY, "")
    )
    backend = anonymous_client.post(
        "/v1/track",
        json={"userId": "u1", "event": "A", "messageId": "backend-1"},
        auth=(OTHER_KEY, ""),
    )
    backend_body = anonymous_client.post(
        "/v1/batch", json={"batch": [track("backend-2")], "writeKey": OTHER_KEY}
    )
    for response in (web, backend, backend_body):
        assert_ok(response)
    assert stored_event(engine, "web-1")["source"] == "web"
    assert stored_event(engine, "backend-1")["source"] == "backend"
    assert stored_event(engine, "backend-2")["source"] == "backend"


def test_quarantined_message_records_its_source(
    anonymous_client: httpx.Client, engine: Engine
) -> None:
    response = anonymous_client.post(
        "/v1/track", json={"event": "no ids", "messageId": "bad"}, auth=(OTHER_KEY, "")
    )
    assert_refused(response, 400, "no_user_anon_id")
    assert [row["source"] for row in quarantine(engine)] == ["backend"]


# --- size limits ----------------------------------------------------------------------------------


def test_single_message_of_exactly_32_kb_is_accepted(client: httpx.Client, engine: Engine) -> None:
    body = padded_body(32 * KB, userId="u1", event="Big", messageId="m1")
    assert_ok(client.post("/v1/track", content=body, headers=JSON_HEADERS))
    assert count_stored(engine, "m1") == 1


def test_single_message_over_32_kb_is_refused_as_message_too_large(
    client: httpx.Client, engine: Engine
) -> None:
    body = padded_body(32 * KB + 1, userId="u1", event="Big", messageId="m1")
    assert_refused(
        client.post("/v1/track", content=body, headers=JSON_HEADERS), 400, "message_too_large"
    )
    assert_nothing_stored(engine)


def test_batch_over_500_kb_is_refused_as_batch_too_large(
    client: httpx.Client, engine: Engine
) -> None:
    batch = [track(f"m-{i}", properties={"pad": "x" * (26 * KB)}) for i in range(20)]
    assert_refused(client.post("/v1/batch", json={"batch": batch}), 400, "batch_too_large")
    assert_nothing_stored(engine)


def test_batch_over_500_kb_sent_chunked_without_length_is_refused(
    client: httpx.Client, engine: Engine
) -> None:
    batch = [track(f"m-{i}", properties={"pad": "x" * (26 * KB)}) for i in range(20)]
    data = json.dumps({"batch": batch}).encode()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(data), 64 * KB):
            yield data[start : start + 64 * KB]

    response = client.post("/v1/batch", content=chunks(), headers=JSON_HEADERS)
    assert "content-length" not in response.request.headers
    assert_refused(response, 400, "batch_too_large")
    assert_nothing_stored(engine)


def test_batch_item_over_32_kb_is_quarantined_as_message_too_large(
    client: httpx.Client, engine: Engine
) -> None:
    batch = [
        track("small-0"),
        track("huge-1", properties={"pad": "x" * (40 * KB)}),
        track("small-2"),
    ]
    response = client.post("/v1/batch", json={"batch": batch})
    assert response.status_code == 200, response.text
    assert [(q["index"], q["code"]) for q in response.json()["quarantined"]] == [
        (1, "message_too_large")
    ]
    assert count_stored(engine, "small-0") == count_stored(engine, "small-2") == 1
    assert count_stored(engine, "huge-1") == 0
    assert [(row["message_id"], row["reason"]) for row in quarantine(engine)] == [
        ("huge-1", "message_too_large")
    ]


def test_batch_of_more_than_2500_messages_is_refused(client: httpx.Client, engine: Engine) -> None:
    batch = [track(f"m-{i}") for i in range(2_501)]
    assert_refused(client.post("/v1/batch", json={"batch": batch}), 400)
    assert_nothing_stored(engine)


# --- malformed bodies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("/v1/track", b'{"userId": "u1", "event": '),
        ("/v1/track", b"not json"),
        ("/v1/track", b'{"a": "\xff"}'),
        ("/v1/batch", b'{"batch": [{"type": "track",}]}'),
        ("/v1/batch", b""),
    ],
    ids=["truncated", "text", "invalid-utf8", "trailing-comma", "empty"],
)
def test_malformed_json_is_refused_as_invalid_json(
    path: str, content: bytes, client: httpx.Client, engine: Engine
) -> None:
    response = client.post(path, content=content, headers=JSON_HEADERS)
    assert_refused(response, 400, "invalid_json")
    assert_nothing_stored(engine)


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("/v1/track", b'[{"userId": "u1", "event": "A"}]'),
        ("/v1/track", b'"track"'),
        ("/v1/track", b"null"),
        ("/v1/batch", b'[{"type": "track", "userId": "u1", "event": "A"}]'),
        ("/v1/batch", b"42"),
    ],
)
def test_json_that_is_not_an_object_is_refused(
    path: str, content: bytes, client: httpx.Client, engine: Engine
) -> None:
    assert_refused(client.post(path, content=content, headers=JSON_HEADERS), 400)
    assert total_events(engine) == 0


@pytest.mark.parametrize(
    "body",
    [{"batch": []}, {}, {"batch": {"type": "track"}}, {"batch": None}, {"messages": [track("m1")]}],
    ids=["empty-list", "no-batch", "object", "null", "wrong-key"],
)
def test_empty_or_missing_batch_is_refused(
    body: dict[str, Any], client: httpx.Client, engine: Engine
) -> None:
    assert_refused(client.post("/v1/batch", json=body), 400)
    assert_nothing_stored(engine)


# --- required ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["track", "identify", "page", "screen", "group"])
def test_message_without_user_or_anonymous_id_is_refused_and_quarantined(
    kind: str, client: httpx.Client, engine: Engine
) -> None:
    body = {
        "event": "Viewed",
        "groupId": "acme",
        "messageId": "no-ids",
        "userId": "",
        "anonymousId": None,
    }
    assert_refused(client.post(f"/v1/{kind}", json=body), 400, "no_user_anon_id")
    assert total_events(engine) == 0
    [row] = quarantine(engine)
    assert (row["reason"], row["message_id"], row["source"]) == ("no_user_anon_id", "no-ids", "web")
    assert kind in row["origin"]
    assert json.loads(row["payload"]) == body


@pytest.mark.parametrize("event", [None, "   ", 42])
def test_track_without_event_is_refused_as_missing_event(
    event: Any, client: httpx.Client, engine: Engine
) -> None:
    body: dict[str, Any] = {"userId": "u1", "messageId": "m1"}
    if event is not None:
        body["event"] = event
    assert_refused(client.post("/v1/track", json=body), 400, "missing_event")
    assert total_events(engine) == 0
    assert [row["reason"] for row in quarantine(engine)] == ["missing_event"]


def test_group_without_group_id_is_refused(client: httpx.Client, engine: Engine) -> None:
    response = client.post("/v1/group", json={"userId": "u1", "traits": {"name": "Acme"}})
    assert_refused(response, 400, "missing_group_id")
    assert total_events(engine) == 0
    assert engine.stats()["quarantined"]["total"] == 1


def test_alias_without_previous_id_is_refused(client: httpx.Client, engine: Engine) -> None:
    response = client.post("/v1/alias", json={"userId": "u1"})
    assert_refused(response, 400, "missing_previous_id")
    assert total_events(engine) == 0
    assert engine.stats()["quarantined"]["total"] == 1


# --- duplicates -----------------------------------------------------------------------------------


def test_same_message_id_sent_twice_is_stored_once(client: httpx.Client, engine: Engine) -> None:
    body = {"userId": "u1", "event": "Order Completed", "messageId": "dup-1"}
    assert_ok(client.post("/v1/track", json=body))
    assert_ok(client.post("/v1/track", json=body))
    assert count_stored(engine, "dup-1") == 1
    assert total_events(engine) == 1


def test_same_message_id_twice_in_one_batch_is_stored_once(
    client: httpx.Client, engine: Engine
) -> None:
    batch = [track("dup-1"), track("other"), track("dup-1")]
    assert_ok(client.post("/v1/batch", json={"batch": batch}))
    assert count_stored(engine, "dup-1") == 1
    assert total_events(engine) == 2


def test_message_id_resent_after_other_events_is_still_stored_once(
    client: httpx.Client, engine: Engine
) -> None:
    assert_ok(client.post("/v1/track", json={"userId": "u1", "event": "A", "messageId": "dup-1"}))
    for round_ in range(3):
        batch = [track(f"r{round_}-{i}") for i in range(100)]
        assert_ok(client.post("/v1/batch", json={"batch": batch}))
    resend = [track("fresh-1"), track("dup-1"), track("fresh-2")]
    assert_ok(client.post("/v1/batch", json={"batch": resend}))
    assert count_stored(engine, "dup-1") == 1
    assert total_events(engine) == 1 + 300 + 2


def test_concurrent_retries_of_one_message_are_stored_once(
    client: httpx.Client, engine: Engine
) -> None:
    body = {"userId": "u1", "event": "Order Completed", "messageId": "retried"}
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda _: client.post("/v1/track", json=body), range(32)))
    for response in responses:
        assert_ok(response)
    assert count_stored(engine, "retried") == 1
    assert total_events(engine) == 1


def test_concurrent_batches_are_all_stored(client: httpx.Client, engine: Engine) -> None:
    def send(sender: int) -> httpx.Response:
        batch = [track(f"s{sender}-{i}", userId=f"user-{sender}") for i in range(50)]
        return client.post("/v1/batch", json={"batch": batch})

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(send, range(32)))
    for response in responses:
        assert_ok(response)
    assert total_events(engine) == 32 * 50


# --- timestamps and clock skew --------------------------------------------------------------------


def test_fast_client_clock_is_corrected_by_batch_sent_at(
    client: httpx.Client, engine: Engine
) -> None:
    skew, age = HOUR_US, 5 * MINUTE_US
    before = now_us()
    client_now = before + skew
    sent_timestamp = client_now - age
    body = {"batch": [track("skewed", timestamp=iso(sent_timestamp))], "sentAt": iso(client_now)}
    assert_ok(client.post("/v1/batch", json=body))
    after = now_us() + 1_000
    row = stored_event(engine, "skewed")
    assert before <= row["received_at"] <= after
    assert row["original_timestamp"] == sent_timestamp
    assert row["sent_at"] == client_now
    assert row["timestamp"] == row["received_at"] - (client_now - sent_timestamp)
    assert abs(row["timestamp"] - (before - age)) < 2 * SECOND_US


def test_slow_client_clock_on_a_single_call_is_corrected_by_its_sent_at(
    client: httpx.Client, engine: Engine
) -> None:
    skew, age = -HOUR_US, 30 * SECOND_US
    before = now_us()
    client_now = before + skew
    sent_timestamp = client_now - age
    body = {
        "userId": "u1",
        "event": "A",
        "messageId": "skewed",
        "timestamp": iso(sent_timestamp),
        "sentAt": iso(client_now),
    }
    assert_ok(client.post("/v1/track", json=body))
    row = stored_event(engine, "skewed")
    assert row["original_timestamp"] == sent_timestamp
    assert row["timestamp"] == row["received_at"] - age
    assert abs(row["timestamp"] - (before - age)) < 2 * SECOND_US


def test_timestamp_without_sent_at_is_kept_as_sent(client: httpx.Client, engine: Engine) -> None:
    body = {"batch": [track("m1", timestamp="2025-03-01T12:00:00.123Z")]}
    assert_ok(client.post("/v1/batch", json=body))
    row = stored_event(engine, "m1")
    expected = (
        int(
            (
                datetime(2025, 3, 1, 12, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)
            ).total_seconds()
        )
        * SECOND_US
        + 123_000
    )
    assert row["timestamp"] == row["original_timestamp"] == expected
    assert row["sent_at"] is None


def test_timestamp_with_an_offset_is_stored_as_the_same_instant(
    client: httpx.Client, engine: Engine
) -> None:
    batch = [
        track("utc", timestamp="2025-03-01T12:00:00Z"),
        track("paris", timestamp="2025-03-01T13:00:00+01:00"),
        track("naive", timestamp="2025-03-01T12:00:00"),
    ]
    assert_ok(client.post("/v1/batch", json={"batch": batch}))
    times = {stored_event(engine, m)["timestamp"] for m in ("utc", "paris", "naive")}
    assert len(times) == 1


def test_message_without_timestamp_takes_the_receive_time(
    client: httpx.Client, engine: Engine
) -> None:
    before = now_us()
    assert_ok(client.post("/v1/track", json={"userId": "u1", "event": "A", "messageId": "m1"}))
    after = now_us() + 1_000
    row = stored_event(engine, "m1")
    assert before <= row["received_at"] <= after
    assert row["timestamp"] == row["original_timestamp"] == row["received_at"]


def test_client_supplied_received_at_is_replaced_by_the_server_time(
    client: httpx.Client, engine: Engine
) -> None:
    """receivedAt is the server's receipt time (Segment sets it); a client cannot backdate it."""
    before = now_us()
    body = {"batch": [track("m1", receivedAt="2001-01-01T00:00:00Z")]}
    assert_ok(client.post("/v1/batch", json=body))
    after = now_us() + 1_000
    row = stored_event(engine, "m1")
    assert before <= row["received_at"] <= after
    assert before <= row["timestamp"] <= after


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timestamp", "yesterday"),
        ("timestamp", 1700000000),
        ("timestamp", "0001-01-01T00:00:00Z"),
        ("sentAt", "2025-13-45T99:00:00Z"),
        ("originalTimestamp", "last tuesday"),
    ],
)
def test_unparseable_timestamp_is_refused_as_invalid_timestamp(
    field: str, value: Any, client: httpx.Client, engine: Engine
) -> None:
    body = {"userId": "u1", "event": "A", "messageId": "m1", field: value}
    assert_refused(client.post("/v1/track", json=body), 400, "invalid_timestamp")
    assert total_events(engine) == 0
    assert [row["reason"] for row in quarantine(engine)] == ["invalid_timestamp"]


def test_batch_item_with_unparseable_timestamp_is_quarantined(
    client: httpx.Client, engine: Engine
) -> None:
    batch = [track("good"), track("bad", timestamp="last tuesday")]
    response = client.post("/v1/batch", json={"batch": batch})
    assert response.status_code == 200, response.text
    assert [(q["index"], q["code"]) for q in response.json()["quarantined"]] == [
        (1, "invalid_timestamp")
    ]
    assert count_stored(engine, "good") == 1
    assert [(r["message_id"], r["reason"]) for r in quarantine(engine)] == [
        ("bad", "invalid_timestamp")
    ]


def test_batch_with_unparseable_sent_at_is_refused(client: httpx.Client, engine: Engine) -> None:
    response = client.post("/v1/batch", json={"batch": [track("m1")], "sentAt": "soon"})
    assert_refused(response, 400, "invalid_timestamp")
    assert_nothing_stored(engine)


# --- gzip -----------------------------------------------------------------------------------------

GZIP_HEADERS = {**JSON_HEADERS, "Content-Encoding": "gzip"}


def test_gzip_batch_is_accepted(client: httpx.Client, engine: Engine) -> None:
    batch = [track(f"gz-{i}", properties={"note": "repeated text " * 20}) for i in range(200)]
    data = gzip.compress(json.dumps({"batch": batch}).encode())
    assert_ok(client.post("/v1/batch", content=data, headers=GZIP_HEADERS))
    assert total_events(engine) == 200
    assert stored_event(engine, "gz-7")["properties"] == {"note": "repeated text " * 20}


def test_gzip_single_call_is_accepted(client: httpx.Client, engine: Engine) -> None:
    data = gzip.compress(
        json.dumps({"userId": "u1", "traits": {"plan": "pro"}, "messageId": "m1"}).encode()
    )
    assert_ok(client.post("/v1/identify", content=data, headers=GZIP_HEADERS))
    assert stored_event(engine, "m1")["type"] == "identify"


def test_truncated_gzip_is_refused(client: httpx.Client, engine: Engine) -> None:
    data = gzip.compress(json.dumps({"batch": [track(f"m-{i}") for i in range(100)]}).encode())
    assert_refused(
        client.post("/v1/batch", content=data[: len(data) // 2], headers=GZIP_HEADERS), 400
    )
    assert_nothing_stored(engine)


def test_body_declared_gzip_that_is_not_gzip_is_refused(
    client: httpx.Client, engine: Engine
) -> None:
    body = json.dumps({"batch": [track("m1")]}).encode()
    assert_refused(client.post("/v1/batch", content=body, headers=GZIP_HEADERS), 400)
    assert_nothing_stored(engine)


def test_gzip_bomb_is_refused_as_batch_too_large_without_storing_anything(
    client: httpx.Client, engine: Engine
) -> None:
    bomb = json.dumps({"batch": [track("bomb", properties={"pad": "0" * (10 * KB * KB)})]}).encode()
    data = gzip.compress(bomb)
    assert len(data) < 100 * KB
    assert_refused(
        client.post("/v1/batch", content=data, headers=GZIP_HEADERS), 400, "batch_too_large"
    )
    assert_nothing_stored(engine)


def test_gzip_bomb_on_a_single_call_is_refused_as_message_too_large(
    client: httpx.Client, engine: Engine
) -> None:
    bomb = json.dumps({"userId": "u1", "event": "A", "properties": {"pad": "0" * (10 * KB * KB)}})
    data = gzip.compress(bomb.encode())
    assert_refused(
        client.post("/v1/track", content=data, headers=GZIP_HEADERS), 400, "message_too_large"
    )
    assert_nothing_stored(engine)


@pytest.mark.parametrize("encoding", ["br", "deflate"])
def test_unknown_content_encoding_is_refused_with_415(
    encoding: str, client: httpx.Client, engine: Engine
) -> None:
    response = client.post(
        "/v1/batch",
        content=json.dumps({"batch": [track("m1")]}).encode(),
        headers={**JSON_HEADERS, "Content-Encoding": encoding},
    )
    assert_refused(response, 415)
    assert_nothing_stored(engine)


# --- hostile nesting ------------------------------------------------------------------------------


@pytest.fixture
def no_gc_during_report() -> Iterator[None]:
    """Hold the cyclic GC while a test runs and its failure is reported.

    The server drops the deeply nested objects it parsed; on CPython 3.11 their deallocation,
    if the collector runs it while pytest compiles a failure report, raises a spurious
    `SystemError: AST constructor recursion depth mismatch` that aborts the whole session.
    """
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def _nested_json(depth: int) -> str:
    """JSON text of objects nested `depth` deep, kept as text so failure reports stay readable."""
    return '{"a":' * depth + "{}" + "}" * depth


@pytest.mark.usefixtures("no_gc_during_report")
def test_deeply_nested_single_message_is_refused_with_400_not_5xx(
    client: httpx.Client, engine: Engine
) -> None:
    """A client error must be a 4xx: a 5xx makes every SDK retry the poison message."""
    body = '{"userId":"u1","event":"A","messageId":"deep","properties":' + _nested_json(300) + "}"
    response = client.post("/v1/track", content=body.encode(), headers=JSON_HEADERS)
    assert_refused(response, 400)
    assert total_events(engine) == 0
    assert engine.stats()["quarantined"]["total"] == 1


@pytest.mark.usefixtures("no_gc_during_report")
@pytest.mark.parametrize("pad", [0, 20 * KB], ids=["small-batch", "batch-over-32kb"])
def test_batch_with_deeply_nested_message_stores_the_good_ones(
    pad: int, client: httpx.Client, engine: Engine
) -> None:
    good = json.dumps(track("good", properties={"pad": "x" * pad}))
    deep = json.dumps(track("deep", properties={})).replace("{}", _nested_json(300))
    body = '{"batch":[' + good + "," + deep + "]}"
    response = client.post("/v1/batch", content=body.encode(), headers=JSON_HEADERS)
    assert response.status_code == 200, response.text
    assert [q["index"] for q in response.json()["quarantined"]] == [1]
    assert count_stored(engine, "good") == 1
    assert count_stored(engine, "deep") == 0


# --- durability -----------------------------------------------------------------------------------


def test_store_failure_answers_503_never_200(
    client: httpx.Client, live_server: LiveServer, engine: Engine
) -> None:
    assert_ok(client.post("/v1/track", json={"userId": "u1", "event": "A", "messageId": "before"}))
    live_server.engine.store.close()
    requests = [
        ("/v1/track", {"userId": "u1", "event": "A", "messageId": "after-1"}),
        ("/v1/identify", {"userId": "u1", "traits": {"email": "ada@example.com"}}),
        ("/v1/batch", {"batch": [track("after-2"), track("after-3")]}),
        ("/v1/batch", {"batch": [track("after-4"), {"type": "track", "userId": "u1"}]}),
        ("/v1/track", {"userId": "u1", "messageId": "invalid-after"}),
    ]
    for path, body in requests:
        response = client.post(path, json=body)
        assert_refused(response, 503, "store_unavailable")


# --- response shape -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/page", "/v1/batch"])
def test_success_response_is_json_success_true(path: str, client: httpx.Client) -> None:
    message = {"type": "page", "userId": "u1", "name": "Home"}
    body = {"batch": [message]} if path == "/v1/batch" else message
    response = client.post(path, json=body)
    assert_ok(response)
    assert response.content.strip() in (b'{"success":true}', b'{"success": true}')
