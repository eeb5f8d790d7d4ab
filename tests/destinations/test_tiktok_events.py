"""TikTok Events API 2.0 against the Business API fake over real HTTP: one event per conversion
with the message id as `event_id`, hashed customer keys beside raw browser fields, page URLs
without their query, and a 200 carrying a non-zero code never taken as an acknowledgement."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from cohortsync.destinations.base import (
    AuthError,
    Conversion,
    DestinationContext,
    PermanentError,
    TransientError,
)
from cohortsync.destinations.hashing import sha256_hex
from cohortsync.destinations.tiktok_api import UnhashedPiiError
from cohortsync.destinations.tiktok_events import (
    UNMATCHABLE,
    TiktokEventsConfig,
    TiktokEventsDestination,
)
from tests.destinations.conformance import CLOCK_AT, Conformance, R, Records, Subject
from tests.fakes.tiktok import TiktokFake

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15"
RECORDS = Records(
    start=NOW,
    step=timedelta(0),
    identifiers=lambda n, _: {
        "email": f"buyer.{n}@example.com",
        "phone": "+16505551212",
        "user_id": f"u-{n}",
    },
)
batch = RECORDS.conversions


def destination(
    fake: TiktokFake, tmp_path: Path, http: httpx.Client, **overrides: Any
) -> TiktokEventsDestination:
    """The destination pointed at the fake."""
    settings: dict[str, Any] = {
        "access_token": fake.token,
        "pixel_code": fake.pixel_code,
        "base_url": fake.url,
        **overrides,
    }
    context = DestinationContext("tiktok", tmp_path, http, lambda: NOW)
    return TiktokEventsDestination(TiktokEventsConfig(**settings), context)


def purchase(n: int, **fields: Any) -> Conversion:
    """A web order, as the conversion pipeline hands it over."""
    context = {
        "ip": "203.0.113.7",
        "userAgent": UA,
        "page": {"url": "https://shop.example.com/thanks?email=buyer%40example.com#top"},
    }
    properties = {"order_id": f"o-{n}", "ttclid": "E.C.P.abc"}
    return RECORDS.conversion(
        n, **{"currency": "usd", "properties": properties, "context": context, **fields}
    )


def test_conversion_becomes_one_event_with_message_id_and_hashed_user(
    tiktok_fake: TiktokFake, tmp_path: Path, http: httpx.Client
) -> None:
    result = destination(tiktok_fake, tmp_path, http).send_conversions(batch(purchase(1)))
    (call,) = tiktok_fake.log.to("/event/track/")
    assert call.header("access-token") == tiktok_fake.token
    body = call.json()
    assert (body["event_source"], body["event_source_id"]) == ("web", tiktok_fake.pixel_code)
    assert body["data"] == [
        {
            "event": "Purchase",
            "event_time": int(NOW.timestamp()),
            "event_id": "msg-1",
            "user": {
                "email": [sha256_hex("buyer.1@example.com")],
                "phone": [sha256_hex("16505551212")],
                "external_id": [sha256_hex("u-1")],
                "ip": "203.0.113.7",
                "user_agent": UA,
                "ttclid": "E.C.P.abc",
            },
            "properties": {"value": 59.9, "currency": "USD", "order_id": "o-1"},
            "page": {"url": "https://shop.example.com/thanks"},
        }
    ]
    assert result.stats == {"sent": 1, "requests": 1}
    assert len(tiktok_fake.effective_events) == 1


def test_event_names_map_to_tiktok_names_and_test_code_is_sent(
    tiktok_fake: TiktokFake, tmp_path: Path, http: httpx.Client
) -> None:
    dest = destination(
        tiktok_fake,
        tmp_path,
        http,
        event_names={"Purchase": "CompletePayment"},
        test_event_code="TEST123",
    )
    dest.send_conversions(batch(purchase(1)))
    body = tiktok_fake.log.to("/event/track/")[0].json()
    assert body["test_event_code"] == "TEST123"
    assert body["data"][0]["event"] == "CompletePayment"


def test_1500_conversions_go_as_two_requests(
    tiktok_fake: TiktokFake, tmp_path: Path, http: httpx.Client
) -> None:
    sent = batch(*(purchase(n, identifiers={"user_id": f"u-{n}"}) for n in range(1500)))
    destination(tiktok_fake, tmp_path, http).send_conversions(sent)
    sizes = [len(c.json()["data"]) for c in tiktok_fake.log.to("/event/track/")]
    assert sizes == [1000, 500]


def test_resend_is_identical_and_counted_once(
    tiktok_fake: TiktokFake, tmp_path: Path, http: httpx.Client
) -> None:
    dest = destination(tiktok_fake, tmp_path, http)
    sent = batch(purchase(1), purchase(2))
    dest.send_conversions(sent)
    dest.send_conversions(sent)
    first, second = (c.body for c in tiktok_fake.log.to("/event/track/"))
    assert first == second
    assert len(tiktok_fake.received_events) == 4
    assert [e["event_id"] for e in tiktok_fake.effective_events] == ["msg-1", "msg-2"]


def test_unmatchable_conversions_are_rejected_and_the_rest_sent(
    tiktok_fake: TiktokFake, tmp_path: Path, http: httpx.Client
) -> None:
    lost = purchase(
        2, identifiers={}, properties={}, context={"page": {"url": "https://shop.example.com/"}}
    )
    result = destination(tiktok_fake, tmp_path, http).send_conversions(
        batch(purchase(1), lost, purchase(3))
    )
    assert dict(result.rejected) == {2: UNMATCHABLE}
    assert [e["event_id"] for e in tiktok_fake.effective_events] == ["msg-1", "msg-3"]


def test_no_raw_email_or_phone_or_query_leaves_the_process(
    tiktok_fake: TiktokFake, tmp_path: Path, http: httpx.Client
) -> None:
    order = purchase(1, properties={"order_id": "buyer.1@example.com"})
    destination(tiktok_fake, tmp_path, http).send_conversions(batch(order))
    text = "\n".join(c.text() for c in tiktok_fake.log).lower()
    for raw in ("buyer.1@example.com", "buyer@example.com", "+16505551212", "16505551212"):
        assert raw not in text


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (40100, TransientError),
        (40132, TransientError),
        (50002, TransientError),
        (40105, AuthError),
        (40102, AuthError),
        (40002, PermanentError),
        (40062, UnhashedPiiError),
    ],
)
def test_codes_map_to_retry_pause_and_dead_letter_and_are_never_acknowledged(
    tiktok_fake: TiktokFake, tmp_path: Path, http: httpx.Client, code: int, error: type[Exception]
) -> None:
    tiktok_fake.refuse(code, times=1)
    with pytest.raises(error, match=str(code)):
        destination(tiktok_fake, tmp_path, http).send_conversions(batch(purchase(1)))
    assert tiktok_fake.effective_events == []


def test_40062_logs_an_alarm_without_the_identifier(
    tiktok_fake: TiktokFake,
    tmp_path: Path,
    http: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tiktok_fake.refuse(40062, times=1, message="user.email buyer.1@example.com not hashed")
    with caplog.at_level(logging.ERROR), pytest.raises(UnhashedPiiError) as caught:
        destination(tiktok_fake, tmp_path, http).send_conversions(batch(purchase(1)))
    alarms = [r.getMessage() for r in caplog.records if "ALARM" in r.getMessage()]
    assert len(alarms) == 1
    assert all("buyer.1@example.com" not in text for text in (*alarms, str(caught.value)))


def test_dry_run_sends_nothing_and_redacts_the_token(
    tiktok_fake: TiktokFake, tmp_path: Path, http: httpx.Client
) -> None:
    (request,) = destination(tiktok_fake, tmp_path, http).dry_run(batch(purchase(1)))
    assert request["headers"]["Access-Token"] == "***"
    assert request["body"]["data"][0]["event_id"] == "msg-1"
    assert len(tiktok_fake.log) == 0


# --- the destination conformance suite -------------------------------------------------------


class TiktokEventsSubject(Subject):
    """The destination against the TikTok fake; conversions are the events it counts."""

    def __init__(self, fake: TiktokFake, http: httpx.Client, tmp_path: Path) -> None:
        self.fake = fake
        settings = {"access_token": fake.token, "pixel_code": fake.pixel_code, "base_url": fake.url}
        context = DestinationContext("tiktok", tmp_path, http, lambda: CLOCK_AT)
        self.destination = TiktokEventsDestination(TiktokEventsConfig(**settings), context)

    def members(self, audience: str) -> set[str]:
        return set()  # conversions only

    def conversions(self) -> Counter[str]:
        return Counter(str(event["event_id"]) for event in self.fake.effective_events)

    def state(self) -> object:
        return self.fake.effective_events

    def outgoing(self) -> str:
        return "\n".join(item.text() for item in self.fake.log)

    def fail(self, status: int, retry_after: float | None = None) -> None:
        self.fake.fail(status, retry_after=retry_after)

    def recover(self) -> None:
        self.fake.faults.clear()

    def unusable(self, record: R) -> R:
        """Nothing TikTok can match: no identifiers and no browser fields."""
        return replace(record, identifiers={}, context={}, properties={})


class TestTiktokEventsConformance(Conformance):
    @pytest.fixture
    def subject(
        self, tiktok_fake: TiktokFake, http: httpx.Client, tmp_path: Path
    ) -> TiktokEventsSubject:
        return TiktokEventsSubject(tiktok_fake, http, tmp_path)
