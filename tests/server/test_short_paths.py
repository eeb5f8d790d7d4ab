"""The short paths analytics.js posts to: /v1/t, /v1/i, /v1/p, /v1/s, /v1/g, /v1/a and /v1/b.

@segment/analytics-next sends each call to `apiHost/<first letter of its type>` and a batch to
`apiHost/b`, as text/plain with the write key in the body; a shop pointing it at cohortsync must
lose none of them.
"""

from __future__ import annotations

import json

import httpx
import pytest

from cohortsync.engine import Engine
from tests.conftest import WRITE_KEY, LiveServer

CALLS = {
    "t": {"event": "Product Viewed"},
    "i": {"traits": {"plan": "pro"}},
    "p": {"name": "Home"},
    "s": {"name": "Cart"},
    "g": {"groupId": "g1"},
    "a": {"previousId": "anon-0"},
}
KINDS = {
    "t": "track", "i": "identify", "p": "page", "s": "screen", "g": "group", "a": "alias",
}  # fmt: skip


def stored(engine: Engine) -> dict[str, tuple[str, str | None, str | None]]:
    rows = engine.store.query(  # type: ignore[attr-defined]
        "SELECT message_id, type, user_id, event FROM events"
    )
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


@pytest.mark.parametrize("letter", sorted(CALLS))
def test_each_short_path_stores_its_type_as_analytics_next_sends_it(
    live_server: LiveServer, engine: Engine, letter: str
) -> None:
    body = {"writeKey": WRITE_KEY, "messageId": f"m-{letter}", "userId": "u1", **CALLS[letter]}
    response = httpx.post(
        f"{live_server.url}/v1/{letter}",
        content=json.dumps(body),
        headers={"Content-Type": "text/plain"},
    )

    assert response.status_code == 200, response.text
    event = "Product Viewed" if letter == "t" else None
    assert stored(engine) == {f"m-{letter}": (KINDS[letter], "u1", event)}


def test_a_short_path_validates_as_its_long_path_does(live_server: LiveServer) -> None:
    response = httpx.post(f"{live_server.url}/v1/t", json={"userId": "u1"}, auth=(WRITE_KEY, ""))

    assert response.status_code == 400
    assert response.json()["code"] == "missing_event"


def test_the_b_path_stores_a_batch(live_server: LiveServer, engine: Engine) -> None:
    body = {
        "writeKey": WRITE_KEY,
        "batch": [
            {"type": "track", "messageId": "b1", "userId": "u1", "event": "Cart Viewed"},
            {"type": "identify", "messageId": "b2", "userId": "u1", "traits": {"plan": "pro"}},
            {"type": "page", "messageId": "b3", "userId": "u1", "name": "Home"},
        ],
        "sentAt": "2026-05-01T10:00:00Z",
    }
    response = httpx.post(
        f"{live_server.url}/v1/b", content=json.dumps(body), headers={"Content-Type": "text/plain"}
    )

    assert response.status_code == 200, response.text
    assert stored(engine) == {
        "b1": ("track", "u1", "Cart Viewed"),
        "b2": ("identify", "u1", None),
        "b3": ("page", "u1", None),
    }
