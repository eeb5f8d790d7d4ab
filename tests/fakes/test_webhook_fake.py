"""The Standard Webhooks receiver fake keeps the contract of destinations.md §8 and §9.2."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest

from tests.fakes.webhook import WebhookFake, sign, verify

SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
# §9.2: (id, timestamp, body, expected header) — library test, spec's minified body, our own.
VECTORS = [
    (
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    ),
    (
        "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
        1674087231,
        b'{"type":"contact.created","timestamp":"2022-11-03T20:26:10.344522Z",'
        b'"data":{"id":"1f81eb52-5198-4599-803e-771906343485"}}',
        "v1,ARw42xaAApl/nxRo+iPGYwSaMQaOwMo2eyH5JBRA+bQ=",
    ),
    (
        "evt_0001",
        1700000000,
        b'{"type":"audience.member.added","data":{"audience_id":"aud_1","user_id":"u1"}}',
        "v1,BL39qTyYINIrx0+FlADOBXpygSlhIdo0YKINWZc11zQ=",
    ),
]
Tamper = Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]]
BODY = b'{"type":"audience.member.added","data":{"audience_id":"aud_1","user_id":"u1"}}'


def at(timestamp: int) -> datetime:
    """A UTC datetime from Unix seconds."""
    return datetime.fromtimestamp(timestamp, UTC)


def post(fake: WebhookFake, body: bytes, headers: dict[str, str]) -> httpx.Response:
    """One delivery to the fake, over HTTP."""
    return httpx.post(fake.url, content=body, headers=headers, timeout=10)


@pytest.mark.parametrize(("msg_id", "timestamp", "body", "expected"), VECTORS)
def test_signer_reproduces_the_published_vectors(
    msg_id: str, timestamp: int, body: bytes, expected: str
) -> None:
    assert sign(SPEC_SECRET, msg_id, timestamp, body) == expected
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
    assert verify(SPEC_SECRET, {**headers, "webhook-signature": expected}, body, at(timestamp))


@pytest.mark.parametrize(("msg_id", "timestamp", "body", "expected"), VECTORS)
def test_vectors_are_accepted_over_http(
    msg_id: str, timestamp: int, body: bytes, expected: str
) -> None:
    with WebhookFake(secret=SPEC_SECRET).serving() as fake:
        fake.now = at(timestamp)
        headers = {
            "Webhook-Id": msg_id,
            "Webhook-Timestamp": str(timestamp),
            "Webhook-Signature": expected,
        }
        response = post(fake, body, headers)
        assert response.status_code == 204
        assert [applied_id for applied_id, _ in fake.applied] == [msg_id]


def test_a_valid_delivery_is_applied_with_its_parsed_body(webhook_fake: WebhookFake) -> None:
    assert webhook_fake.secret.startswith("whsec_")
    response = post(webhook_fake, BODY, webhook_fake.signed_headers("evt_1", BODY))
    assert response.status_code == 204
    assert webhook_fake.applied == [
        (
            "evt_1",
            {"type": "audience.member.added", "data": {"audience_id": "aud_1", "user_id": "u1"}},
        )
    ]


def test_a_resent_id_is_acknowledged_but_applied_once(webhook_fake: WebhookFake) -> None:
    for _ in range(3):
        response = post(webhook_fake, BODY, webhook_fake.signed_headers("evt_1", BODY))
        assert response.status_code == 204
    post(webhook_fake, BODY, webhook_fake.signed_headers("evt_2", BODY))
    assert [msg_id for msg_id, _ in webhook_fake.applied] == ["evt_1", "evt_2"]
    assert webhook_fake.duplicates == 2


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_header_is_a_400(webhook_fake: WebhookFake, missing: str) -> None:
    headers = webhook_fake.signed_headers("evt_1", BODY)
    del headers[missing]
    response = post(webhook_fake, BODY, headers)
    assert response.status_code == 400
    assert missing in response.json()["error"]
    assert webhook_fake.applied == []


@pytest.mark.parametrize(
    ("what", "tamper"),
    [
        ("body", lambda h, b: (h, b.replace(b"u1", b"u2"))),
        ("id", lambda h, b: ({**h, "webhook-id": "evt_other"}, b)),
        (
            "timestamp",
            lambda h, b: ({**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) + 1)}, b),
        ),
        ("reserialised JSON", lambda h, b: (h, b.replace(b'":', b'": '))),
        (
            "signature",
            lambda h, b: ({**h, "webhook-signature": "v1,AAAA" + h["webhook-signature"][7:]}, b),
        ),
        (
            "version",
            lambda h, b: ({**h, "webhook-signature": "v2" + h["webhook-signature"][2:]}, b),
        ),
    ],
)
def test_a_tampered_delivery_is_a_401(webhook_fake: WebhookFake, what: str, tamper: Tamper) -> None:
    headers, body = tamper(webhook_fake.signed_headers("evt_1", BODY), BODY)
    response = post(webhook_fake, body, headers)
    assert response.status_code == 401, what
    assert webhook_fake.applied == []
    assert webhook_fake.rejections == [(401, "no valid v1 signature in webhook-signature")]


def test_a_wrong_secret_is_a_401(webhook_fake: WebhookFake) -> None:
    ts = int(webhook_fake.now.timestamp())
    headers = webhook_fake.signed_headers("evt_1", BODY)
    headers["webhook-signature"] = sign(SPEC_SECRET, "evt_1", ts, BODY)
    headers["webhook-timestamp"] = str(ts)
    assert post(webhook_fake, BODY, headers).status_code == 401


def test_any_of_several_signatures_may_match_during_rotation(webhook_fake: WebhookFake) -> None:
    headers = webhook_fake.signed_headers("evt_1", BODY)
    old = sign(SPEC_SECRET, "evt_1", int(headers["webhook-timestamp"]), BODY)
    headers["webhook-signature"] = f"{old} v1a,ignored {headers['webhook-signature']}"
    assert post(webhook_fake, BODY, headers).status_code == 204


@pytest.mark.parametrize(("offset", "status"), [(-301, 400), (-300, 204), (300, 204), (301, 400)])
def test_timestamps_more_than_five_minutes_off_are_a_400(
    webhook_fake: WebhookFake, offset: int, status: int
) -> None:
    webhook_fake.now = at(1_700_000_000)
    headers = webhook_fake.signed_headers("evt_1", BODY, timestamp=1_700_000_000 + offset)
    assert post(webhook_fake, BODY, headers).status_code == status


def test_a_non_numeric_timestamp_is_a_400(webhook_fake: WebhookFake) -> None:
    headers = webhook_fake.signed_headers("evt_1", BODY)
    headers["webhook-timestamp"] = "2024-01-01T00:00:00Z"
    assert post(webhook_fake, BODY, headers).status_code == 400


def test_scripted_failures_fire_then_stop_and_are_captured(webhook_fake: WebhookFake) -> None:
    webhook_fake.fail(429, times=2, retry_after=7)
    statuses = []
    for _ in range(3):
        response = post(webhook_fake, BODY, webhook_fake.signed_headers("evt_1", BODY))
        statuses.append((response.status_code, response.headers.get("retry-after")))
    assert statuses == [(429, "7"), (429, "7"), (204, None)]
    assert [item.status for item in webhook_fake.log] == [429, 429, 204]
    assert [item.fault for item in webhook_fake.log] == ["fail", "fail", None]
    assert webhook_fake.log[0].body == BODY
    assert webhook_fake.log[0].header("webhook-id") == "evt_1"
    assert len(webhook_fake.applied) == 1


def test_a_410_window_refuses_deliveries_until_cleared(webhook_fake: WebhookFake) -> None:
    webhook_fake.fail(410, seconds=60)
    for _ in range(2):
        assert (
            post(webhook_fake, BODY, webhook_fake.signed_headers("evt_1", BODY)).status_code == 410
        )
    assert webhook_fake.applied == []
    webhook_fake.faults.clear()
    assert post(webhook_fake, BODY, webhook_fake.signed_headers("evt_1", BODY)).status_code == 204
