"""Google conversions against the Data Manager fake over real HTTP: one event per conversion with
its transaction id, timestamp, value, click ids and hashed user data; ≤ 2,000 per request; an
event Google refuses is isolated and rejected with Google's reason."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from cohortsync.destinations.google_conversions import NO_IDENTIFIER, click_ids, rfc3339
from cohortsync.destinations.hashing import sha256_hex
from tests.destinations.conformance import CLOCK_AT, T0, Conformance, conversion, conversions
from tests.destinations.google_subjects import ConversionsSubject
from tests.destinations.google_subjects import conversions as destination
from tests.fakes.google_data_manager import GoogleDataManagerFake


@pytest.fixture
def fake(google_fake: GoogleDataManagerFake) -> GoogleDataManagerFake:
    google_fake.now = CLOCK_AT
    return google_fake


def test_an_event_carries_the_documented_fields(
    fake: GoogleDataManagerFake, tmp_path: Path, http: httpx.Client
) -> None:
    sent = conversion(
        1,
        properties={"order_id": "o-1", "gclid": "Cj0KCQ-click"},
        context={"page": {"url": "https://shop.example.com/thanks?wbraid=WB1"}},
    )
    result = destination(fake, tmp_path, http).send_conversions(conversions(sent))
    assert dict(result.rejected) == {}
    (request,) = fake.log.to("events:ingest")
    body = request.json()
    assert body["encoding"] == "HEX"
    assert body["destinations"][0]["productDestinationId"] == "700000001"
    assert body["consent"] == {
        "adUserData": "CONSENT_GRANTED",
        "adPersonalization": "CONSENT_GRANTED",
    }
    assert body["events"] == [
        {
            "transactionId": "msg-1",
            "eventTimestamp": rfc3339(sent.at),
            "eventSource": "WEB",
            "conversionValue": 59.9,
            "currency": "USD",
            "userData": {
                "userIdentifiers": [
                    {"emailAddress": sha256_hex("shopper.1@example.com")},
                    {"phoneNumber": sha256_hex("+16505550001")},
                ]
            },
            "adIdentifiers": {"gclid": "Cj0KCQ-click", "wbraid": "WB1"},
        }
    ]
    assert rfc3339(T0) == "2026-03-01T12:00:00Z"


def test_click_ids_come_from_properties_then_context() -> None:
    found = click_ids({"gbraid": "GB"}, {"gclid": "GC", "campaign": {"wbraid": "WB"}})
    assert found == {"gclid": "GC", "gbraid": "GB", "wbraid": "WB"}


def test_a_click_id_alone_is_enough_and_nothing_at_all_is_refused_here(
    fake: GoogleDataManagerFake, tmp_path: Path, http: httpx.Client
) -> None:
    by_click = conversion(1, ids={}, properties={"gclid": "Cj0"})
    nobody = conversion(2, ids={})
    result = destination(fake, tmp_path, http).send_conversions(conversions(by_click, nobody))
    assert dict(result.rejected) == {2: NO_IDENTIFIER}
    assert [e["transactionId"] for e in fake.effective_events] == ["msg-1"]
    assert "encoding" not in fake.log.to("events:ingest")[0].json()


def test_one_event_google_refuses_is_isolated_and_the_rest_delivered(
    fake: GoogleDataManagerFake, tmp_path: Path, http: httpx.Client
) -> None:
    sent = [conversion(n) for n in range(40)]
    sent[13] = conversion(13, at=CLOCK_AT.replace(year=2027))  # in the future for Google
    result = destination(fake, tmp_path, http).send_conversions(conversions(*sent))
    assert set(result.rejected) == {13}
    assert "EVENT_TIME_INVALID" in result.rejected[13]
    assert len(fake.effective_events) == 39
    assert result.stats["requests"] == len(fake.log.to("events:ingest"))


def test_2001_conversions_go_as_two_requests(
    fake: GoogleDataManagerFake, tmp_path: Path, http: httpx.Client
) -> None:
    sent = conversions(*(conversion(n, ids={"email": f"s{n}@example.com"}) for n in range(2_001)))
    result = destination(fake, tmp_path, http).send_conversions(sent)
    assert result.stats == {"sent": 2_001, "requests": 2}
    sizes = [len(r.json()["events"]) for r in fake.log.to("events:ingest")]
    assert sizes == [2_000, 1]


class TestGoogleConversionsConformance(Conformance):
    @pytest.fixture
    def subject(
        self, google_fake: GoogleDataManagerFake, http: httpx.Client, tmp_path: Path
    ) -> ConversionsSubject:
        return ConversionsSubject(google_fake, http, tmp_path)
