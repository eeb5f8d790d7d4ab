"""The TikTok fake keeps the contract of more-destinations.md §2: HTTP 200 with a non-zero `code`
for every refusal, `Access-Token` required, rows aligned with `id_schema`, hashes only, batch
limits, and the 48-hour `event_id` dedupe."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import httpx
import pytest

from tests.fakes.tiktok import TiktokFake

MARY = hashlib.sha256(b"mary@example.com").hexdigest()
PHONE = hashlib.sha256(b"16505551212").hexdigest()


def call(
    fake: TiktokFake,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    token: str | None = "valid",
    params: dict[str, str] | None = None,
) -> httpx.Response:
    """One request over HTTP; `token="valid"` sends the fake's own token."""
    headers = {} if token is None else {"Access-Token": fake.token if token == "valid" else token}
    method = "GET" if body is None else "POST"
    return httpx.request(
        method, fake.api_url + path, json=body, params=params, headers=headers, timeout=5
    )


def code(response: httpx.Response) -> int:
    """The envelope's code of an answer that must come with HTTP 200."""
    assert response.status_code == 200, response.text
    return int(response.json()["code"])


def create(fake: TiktokFake, name: str) -> str:
    body = {"advertiser_id": fake.advertiser_id, "custom_audience_name": name, "action": "create"}
    answer = call(fake, "/segment/audience/", body)
    assert code(answer) == 0
    return str(answer.json()["data"]["audience_id"])


def mapping(
    fake: TiktokFake, rows: list[list[dict[str, Any]]], action: str = "add", **over: Any
) -> dict[str, Any]:
    return {
        "advertiser_ids": [fake.advertiser_id],
        "action": action,
        "id_schema": ["EMAIL_SHA256", "PHONE_SHA256"],
        "batch_data": rows,
        **over,
    }


def cell(value: str, audience_id: str) -> dict[str, Any]:
    return {"id": value, "audience_ids": [audience_id]}


def event(n: int, **over: Any) -> dict[str, Any]:
    return {
        "event": "CompletePayment",
        "event_time": 1_780_000_000,
        "event_id": f"msg-{n}",
        "user": {"email": [MARY], "ip": "203.0.113.7", "user_agent": "Mozilla/5.0"},
        "page": {"url": "https://shop.example.com/thanks"},
        **over,
    }


def track(fake: TiktokFake, events: list[dict[str, Any]]) -> httpx.Response:
    body = {"event_source": "web", "event_source_id": fake.pixel_code, "data": events}
    return call(fake, "/event/track/", body)


def test_audiences_are_created_and_listed_by_page(tiktok_fake: TiktokFake) -> None:
    ids = [create(tiktok_fake, f"aud_{n}") for n in range(3)]
    params = {"advertiser_id": tiktok_fake.advertiser_id, "page": "2", "page_size": "2"}
    page = call(tiktok_fake, "/dmp/custom_audience/list/", params=params)
    assert code(page) == 0
    data = page.json()["data"]
    assert data["list"] == [{"audience_id": ids[2], "name": "aud_2"}]
    assert data["page_info"]["total_page"] == 2
    params["page_size"] = "101"
    assert code(call(tiktok_fake, "/dmp/custom_audience/list/", params=params)) == 40002


def test_a_name_over_128_characters_or_another_advertiser_is_refused(
    tiktok_fake: TiktokFake,
) -> None:
    body = {
        "advertiser_id": tiktok_fake.advertiser_id,
        "custom_audience_name": "x" * 129,
        "action": "create",
    }
    assert code(call(tiktok_fake, "/segment/audience/", body)) == 40002
    body.update(custom_audience_name="ok", advertiser_id="1")
    assert code(call(tiktok_fake, "/segment/audience/", body)) == 40001


@pytest.mark.parametrize(
    ("token", "expected"), [(None, 40104), ("", 40104), ("wrong", 40105)], ids=str
)
def test_the_access_token_is_required(
    tiktok_fake: TiktokFake, token: str | None, expected: int
) -> None:
    body = {"advertiser_id": tiktok_fake.advertiser_id, "custom_audience_name": "a"}
    answer = call(tiktok_fake, "/segment/audience/", {**body, "action": "create"}, token=token)
    assert code(answer) == expected
    assert tiktok_fake.audiences() == {}


def test_an_expired_token_is_40102_until_renewed(tiktok_fake: TiktokFake) -> None:
    tiktok_fake.expire_token()
    assert code(track(tiktok_fake, [event(1)])) == 40102
    tiktok_fake.renew_token()
    assert code(track(tiktok_fake, [event(1)])) == 0


def test_members_are_added_and_deleted_per_schema(tiktok_fake: TiktokFake) -> None:
    aud = create(tiktok_fake, "aud")
    rows = [[cell(MARY, aud), cell(PHONE, aud)], [{}, cell(PHONE[::-1], aud)]]
    assert code(call(tiktok_fake, "/segment/mapping/", mapping(tiktok_fake, rows))) == 0
    assert tiktok_fake.members("aud") == {MARY}
    assert tiktok_fake.members("aud", "PHONE_SHA256") == {PHONE, PHONE[::-1]}
    delete = mapping(tiktok_fake, [[cell(MARY, aud), {}]], "delete")
    assert code(call(tiktok_fake, "/segment/mapping/", delete)) == 0
    assert tiktok_fake.members("aud") == set()
    assert tiktok_fake.members("aud", "PHONE_SHA256") == {PHONE, PHONE[::-1]}


@pytest.mark.parametrize(
    "raw", ["mary@example.com", "+16505551212", "16505551212", MARY.upper(), "abc"]
)
def test_an_unhashed_value_in_a_hashed_field_is_40062(tiktok_fake: TiktokFake, raw: str) -> None:
    aud = create(tiktok_fake, "aud")
    body = mapping(tiktok_fake, [[cell(MARY, aud), {}], [cell(raw, aud), {}]])
    assert code(call(tiktok_fake, "/segment/mapping/", body)) == 40062
    assert tiktok_fake.members("aud") == set()  # one bad row refuses the whole call


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"batch_data": [[{}]]}, 40002),  # a row shorter than id_schema
        ({"id_schema": ["EMAIL"]}, 40002),
        ({"id_schema": ["EMAIL_SHA256", "EMAIL_SHA256"]}, 40002),
        ({"action": "replace"}, 40002),
        ({"advertiser_ids": ["1"]}, 40001),
        ({"batch_data": [[{"id": MARY}, {}]]}, 40002),  # no audience_ids
        ({"batch_data": [[cell(MARY, "404"), {}]]}, 40007),
    ],
    ids=["misaligned", "bad-schema", "repeated-schema", "action", "advertiser", "no-aud", "gone"],
)
def test_malformed_mappings_are_refused(
    tiktok_fake: TiktokFake, over: dict[str, Any], expected: int
) -> None:
    aud = create(tiktok_fake, "aud")
    body = mapping(tiktok_fake, [[cell(MARY, aud), {}]], **over)
    assert code(call(tiktok_fake, "/segment/mapping/", body)) == expected
    assert tiktok_fake.members("aud") == set()


def test_more_than_1000_users_or_events_is_40061(tiktok_fake: TiktokFake) -> None:
    aud = create(tiktok_fake, "aud")
    rows = [[cell(hashlib.sha256(str(n).encode()).hexdigest(), aud), {}] for n in range(1001)]
    assert code(call(tiktok_fake, "/segment/mapping/", mapping(tiktok_fake, rows))) == 40061
    assert code(call(tiktok_fake, "/segment/mapping/", mapping(tiktok_fake, rows[:1000]))) == 0
    assert code(track(tiktok_fake, [event(n) for n in range(1001)])) == 40061
    assert tiktok_fake.received_events == []


def test_events_are_counted_once_per_event_id(tiktok_fake: TiktokFake) -> None:
    assert code(track(tiktok_fake, [event(1), event(2)])) == 0
    assert code(track(tiktok_fake, [event(1)])) == 0
    assert len(tiktok_fake.received_events) == 3
    assert [e["event_id"] for e in tiktok_fake.effective_events] == ["msg-1", "msg-2"]


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ({"email": ["mary@example.com"]}, 40062),
        ({"phone": "+16505551212"}, 40062),
        ({"external_id": ["u-1"]}, 40062),
        ({"ip": 7}, 40002),
        ({"emails": [MARY]}, 40002),
    ],
    ids=["email", "phone", "external-id", "ip", "unknown"],
)
def test_an_event_with_raw_pii_or_a_wrong_field_refuses_the_request(
    tiktok_fake: TiktokFake, user: dict[str, Any], expected: int
) -> None:
    assert code(track(tiktok_fake, [event(1), event(2, user=user)])) == expected
    assert tiktok_fake.received_events == []


def test_events_need_a_known_pixel_and_source(tiktok_fake: TiktokFake) -> None:
    body = {"event_source": "web", "event_source_id": "OTHER", "data": [event(1)]}
    assert code(call(tiktok_fake, "/event/track/", body)) == 40007
    body.update(event_source="tv", event_source_id=tiktok_fake.pixel_code)
    assert code(call(tiktok_fake, "/event/track/", body)) == 40002
    assert code(track(tiktok_fake, [event(1, event_time="soon")])) == 40002


@pytest.mark.parametrize("refusal", [40100, 40132, 40062, 40102, 50002])
def test_refusals_are_injected_as_http_200_with_the_code(
    tiktok_fake: TiktokFake, refusal: int
) -> None:
    tiktok_fake.refuse(refusal, times=1, path="/event/track/")
    assert code(track(tiktok_fake, [event(1)])) == refusal
    assert code(track(tiktok_fake, [event(1)])) == 0
    assert len(tiktok_fake.effective_events) == 1


@pytest.mark.parametrize(("status", "expected"), [(401, 40105), (429, 40100), (503, 50000)])
def test_http_faults_carry_the_envelope(
    tiktok_fake: TiktokFake, status: int, expected: int
) -> None:
    tiktok_fake.fail(status, retry_after=3 if status == 429 else None)
    answer = track(tiktok_fake, [event(1)])
    assert answer.status_code == status
    assert answer.json()["code"] == expected
    if status == 429:
        assert answer.headers["retry-after"] == "3"


def test_a_timeout_after_processing_loses_only_the_answer(tiktok_fake: TiktokFake) -> None:
    tiktok_fake.timeout(delay=1.0, processed=True)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            tiktok_fake.api_url + "/event/track/",
            json={
                "event_source": "web",
                "event_source_id": tiktok_fake.pixel_code,
                "data": [event(1)],
            },
            headers={"Access-Token": tiktok_fake.token},
            timeout=0.3,
        )
    assert time.monotonic() - started < 1.0
    assert len(tiktok_fake.effective_events) == 1
