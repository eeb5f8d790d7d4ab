"""The Segment destination against a real second cohortsync server and a scripted receiver.

The live server speaks the Segment HTTP API and deduplicates on `messageId`, like Segment: what
it stores is what a Segment workspace would have received.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cohortsync.destinations.base import (
    AuthError,
    Batch,
    Change,
    DestinationContext,
    PermanentError,
    TransientError,
)
from cohortsync.destinations.http import json_body
from cohortsync.destinations.segment import SegmentConfig, SegmentDestination
from cohortsync.engine import Engine
from tests.conftest import WRITE_KEY, LiveServer
from tests.destinations.conformance import CLOCK_AT, Conformance, Records, Subject
from tests.destinations.receiver import Receiver, Reply, client, running
from tests.fakes.segment import SegmentFake

AUDIENCE = "cio_cart_abandon_6h"
T0 = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=250_000)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with client() as opened:
        yield opened


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running(Receiver()) as served:
        yield served


def make(
    url: str, http: httpx.Client, tmp_path: Path, write_key: str = WRITE_KEY, name: str = "seg"
) -> SegmentDestination:
    config = SegmentConfig.model_validate({"type": "segment", "url": url, "write_key": write_key})
    context = DestinationContext(
        name=name, project_dir=tmp_path, http=http, clock=lambda: datetime.now(UTC)
    )
    return SegmentDestination(config, context)


RECORDS = Records(start=T0, profile="prof-{n}", identifiers=None)
change = RECORDS.change
batch = RECORDS.batch


BATCH = batch(
    change(1, user_id="u1", email="p1@example.com"),
    change(2, anonymous_id="anon-2"),
    change(3, "remove", user_id="u3"),
    change(4, holdout=True, user_id="u4"),
    batch_id="b-1",
)


def stored(engine: Engine) -> list[dict[str, Any]]:
    """Every stored event, decoded, in message-id order."""
    columns = ("message_id", "type", "event", "user_id", "anonymous_id", "properties", "traits")
    rows = engine.store.query(  # type: ignore[attr-defined]
        f"SELECT {', '.join(columns)}, epoch_us(timestamp) FROM events ORDER BY message_id"
    )
    events = []
    for row in rows:
        event = dict(zip((*columns, "timestamp_us"), row, strict=True))
        for column in ("properties", "traits"):
            event[column] = json.loads(event[column]) if event[column] else None
        events.append(event)
    return events


def micros(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000)


# --- against a real cohortsync server ------------------------------------------------------------


def test_changes_arrive_as_engage_events_once_each_even_when_resent(
    live_server: LiveServer, engine: Engine, http: httpx.Client, tmp_path: Path
) -> None:
    segment = make(live_server.url, http, tmp_path)
    result = segment.apply(BATCH)
    assert result.rejected == {}
    assert result.stats == {"sent": 4, "messages": 8, "requests": 1}
    first = stored(engine)
    again = segment.apply(BATCH)
    assert again.rejected == {}
    assert stored(engine) == first
    assert len(first) == 8
    assert len({e["message_id"] for e in first}) == 8

    by_kind = {(e["type"], e["user_id"] or e["anonymous_id"]): e for e in first}
    entered = by_kind[("track", "u1")]
    assert entered["event"] == "Audience Entered"
    assert entered["properties"] == {"audience_key": AUDIENCE, AUDIENCE: True, "holdout": False}
    assert entered["timestamp_us"] == micros(T0 + timedelta(seconds=1))
    assert by_kind[("identify", "u1")]["traits"] == {AUDIENCE: True, "email": "p1@example.com"}
    assert by_kind[("track", "anon-2")]["event"] == "Audience Entered"
    assert by_kind[("identify", "anon-2")]["traits"] == {AUDIENCE: True}
    exited = by_kind[("track", "u3")]
    assert exited["event"] == "Audience Exited"
    assert exited["properties"] == {"audience_key": AUDIENCE, AUDIENCE: False, "holdout": False}
    assert by_kind[("identify", "u3")]["traits"] == {AUDIENCE: False}
    assert by_kind[("track", "u4")]["properties"]["holdout"] is True
    assert by_kind[("identify", "u4")]["traits"] == {AUDIENCE: True, f"{AUDIENCE}_holdout": True}

    view = engine.find_profile("email:p1@example.com")
    assert ("user_id", "u1") in {(i["kind"], i["value"]) for i in view.identifiers}


def test_a_batch_too_large_for_one_request_is_split_and_stored_once(
    live_server: LiveServer, engine: Engine, http: httpx.Client, tmp_path: Path
) -> None:
    changes = tuple(
        change(i, user_id=f"user-{i:05d}-" + "x" * 200, email=f"p{i}@example.com")
        for i in range(1, 1001)
    )
    big = batch(*changes, batch_id="b-big")
    segment = make(live_server.url, http, tmp_path)
    result = segment.apply(big)
    assert result.rejected == {}
    assert result.stats["requests"] >= 2
    assert result.stats["messages"] == 2000
    segment.apply(big)
    assert engine.stats()["events"]["total"] == 2000


def test_conversion_arrives_once_under_its_source_message_id(
    live_server: LiveServer, engine: Engine, http: httpx.Client, tmp_path: Path
) -> None:
    conversion = RECORDS.conversion(
        9,
        message_id="order-msg-9",
        at=T0,
        ids={"user_id": "u9", "email": "p9@example.com"},
        properties={"order_id": "o-9"},
        context={},
    )
    sent = RECORDS.conversions(conversion, batch_id="c-1")
    segment = make(live_server.url, http, tmp_path)
    assert segment.send_conversions(sent).stats["sent"] == 1
    segment.send_conversions(sent)
    [event] = stored(engine)
    assert event["message_id"] == "order-msg-9"
    assert (event["type"], event["event"], event["user_id"]) == ("track", "Purchase", "u9")
    assert event["properties"] == {
        "order_id": "o-9",
        "value": 59.9,
        "revenue": 59.9,
        "currency": "USD",
    }
    assert event["timestamp_us"] == micros(T0)


def test_change_without_user_or_anonymous_id_is_rejected_and_not_sent(
    live_server: LiveServer, engine: Engine, http: httpx.Client, tmp_path: Path
) -> None:
    sent = batch(change(1, user_id="u1"), change(2, email="p2@example.com"), batch_id="b-2")
    result = make(live_server.url, http, tmp_path).apply(sent)
    assert result.rejected == {
        2: "no user_id or anonymous_id: Segment needs one of them on every message"
    }
    assert {e["user_id"] for e in stored(engine)} == {"u1"}


def test_a_message_the_receiver_quarantines_is_reported_rejected(
    live_server: LiveServer, engine: Engine, http: httpx.Client, tmp_path: Path
) -> None:
    bare = {"at": T0, "value": None, "currency": None, "properties": {}, "context": {}}
    nameless = RECORDS.conversion(1, message_id="m-1", name="", ids={"user_id": "u1"}, **bare)
    named = RECORDS.conversion(2, message_id="m-2", ids={"user_id": "u2"}, **bare)
    result = make(live_server.url, http, tmp_path).send_conversions(
        RECORDS.conversions(nameless, named, batch_id="c-2")
    )
    assert list(result.rejected) == [1]
    assert "missing_event" in result.rejected[1]
    assert [e["message_id"] for e in stored(engine)] == ["m-2"]


def test_wrong_write_key_is_an_auth_error(
    live_server: LiveServer, engine: Engine, http: httpx.Client, tmp_path: Path
) -> None:
    with pytest.raises(AuthError, match="HTTP 401"):
        make(live_server.url, http, tmp_path, write_key="wk_wrong").apply(BATCH)
    assert stored(engine) == []


# --- the wire, against a scripted receiver ------------------------------------------------------


def test_requests_use_basic_auth_with_the_write_key_and_an_empty_password(
    receiver: Receiver, http: httpx.Client, tmp_path: Path
) -> None:
    make(receiver.url, http, tmp_path, write_key="WRITE_KEY_TEST").apply(BATCH)
    [request] = receiver.received
    assert (request.method, request.path) == ("POST", "/v1/batch")
    assert request.headers["authorization"] == "Basic V1JJVEVfS0VZX1RFU1Q6"
    body = json.loads(request.body)
    assert "writeKey" not in body
    assert "sentAt" not in body
    assert body["context"] == {"library": {"name": "cohortsync", "version": "0.1.0"}}


def test_a_resend_is_byte_for_byte_identical(
    receiver: Receiver, http: httpx.Client, tmp_path: Path
) -> None:
    segment = make(receiver.url, http, tmp_path)
    receiver.reply(Reply(502))
    with pytest.raises(TransientError):
        segment.apply(BATCH)
    segment.apply(BATCH)
    first, second = receiver.received
    assert first.body == second.body


def test_message_ids_are_stable_and_belong_to_the_destination(
    http: httpx.Client, tmp_path: Path
) -> None:
    one = make("https://api.segment.io", http, tmp_path, name="seg")
    other = make("https://api.segment.io", http, tmp_path, name="seg_eu")
    ids = [m["messageId"] for m in one.messages(BATCH)]
    assert ids == [m["messageId"] for m in one.messages(BATCH)]
    assert len(set(ids)) == 8
    assert all(len(i) < 100 for i in ids)
    assert not set(ids) & {m["messageId"] for m in other.messages(BATCH)}


def test_split_requests_respect_segment_limits(
    receiver: Receiver, http: httpx.Client, tmp_path: Path
) -> None:
    changes = tuple(change(i, user_id="u" * 100 + str(i)) for i in range(1, 1001))
    make(receiver.url, http, tmp_path).apply(batch(*changes, batch_id="b-big"))
    assert len(receiver.received) >= 2
    seen: list[str] = []
    for request in receiver.received:
        assert len(request.body) < 500 * 1024
        messages = json.loads(request.body)["batch"]
        assert len(messages) <= 2500
        seen += [m["messageId"] for m in messages]
    assert len(seen) == len(set(seen)) == 2000


def test_429_with_retry_after_is_transient_and_says_when(
    receiver: Receiver, http: httpx.Client, tmp_path: Path
) -> None:
    receiver.reply(Reply(429, b'{"code": "rate_limited"}', {"Retry-After": "12"}))
    with pytest.raises(TransientError, match="HTTP 429") as caught:
        make(receiver.url, http, tmp_path).apply(BATCH)
    assert caught.value.retry_after == 12.0


def test_500_is_transient(receiver: Receiver, http: httpx.Client, tmp_path: Path) -> None:
    receiver.reply(Reply(500))
    with pytest.raises(TransientError, match="HTTP 500"):
        make(receiver.url, http, tmp_path).apply(BATCH)


def test_timeout_is_transient(receiver: Receiver, tmp_path: Path) -> None:
    receiver.reply(Reply(200, delay=1.0))
    with httpx.Client(timeout=0.2) as impatient, pytest.raises(TransientError, match="no answer"):
        make(receiver.url, impatient, tmp_path).apply(BATCH)


def test_400_is_permanent_without_pii_in_the_message(
    receiver: Receiver, http: httpx.Client, tmp_path: Path
) -> None:
    receiver.reply(Reply(400, b'{"code": "invalid", "message": "bad p1@example.com"}'))
    with pytest.raises(PermanentError, match="HTTP 400") as caught:
        make(receiver.url, http, tmp_path).apply(BATCH)
    assert "p1@example.com" not in str(caught.value)


def test_dry_run_shows_the_requests_without_the_write_key_and_sends_nothing(
    receiver: Receiver, http: httpx.Client, tmp_path: Path
) -> None:
    segment = make(receiver.url, http, tmp_path, write_key="WRITE_KEY_TEST")
    [described] = segment.dry_run(BATCH)
    assert receiver.received == []
    assert described["url"] == f"{receiver.url}/v1/batch"
    assert described["headers"]["Authorization"] == "***"
    assert described["body"]["batch"] == segment.messages(BATCH)
    text = json.dumps(described)
    assert "WRITE_KEY_TEST" not in text
    assert "V1JJVEVfS0VZX1RFU1Q6" not in text


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"write_key": " "}, "write_key is empty"),
        ({"write_key": "k", "url": "api.segment.io"}, "base address"),
        ({"write_key": "k", "url": "https://api.segment.io/v1/batch"}, "adds /v1/batch"),
        ({}, "write_key"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        SegmentConfig.model_validate(settings)


def test_default_url_is_segments_api() -> None:
    config = SegmentConfig.model_validate({"write_key": "k"})
    assert config.url == "https://api.segment.io"
    assert "'k'" not in repr(config)


# --- M-3: the same batch always gives the same requests, split within Segment's limits ---------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(1, 12_000), min_size=1, max_size=120),
    anonymous=st.booleans(),
)
def test_requests_are_a_deterministic_split_within_limits(
    sizes: list[int], anonymous: bool
) -> None:
    kind = "anonymous_id" if anonymous else "user_id"
    changes = tuple(
        Change(i, AUDIENCE, f"prof-{i}", "add", False, T0, {kind: f"{i}-" + "x" * size})
        for i, size in enumerate(sizes)
    )
    batch = Batch("b-p", AUDIENCE, changes)
    with httpx.Client() as http:
        segment = make("https://api.segment.io", http, Path("."))
        first = segment.dry_run(batch)
        second = segment.dry_run(batch)
        expected = segment.messages(batch)
    assert first == second
    sent = []
    for request in first:
        assert len(json_body(request["body"])) <= 475_000
        assert len(request["body"]["batch"]) <= 2_500
        sent += request["body"]["batch"]
    assert sent == expected
    assert len(expected) == 2 * len(sizes)


# --- the destination conformance suite -------------------------------------------------------


class SegmentSubject(Subject):
    """The destination against the Segment fake; a member is a user whose identify set the
    audience's trait true last."""

    def __init__(self, fake: SegmentFake, http: httpx.Client, tmp_path: Path) -> None:
        self.fake = fake
        config = SegmentConfig.model_validate({"url": fake.url, "write_key": fake.write_key})
        context = DestinationContext("seg", tmp_path, http, lambda: CLOCK_AT)
        self.destination = SegmentDestination(config, context)

    def members(self, audience: str) -> set[str]:
        held: set[str] = set()
        for message in self.fake.messages:
            traits = message.get("traits") or {}
            if message["type"] == "identify" and audience in traits:
                who = message.get("userId") or message["anonymousId"]
                if traits[audience]:
                    held.add(who)
                else:
                    held.discard(who)
        return held

    def key(self, record: Change) -> str:
        return record.identifiers.get("user_id") or record.identifiers["anonymous_id"]

    def conversions(self) -> Counter[str]:
        audience_events = {"Audience Entered", "Audience Exited"}
        return Counter(
            m["messageId"]
            for m in self.fake.messages
            if m["type"] == "track" and m["event"] not in audience_events
        )

    def state(self) -> object:
        return self.fake.messages

    def fail(self, status: int, retry_after: float | None = None) -> None:
        self.fake.fail(status, retry_after=retry_after)

    def recover(self) -> None:
        self.fake.faults.clear()


class TestSegmentConformance(Conformance):
    @pytest.fixture
    def subject(
        self, segment_fake: SegmentFake, http: httpx.Client, tmp_path: Path
    ) -> SegmentSubject:
        return SegmentSubject(segment_fake, http, tmp_path)
