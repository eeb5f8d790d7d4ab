"""The Segment fake refuses and drops what Segment's `/v1/batch` does (destinations.md §6)."""

from __future__ import annotations

import httpx
import orjson

from tests.fakes.segment import SegmentFake


def track(n: int, **fields: object) -> dict[str, object]:
    return {"type": "track", "event": "Viewed", "userId": f"u{n}", "messageId": f"m{n}", **fields}


def post(fake: SegmentFake, items: list[dict[str, object]]) -> httpx.Response:
    body = orjson.dumps({"batch": items})
    return httpx.post(f"{fake.url}/v1/batch", content=body, auth=("wk", ""), timeout=10)


def test_a_body_over_500_kb_is_a_400_and_nothing_is_kept(segment_fake: SegmentFake) -> None:
    items = [track(n, properties={"pad": "x" * 20_000}) for n in range(30)]
    answer = post(segment_fake, items)
    assert answer.status_code == 400
    assert segment_fake.messages == []


def test_a_message_over_32_kb_is_a_400(segment_fake: SegmentFake) -> None:
    answer = post(segment_fake, [track(1), track(2, properties={"pad": "x" * 33_000})])
    assert answer.status_code == 400
    assert segment_fake.messages == []


def test_past_2500_messages_segment_answers_200_and_drops_the_rest(
    segment_fake: SegmentFake,
) -> None:
    answer = post(segment_fake, [track(n) for n in range(2_600)])
    assert answer.status_code == 200
    assert len(segment_fake.messages) == 2_500
    assert segment_fake.dropped == 100


def test_each_message_id_is_kept_once_and_messages_without_ids_are_dropped(
    segment_fake: SegmentFake,
) -> None:
    post(segment_fake, [track(1), track(2, userId=None), track(3, event="")])
    post(segment_fake, [track(1)])
    assert [m["messageId"] for m in segment_fake.messages] == ["m1"]
    assert (segment_fake.duplicates, segment_fake.dropped) == (1, 2)
    assert segment_fake.write_keys == ["wk", "wk"]
