"""The webhook destination over real HTTP: signed Standard Webhooks a receiver trusts, dedupes."""

from __future__ import annotations

import base64
import hashlib
import hmac
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
from cohortsync.destinations.signing import generate_secret, verify
from cohortsync.destinations.webhook import WebhookConfig, WebhookDestination
from tests.destinations.conformance import Conformance, Records, Subject
from tests.destinations.receiver import Receiver, Reply, client, running
from tests.fakes.webhook import WebhookFake

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0 + timedelta(minutes=5)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running(Receiver()) as served:
        yield served


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with client() as opened:
        yield opened


def make(
    url: str, clock: Clock, http: httpx.Client, tmp_path: Path, **settings: Any
) -> WebhookDestination:
    config = WebhookConfig.model_validate(
        {"type": "webhook", "url": url, "secret": SECRET, **settings}
    )
    context = DestinationContext(name="hooks", project_dir=tmp_path, http=http, clock=clock)
    return WebhookDestination(config, context)


@pytest.fixture
def hook(
    receiver: Receiver, clock: Clock, http: httpx.Client, tmp_path: Path
) -> WebhookDestination:
    return make(receiver.url + "/cohortsync", clock, http, tmp_path)


RECORDS = Records(
    start=T0,
    profile="prof-{n}",
    identifiers=lambda n, _: {"email": f"p{n}@example.com", "user_id": f"u{n}"},
)
change = RECORDS.change
BATCH = RECORDS.batch(
    change(1), change(2, "remove"), change(3, holdout=True, phone="+14155550134"), batch_id="b-42"
)


def test_batch_is_posted_as_one_audience_changes_webhook(
    hook: WebhookDestination, receiver: Receiver
) -> None:
    result = hook.apply(BATCH)
    assert result.rejected == {}
    assert result.stats == {"sent": 3}
    [request] = receiver.received
    assert (request.method, request.path) == ("POST", "/cohortsync")
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body) == {
        "type": "audience.changes",
        "timestamp": "2026-03-01T12:00:03.000000Z",
        "data": {
            "batch_id": "b-42",
            "audience": "cio_cart_abandon_6h",
            "changes": [
                {
                    "change_id": 1,
                    "operation": "add",
                    "profile_id": "prof-1",
                    "holdout": False,
                    "at": "2026-03-01T12:00:01.000000Z",
                    "identifiers": {"email": "p1@example.com", "user_id": "u1"},
                },
                {
                    "change_id": 2,
                    "operation": "remove",
                    "profile_id": "prof-2",
                    "holdout": False,
                    "at": "2026-03-01T12:00:02.000000Z",
                    "identifiers": {"email": "p2@example.com", "user_id": "u2"},
                },
                {
                    "change_id": 3,
                    "operation": "add",
                    "profile_id": "prof-3",
                    "holdout": True,
                    "at": "2026-03-01T12:00:03.000000Z",
                    "identifiers": {"phone": "+14155550134"},
                },
            ],
        },
    }


def test_signature_verifies_with_the_package_helper_and_an_independent_hmac(
    hook: WebhookDestination, receiver: Receiver, clock: Clock
) -> None:
    hook.apply(BATCH)
    [request] = receiver.received
    assert request.headers["webhook-id"] == "b-42"
    assert request.headers["webhook-timestamp"] == str(int(clock.now.timestamp()))
    verify(SECRET, request.headers, request.body, now=int(clock.now.timestamp()))
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = f"b-42.{request.headers['webhook-timestamp']}.".encode() + request.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert request.headers["webhook-signature"] == f"v1,{expected}"


def test_a_retry_resends_identical_bytes_under_the_same_id_freshly_signed(
    hook: WebhookDestination, receiver: Receiver, clock: Clock
) -> None:
    receiver.reply(Reply(503))
    with pytest.raises(TransientError):
        hook.apply(BATCH)
    clock.now += timedelta(minutes=30)
    hook.apply(BATCH)
    first, second = receiver.received
    assert second.body == first.body
    assert second.headers["webhook-id"] == first.headers["webhook-id"] == "b-42"
    assert (
        int(second.headers["webhook-timestamp"]) - int(first.headers["webhook-timestamp"]) == 1800
    )
    assert second.headers["webhook-signature"] != first.headers["webhook-signature"]
    verify(SECRET, second.headers, second.body, now=int(clock.now.timestamp()))


def test_conversions_are_posted_as_a_conversions_webhook(
    hook: WebhookDestination, receiver: Receiver
) -> None:
    conversion = RECORDS.conversion(
        7,
        message_id="msg-order-7",
        at=T0,
        profile="prof-1",
        ids={"email": "p1@example.com"},
        value=42.5,
        currency="EUR",
        properties={"order_id": "o-7"},
        context={},
    )
    result = hook.send_conversions(RECORDS.conversions(conversion, batch_id="c-1"))
    assert result.stats == {"sent": 1}
    [request] = receiver.received
    assert request.headers["webhook-id"] == "c-1"
    body = json.loads(request.body)
    assert body["type"] == "conversions"
    assert body["data"] == {
        "batch_id": "c-1",
        "conversions": [
            {
                "conversion_id": 7,
                "message_id": "msg-order-7",
                "name": "Purchase",
                "event": "order_completed",
                "at": "2026-03-01T12:00:00.000000Z",
                "profile_id": "prof-1",
                "identifiers": {"email": "p1@example.com"},
                "value": 42.5,
                "currency": "EUR",
                "properties": {"order_id": "o-7"},
                "context": {},
            }
        ],
    }


def test_change_without_any_identifier_is_rejected_and_not_sent(
    hook: WebhookDestination, receiver: Receiver
) -> None:
    bare = change(5, at=T0, device_id="d1")
    result = hook.apply(RECORDS.batch(change(1), bare, batch_id="b-5"))
    assert result.rejected == {5: "no user_id, email, phone or anonymous_id to send"}
    [request] = receiver.received
    assert [c["change_id"] for c in json.loads(request.body)["data"]["changes"]] == [1]
    hook.apply(RECORDS.batch(bare, batch_id="b-6"))
    assert len(receiver.received) == 1


def test_extra_headers_are_sent(
    receiver: Receiver, clock: Clock, http: httpx.Client, tmp_path: Path
) -> None:
    hook = make(receiver.url, clock, http, tmp_path, headers={"X-Team": "retention"})
    hook.apply(BATCH)
    assert receiver.received[0].headers["x-team"] == "retention"


def test_429_with_retry_after_is_transient_and_says_when(
    hook: WebhookDestination, receiver: Receiver
) -> None:
    receiver.reply(Reply(429, b'{"error": "slow down"}', {"Retry-After": "7"}))
    with pytest.raises(TransientError, match="HTTP 429") as caught:
        hook.apply(BATCH)
    assert caught.value.retry_after == 7.0


def test_500_is_transient(hook: WebhookDestination, receiver: Receiver) -> None:
    receiver.reply(Reply(500, b"oops"))
    with pytest.raises(TransientError, match="HTTP 500"):
        hook.apply(BATCH)


def test_timeout_is_transient(
    receiver: Receiver, clock: Clock, http: httpx.Client, tmp_path: Path
) -> None:
    hook = make(receiver.url, clock, http, tmp_path, timeout=0.2)
    receiver.reply(Reply(200, delay=1.0))
    with pytest.raises(TransientError, match=r"no answer within 0\.2 s"):
        hook.apply(BATCH)


def test_connection_refused_is_transient(clock: Clock, http: httpx.Client, tmp_path: Path) -> None:
    from tests.conftest import free_port

    hook = make(f"http://127.0.0.1:{free_port()}/", clock, http, tmp_path)
    with pytest.raises(TransientError, match="connection failed"):
        hook.apply(BATCH)


def test_401_is_an_auth_error(hook: WebhookDestination, receiver: Receiver) -> None:
    receiver.reply(Reply(401, b'{"error": "bad signature"}'))
    with pytest.raises(AuthError, match="HTTP 401"):
        hook.apply(BATCH)


def test_400_is_permanent_and_its_excerpt_has_no_pii(
    hook: WebhookDestination, receiver: Receiver
) -> None:
    receiver.reply(Reply(400, b'{"error": "unknown profile p1@example.com"}'))
    with pytest.raises(PermanentError, match="HTTP 400") as caught:
        hook.apply(BATCH)
    assert "p1@example.com" not in str(caught.value)


def test_410_gone_is_permanent_and_says_the_endpoint_asked_to_be_disabled(
    hook: WebhookDestination, receiver: Receiver
) -> None:
    receiver.reply(Reply(410))
    with pytest.raises(PermanentError, match="asked to be disabled"):
        hook.apply(BATCH)


def test_redirect_is_not_followed(hook: WebhookDestination, receiver: Receiver) -> None:
    receiver.reply(Reply(302, headers={"Location": receiver.url + "/elsewhere"}))
    with pytest.raises(PermanentError, match="redirect, not followed"):
        hook.apply(BATCH)
    assert [r.path for r in receiver.received] == ["/cohortsync"]


def test_dry_run_describes_the_request_sends_nothing_and_hides_secrets(
    receiver: Receiver, clock: Clock, http: httpx.Client, tmp_path: Path
) -> None:
    url = receiver.url.replace("http://", "http://user:pw@") + "/in?token=tok_abc"
    hook = make(url, clock, http, tmp_path, headers={"Authorization": "Bearer tok_xyz"})
    [described] = hook.dry_run(BATCH)
    assert receiver.received == []
    assert described["method"] == "POST"
    assert described["url"] == receiver.url.replace("http://", "http://***@") + "/in?token=***"
    assert described["headers"]["Authorization"] == "***"
    assert described["headers"]["webhook-id"] == "b-42"
    assert described["body"] == json.loads(hook.body(BATCH))
    text = json.dumps(described)
    for secret in (SECRET, SECRET.removeprefix("whsec_"), "tok_xyz", "tok_abc", "pw"):
        assert secret not in text


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "starts with 'whsec_'"),
        ("whsec_%%%", "not valid base64"),
    ],
)
def test_bad_secret_is_a_config_error_saying_how_to_generate_one(secret: str, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem) as caught:
        WebhookConfig.model_validate({"url": "https://hooks.example.com", "secret": secret})
    assert "generate_secret()" in str(caught.value)
    assert secret not in str(caught.value)


def test_generated_secret_is_accepted_and_hidden_in_the_config_repr() -> None:
    secret = generate_secret()
    config = WebhookConfig.model_validate({"url": "https://hooks.example.com", "secret": secret})
    assert secret not in repr(config)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"url": "ftp://hooks.example.com"}, "http:// or https://"),
        ({"headers": {"webhook-id": "x"}}, "set by cohortsync"),
        ({"headers": {"bad header": "x"}}, "not a valid HTTP header name"),
        ({"timeout": 0}, "greater than 0"),
        ({"retries": 3}, "Extra inputs"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        WebhookConfig.model_validate({"url": "https://h.example.com", "secret": SECRET, **settings})


# --- against the Standard Webhooks contract fake ------------------------------------------------


def fake_hook(
    fake: WebhookFake, clock: Clock, http: httpx.Client, tmp_path: Path
) -> WebhookDestination:
    config = WebhookConfig.model_validate({"url": fake.url, "secret": fake.secret, "timeout": 1})
    fake.now = clock.now
    context = DestinationContext(name="hooks", project_dir=tmp_path, http=http, clock=clock)
    return WebhookDestination(config, context)


def test_a_standard_webhooks_receiver_verifies_and_applies_the_batch_once(
    webhook_fake: WebhookFake, clock: Clock, http: httpx.Client, tmp_path: Path
) -> None:
    hook = fake_hook(webhook_fake, clock, http, tmp_path)
    hook.apply(BATCH)
    hook.apply(BATCH)
    assert webhook_fake.rejections == []
    [(msg_id, body)] = webhook_fake.applied
    assert msg_id == "b-42"
    assert [c["change_id"] for c in body["data"]["changes"]] == [1, 2, 3]
    assert webhook_fake.duplicates == 1


def test_a_retry_long_after_the_first_attempt_is_re_signed_and_accepted(
    webhook_fake: WebhookFake, clock: Clock, http: httpx.Client, tmp_path: Path
) -> None:
    hook = fake_hook(webhook_fake, clock, http, tmp_path)
    webhook_fake.fail(503, retry_after=1800)
    with pytest.raises(TransientError) as caught:
        hook.apply(BATCH)
    assert caught.value.retry_after == 1800
    clock.now += timedelta(minutes=30)
    webhook_fake.now = clock.now
    hook.apply(BATCH)
    assert webhook_fake.rejections == []
    assert [msg_id for msg_id, _ in webhook_fake.applied] == ["b-42"]
    assert webhook_fake.duplicates == 0


def test_a_lost_acknowledgement_is_retried_and_the_receiver_dedupes_it(
    webhook_fake: WebhookFake, clock: Clock, http: httpx.Client, tmp_path: Path
) -> None:
    hook = fake_hook(webhook_fake, clock, http, tmp_path)
    webhook_fake.timeout(delay=3, processed=True)
    with pytest.raises(TransientError, match="no answer within 1 s"):
        hook.apply(BATCH)
    hook.apply(BATCH)
    assert len(webhook_fake.applied) == 1
    assert webhook_fake.duplicates == 1


# --- M-3: a retry resends the same bytes --------------------------------------------------------

identifier_values = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=20)
changes_strategy = st.lists(
    st.builds(
        Change,
        change_id=st.integers(1, 10**12),
        audience=st.just("cio_cart_abandon_6h"),
        profile_id=st.text(min_size=1, max_size=10),
        op=st.sampled_from(["add", "remove"]),
        holdout=st.booleans(),
        at=st.datetimes(timezones=st.just(UTC)),
        identifiers=st.dictionaries(
            st.sampled_from(["user_id", "email", "phone", "anonymous_id"]),
            identifier_values,
            min_size=1,
        ),
    ),
    min_size=1,
    max_size=20,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=changes_strategy, later=st.integers(1, 10**6))
def test_body_depends_on_the_batch_alone(changes: list[Change], later: int) -> None:
    clock = Clock()
    with httpx.Client() as http:
        hook = make("https://hooks.example.com/in", clock, http, Path("."))
        batch = Batch("b-1", "cio_cart_abandon_6h", tuple(changes))
        first = hook.request(batch)
        clock.now += timedelta(seconds=later)
        reordered = tuple(
            Change(**{**vars(c), "identifiers": dict(reversed(list(c.identifiers.items())))})
            for c in changes
        )
        second = hook.request(Batch("b-1", "cio_cart_abandon_6h", reordered))
    assert second.content == first.content
    assert second.headers["webhook-id"] == first.headers["webhook-id"]
    verify(SECRET, second.headers, second.content, now=int(clock.now.timestamp()))


# --- the destination conformance suite -------------------------------------------------------


class WebhookSubject(Subject):
    """The webhook destination against the Standard Webhooks fake; membership is what the
    applied deliveries add up to."""

    def __init__(self, fake: WebhookFake, http: httpx.Client, tmp_path: Path) -> None:
        self.fake = fake
        config = WebhookConfig.model_validate({"url": fake.url, "secret": fake.secret})
        context = DestinationContext("hooks", tmp_path, http, lambda: fake.now)
        self.destination = WebhookDestination(config, context)

    def members(self, audience: str) -> set[str]:
        held: set[str] = set()
        for _, body in self.fake.applied:
            if body["type"] == "audience.changes" and body["data"]["audience"] == audience:
                for item in body["data"]["changes"]:
                    if item["operation"] == "add":
                        held.add(item["profile_id"])
                    else:
                        held.discard(item["profile_id"])
        return held

    def conversions(self) -> Counter[str]:
        return Counter(
            item["message_id"]
            for _, body in self.fake.applied
            if body["type"] == "conversions"
            for item in body["data"]["conversions"]
        )

    def state(self) -> object:
        return self.fake.applied

    def fail(self, status: int, retry_after: float | None = None) -> None:
        self.fake.fail(status, retry_after=retry_after)

    def recover(self) -> None:
        self.fake.faults.clear()


class TestWebhookConformance(Conformance):
    @pytest.fixture
    def subject(
        self, webhook_fake: WebhookFake, http: httpx.Client, tmp_path: Path
    ) -> WebhookSubject:
        return WebhookSubject(webhook_fake, http, tmp_path)
