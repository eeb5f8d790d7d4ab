"""Messages nested past the documented depth are quarantined as `too_deep`, never a 500.

JSON parsers accept ~1,000 levels (orjson reads up to 1,024); the ingest API accepts at most
`MAX_DEPTH` (64), the message object itself being the first level. Over HTTP, against a real
uvicorn server, on the DuckDB store.
"""

from __future__ import annotations

import json

import httpx
import pytest

from cohortsync.engine import Engine
from cohortsync.events.validate import MAX_DEPTH

# orjson reads at most 1,024 levels: a batch body adds two (the body, its batch array).
DEEPEST_SINGLE = 1_024
DEEPEST_IN_BATCH = 1_022


def deep_message(depth: int, message_id: str, kind: str | None = "track") -> str:
    """A valid track call, as JSON text, whose nesting is exactly `depth` levels: the message,
    its properties, then lists (written as text: Python's own encoder would recurse)."""
    lists = depth - 2
    head = f'{{"userId":"u1","event":"Deep","messageId":"{message_id}"'
    if kind is not None:
        head += f',"type":"{kind}"'
    return head + ',"properties":{"deep":' + "[" * lists + "1" + "]" * lists + "}}"


def quarantined(engine: Engine) -> list[tuple[str | None, str, str]]:
    rows = engine.store.query(  # type: ignore[attr-defined]
        "SELECT message_id, reason, payload FROM quarantine ORDER BY message_id"
    )
    return [(row[0], row[1], row[2]) for row in rows]


def stored_ids(engine: Engine) -> set[str]:
    rows = engine.store.query("SELECT message_id FROM events")  # type: ignore[attr-defined]
    return {row[0] for row in rows}


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 254, 255, 960, 1_000, DEEPEST_SINGLE])
def test_single_call_nested_past_the_limit_is_refused_as_too_deep(
    client: httpx.Client, engine: Engine, depth: int
) -> None:
    body = deep_message(depth, "deep", kind=None)
    response = client.post("/v1/track", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "too_deep"
    assert str(MAX_DEPTH) in response.json()["message"]
    [(message_id, reason, payload)] = quarantined(engine)
    assert (message_id, reason) == ("deep", "too_deep")
    assert json.loads(payload)["messageId"] == "deep"  # what was too deep is cut, the rest kept
    assert stored_ids(engine) == set()


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 255, 960, 1_000, DEEPEST_IN_BATCH])
def test_batch_quarantines_the_too_deep_message_and_stores_its_batch_mates(
    client: httpx.Client, engine: Engine, depth: int
) -> None:
    mates = [
        {"type": "track", "userId": "u1", "event": "Fine", "messageId": f"ok-{i}"} for i in (0, 2)
    ]
    body = (
        '{"batch":['
        + json.dumps(mates[0])
        + ","
        + deep_message(depth, "deep")
        + ","
        + json.dumps(mates[1])
        + "]}"
    )
    response = client.post("/v1/batch", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert [(q["index"], q["code"]) for q in response.json()["quarantined"]] == [(1, "too_deep")]
    assert stored_ids(engine) == {"ok-0", "ok-2"}
    assert [(m, r) for m, r, _ in quarantined(engine)] == [("deep", "too_deep")]


def test_message_nested_exactly_at_the_limit_is_stored(
    client: httpx.Client, engine: Engine
) -> None:
    body = deep_message(MAX_DEPTH, "at-limit", kind=None)
    response = client.post("/v1/track", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert stored_ids(engine) == {"at-limit"}


def test_batch_context_nested_past_the_limit_quarantines_the_messages_it_would_join(
    client: httpx.Client, engine: Engine
) -> None:
    lists = MAX_DEPTH - 1  # a context of MAX_DEPTH levels: one more inside each message
    context = '{"deep":' + "[" * lists + "1" + "]" * lists + "}"
    message = '{"type":"track","userId":"u1","event":"E","messageId":"m"}'
    response = client.post(
        "/v1/batch",
        content='{"batch":[' + message + '],"context":' + context + "}",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert [q["code"] for q in response.json()["quarantined"]] == ["too_deep"]
    assert stored_ids(engine) == set()
