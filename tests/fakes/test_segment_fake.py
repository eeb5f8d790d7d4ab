"""The Segment fake keeps the contract of destinations.md §6: write key, limits, dedupe."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes.segment import SegmentFake


@pytest.fixture
def segment() -> Iterator[SegmentFake]:
    with SegmentFake().serving() as fake:
        yield fake


def post(fake: SegmentFake, body: Any, key: str | None = None) -> httpx.Response:
    auth = (fake.write_key if key is None else key, "")
    return httpx.post(f"{fake.url}/v1/batch", json=body, auth=auth, timeout=10)


def track(message_id: str) -> dict[str, Any]:
    return {"type": "track", "event": "Audience Entered", "userId": "u1", "messageId": message_id}


def test_messages_are_kept_once_per_message_id(segment: SegmentFake) -> None:
    assert post(segment, {"batch": [track("m1"), track("m2")]}).json() == {"success": True}
    post(segment, {"batch": [track("m1")]})
    assert [m["messageId"] for m in segment.messages] == ["m1", "m2"]
    assert segment.duplicates == 1


def test_the_write_key_may_be_in_the_body(segment: SegmentFake) -> None:
    body = {"batch": [track("m1")], "writeKey": segment.write_key}
    assert httpx.post(f"{segment.url}/v1/batch", json=body, timeout=10).status_code == 200
    assert len(segment.messages) == 1


def test_a_wrong_key_or_a_message_without_ids_is_dropped_silently(segment: SegmentFake) -> None:
    assert post(segment, {"batch": [track("m1")]}, key="wrong").status_code == 200
    anonymous = {"type": "track", "event": "X", "messageId": "m2"}
    assert post(segment, {"batch": [anonymous, {"type": "track", "userId": "u"}]}).is_success
    assert segment.messages == []
    assert segment.dropped == 3


@pytest.mark.parametrize(
    "content",
    [b"not json", b'{"batch": "x"}', b'{"batch": [{"userId": "u", "p": "%s"}]}' % (b"x" * 33_000)],
    ids=["invalid json", "batch not a list", "message over 32 KB"],
)
def test_malformed_or_oversize_bodies_are_400(segment: SegmentFake, content: bytes) -> None:
    response = httpx.post(
        f"{segment.url}/v1/batch", content=content, auth=(segment.write_key, ""), timeout=10
    )
    assert response.status_code == 400
    assert set(response.json()) == {"code", "message"}
