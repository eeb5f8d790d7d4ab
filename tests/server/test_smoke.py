"""The smallest end-to-end path: one track call over real HTTP is stored."""

from __future__ import annotations

import httpx

from tests.conftest import WRITE_KEY, LiveServer


def test_track_call_is_stored_before_200(live_server: LiveServer) -> None:
    response = httpx.post(
        f"{live_server.url}/v1/track",
        json={"userId": "u1", "event": "Order Completed", "messageId": "m-1"},
        auth=(WRITE_KEY, ""),
    )
    assert response.status_code == 200, response.text
    assert live_server.engine.stats()["events"]["by_type"] == {"track": 1}
