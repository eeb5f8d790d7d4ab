"""Meta Conversions API against the Graph API fake over real HTTP: one event per conversion with
the message id as event_id, hashed identifiers beside raw browser fields, stale and incomplete
events rejected per record while the rest of the batch is still sent."""

from __future__ import annotations

import re
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
from cohortsync.destinations.meta_capi import MetaCapiConfig, MetaCapiDestination
from tests.destinations.conformance import CLOCK_AT, Conformance, R, Records, Subject
from tests.fakes.meta import MetaFake

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15"
EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+\.[a-z]{2,}", re.IGNORECASE)


@pytest.fixture
def meta(meta_fake: MetaFake) -> MetaFake:
    """The Graph fake with its clock at the test's `NOW` (the 7-day rule reads it), refusing an
    `external_id` that is not hashed."""
    meta_fake.now = NOW
    meta_fake.hashed_external_ids = True
    return meta_fake


def destination(
    fake: MetaFake, tmp_path: Path, http: httpx.Client, **overrides: Any
) -> MetaCapiDestination:
    """The destination pointed at the fake."""
    settings: dict[str, Any] = {
        "access_token": fake.token,
        "pixel_id": fake.pixel_id,
        "api_url": fake.url,
        **overrides,
    }
    context = DestinationContext(name="meta", project_dir=tmp_path, http=http, clock=lambda: NOW)
    return MetaCapiDestination(MetaCapiConfig(**settings), context)


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


def purchase(n: int, at: datetime = NOW, **fields: Any) -> Conversion:
    """An order from a website visitor, as the conversion pipeline hands it over."""
    properties = {"order_id": f"o-{n}", "fbp": "fb.1.1700000000000.123456789"}
    return RECORDS.conversion(n, at=at, **{"currency": "usd", "properties": properties, **fields})


def test_conversion_becomes_one_event_with_message_id(
    meta: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """event_id is the message id; identifiers hashed; IP, user agent, fbp sent as they are."""
    result = destination(meta, tmp_path, http).send_conversions(batch(purchase(1)))

    assert result.rejected == {}
    assert result.stats["events_received"] == 1
    (event,) = meta.received_events
    assert event["event_name"] == "Purchase"
    assert event["event_id"] == "msg-1"
    assert event["event_time"] == int(NOW.timestamp())
    assert event["action_source"] == "website"
    assert event["event_source_url"] == "https://shop.example.com/checkout/thanks"
    assert event["custom_data"] == {"value": 59.9, "currency": "USD"}
    assert event["user_data"] == {
        "em": [sha256_hex("buyer.1@example.com")],
        "ph": ["e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"],
        "external_id": [sha256_hex("u-1")],
        "client_ip_address": "203.0.113.7",
        "client_user_agent": UA,
        "fbp": "fb.1.1700000000000.123456789",
    }


def test_too_old_events_are_rejected_and_fresh_ones_still_sent(
    meta: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """One event older than 7 days would fail Meta's whole request: it is rejected as too_old
    and the fresh events of the batch are delivered (reliability D-3)."""
    stale = purchase(2, at=NOW - timedelta(days=8))
    edge = purchase(3, at=NOW - timedelta(days=7))
    result = destination(meta, tmp_path, http).send_conversions(
        batch(purchase(1), stale, edge, purchase(4, at=NOW - timedelta(days=6)))
    )

    assert set(result.rejected) == {2, 3}
    assert result.rejected[2].startswith("too_old: ")
    assert [e["event_id"] for e in meta.received_events] == ["msg-1", "msg-4"]


def test_all_stale_batch_makes_no_request(
    meta: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """Nothing left to send: no request at all."""
    result = destination(meta, tmp_path, http).send_conversions(
        batch(purchase(1, at=NOW - timedelta(days=30)))
    )
    assert list(result.rejected) == [1]
    assert len(meta.log) == 0


def test_website_events_need_url_and_user_agent(
    meta: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """A website event without page URL or user agent is rejected with how to fix it; with
    action_source system_generated the same conversion is accepted."""
    bare = purchase(1, context={})
    no_agent = purchase(2, context={"page": {"url": "https://shop.example.com/"}})
    result = destination(meta, tmp_path, http).send_conversions(batch(bare, no_agent, purchase(3)))

    assert set(result.rejected) == {1, 2}
    assert "context.page.url and context.userAgent" in result.rejected[1]
    assert "action_source" in result.rejected[1]
    assert [e["event_id"] for e in meta.received_events] == ["msg-3"]

    server_side = destination(meta, tmp_path, http, action_source="system_generated")
    assert server_side.send_conversions(batch(bare, batch_id="c-2")).rejected == {}
    assert meta.received_events[-1]["action_source"] == "system_generated"


def test_unmatchable_and_valueless_purchases_are_rejected(
    meta: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """No customer information, or a Purchase without value and currency, never reaches Meta."""
    anonymous = purchase(1, identifiers={"anonymous_id": "a-1"}, properties={}, context={})
    free = purchase(2, value=None)
    dest = destination(meta, tmp_path, http, action_source="system_generated")
    result = dest.send_conversions(batch(anonymous, free, purchase(3)))

    assert "no customer information" in result.rejected[1]
    assert "value and a currency" in result.rejected[2]
    assert [e["event_id"] for e in meta.received_events] == ["msg-3"]


def test_fbc_from_context_and_properties(
    meta: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """fbc/fbp are read from context first, then properties, and are never hashed."""
    conversion = purchase(
        1,
        properties={"fbc": "fb.1.1700000000000.IwAR-click"},
        context={
            "userAgent": UA,
            "page": {"url": "https://shop.example.com/"},
            "fbp": "fb.1.1700000000000.42",
        },
    )
    destination(meta, tmp_path, http).send_conversions(batch(conversion))
    user_data = meta.received_events[0]["user_data"]
    assert user_data["fbc"] == "fb.1.1700000000000.IwAR-click"
    assert user_data["fbp"] == "fb.1.1700000000000.42"


def test_1500_conversions_go_as_two_requests(
    meta: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """At most 1,000 events per request."""
    result = destination(meta, tmp_path, http).send_conversions(
        batch(*(purchase(n) for n in range(1_500)))
    )
    sizes = [len(item.json()["data"]) for item in meta.log.to("/events")]
    assert sizes == [1_000, 500]
    assert result.stats["events_received"] == 1_500


def test_resend_is_identical_and_counted_once(
    meta: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """A retried batch sends the same bytes; Meta's event_id dedupe keeps one of each."""
    sent = batch(purchase(1), purchase(2))
    destination(meta, tmp_path, http).send_conversions(sent)
    destination(meta, tmp_path, http).send_conversions(sent)

    first, second = (item.body for item in meta.log.to("/events"))
    assert first == second
    assert len(meta.received_events) == 4
    assert len(meta.effective_events) == 2


def test_no_raw_email_or_phone_leaves_the_process(
    meta: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """Nothing in any request (URL, headers, body) is a raw email or phone."""
    destination(meta, tmp_path, http).send_conversions(batch(*(purchase(n) for n in range(20))))
    for item in meta.log:
        text = item.text()
        assert not EMAIL_RE.search(text)
        assert "+16505551212" not in text
        assert "16505551212" not in text


PAGE = (
    "https://shop.example.com/checkout/thanks?email=Ann.Lee%2Bvip%40Example.com"
    "&phone=(650)%20555-1212&tel=%2B16505551212&utm_source=fb&fbclid=IwAR1x#ann.lee@example.com"
)
RAW = ("ann.lee", "6505551212", "650) 555-1212", "16505551212")


def page(url: str) -> dict[str, Any]:
    """A browser context on the page at `url`."""
    return {"ip": "203.0.113.7", "userAgent": UA, "page": {"url": url}}


def test_event_source_url_leaves_out_query_and_fragment(
    meta: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """Shops put emails and phones in the thank-you page's query string: by default
    event_source_url is the page without query and fragment, and no request holds them."""
    destination(meta, tmp_path, http).send_conversions(batch(purchase(1, context=page(PAGE))))

    (event,) = meta.received_events
    assert event["event_source_url"] == "https://shop.example.com/checkout/thanks"
    for raw in RAW:
        assert not meta.log.find(raw), raw


def test_keep_url_query_keeps_the_parameters_without_identifiers(
    meta: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """`keep_url_query: true` keeps UTM tags and `fbclid`, and drops every parameter holding
    an email or phone, in any form (URL-encoded, national)."""
    dest = destination(meta, tmp_path, http, keep_url_query=True)
    dest.send_conversions(batch(purchase(1, context=page(PAGE))))

    (event,) = meta.received_events
    assert event["event_source_url"] == (
        "https://shop.example.com/checkout/thanks?utm_source=fb&fbclid=IwAR1x"
    )
    for raw in RAW:
        assert not meta.log.find(raw), raw


@pytest.mark.parametrize(
    ("url", "sent"),
    [
        ("https://shop.example.com/account/ann%40example.com/orders", "/account/"),
        ("https://shop.example.com/u/6505551212/thanks", "/u/"),
        ("https://ann:s3cret@shop.example.com/thanks", "/thanks"),
    ],
)
def test_event_source_url_drops_user_info_and_a_path_holding_an_identifier(
    meta: MetaFake, tmp_path: Path, http: httpx.Client, url: str, sent: str
) -> None:
    """A path segment holding an email or phone cuts the path there; user info never goes."""
    destination(meta, tmp_path, http).send_conversions(batch(purchase(1, context=page(url))))
    assert meta.received_events[0]["event_source_url"] == "https://shop.example.com" + sent
    assert not meta.log.find("s3cret")
    assert not meta.log.find("6505551212")
    assert not meta.log.find("ann@example.com")


def test_test_event_code_is_sent(meta: MetaFake, tmp_path: Path, http: httpx.Client) -> None:
    """`test_event_code` goes at the top of the request body."""
    destination(meta, tmp_path, http, test_event_code="TEST123").send_conversions(
        batch(purchase(1))
    )
    assert meta.log.to("/events")[0].json()["test_event_code"] == "TEST123"


def test_dry_run_sends_nothing(meta: MetaFake, tmp_path: Path, http: httpx.Client) -> None:
    """The dry run shows the events request, token redacted, without any call."""
    described = destination(meta, tmp_path, http).dry_run(batch(purchase(1)))
    assert len(meta.log) == 0
    assert described[0]["method"] == "POST"
    assert f"/v25.0/{meta.pixel_id}/events" in described[0]["url"]
    assert meta.token not in str(described)
    assert described[0]["body"]["data"][0]["event_id"] == "msg-1"


def test_graph_errors_map_to_retry_auth_and_permanent(
    meta: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """Throttles and 5xx are transient, a bad token pauses, an unknown pixel is permanent."""
    dest = destination(meta, tmp_path, http)
    meta.throttle(4, times=1, status=400, regain_minutes=2)
    with pytest.raises(TransientError) as caught:
        dest.send_conversions(batch(purchase(1)))
    assert caught.value.retry_after == 120
    meta.fail(500)
    with pytest.raises(TransientError):
        dest.send_conversions(batch(purchase(1)))
    with pytest.raises(AuthError, match="code 190"):
        destination(meta, tmp_path, http, access_token="EAAwrong").send_conversions(
            batch(purchase(1))
        )
    with pytest.raises(PermanentError, match="code 100"):
        destination(meta, tmp_path, http, pixel_id="111").send_conversions(batch(purchase(1)))


def test_pixel_id_must_be_a_number() -> None:
    """A pixel id that is not a number is refused with what it should look like."""
    with pytest.raises(ValueError, match="pixel_id must be the pixel"):
        MetaCapiConfig(access_token="t", pixel_id="my-pixel")


# --- the destination conformance suite -------------------------------------------------------


class MetaCapiSubject(Subject):
    """The destination against the Graph fake, both clocks at the kit's `CLOCK_AT`."""

    def __init__(self, fake: MetaFake, http: httpx.Client, tmp_path: Path) -> None:
        self.fake = fake
        fake.now = CLOCK_AT
        settings = {"access_token": fake.token, "pixel_id": fake.pixel_id, "api_url": fake.url}
        context = DestinationContext("meta", tmp_path, http, lambda: CLOCK_AT)
        self.destination = MetaCapiDestination(MetaCapiConfig(**settings), context)

    def members(self, audience: str) -> set[str]:
        return set()  # conversions only: no audience ever reaches it

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
        """Older than Meta's 7 days: one such event would fail the whole request."""
        return replace(record, at=CLOCK_AT - timedelta(days=8))


class TestMetaCapiConformance(Conformance):
    @pytest.fixture
    def subject(self, meta_fake: MetaFake, http: httpx.Client, tmp_path: Path) -> MetaCapiSubject:
        return MetaCapiSubject(meta_fake, http, tmp_path)
