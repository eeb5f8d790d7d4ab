"""TikTok audiences against the Business API fake over real HTTP: audiences found or created by
exact name, members added and deleted with `segment/mapping/`, only hashes on the wire, and a
200 carrying a non-zero code never taken as an acknowledgement."""

from __future__ import annotations

import logging
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
    Change,
    DestinationContext,
    Op,
    PermanentError,
    TransientError,
)
from cohortsync.destinations.hashing import sha256_hex
from cohortsync.destinations.tiktok_api import UnhashedPiiError
from cohortsync.destinations.tiktok_audience import (
    HOLDOUT,
    MAX_USERS,
    NO_IDENTIFIER,
    TiktokAudienceConfig,
    TiktokAudienceDestination,
)
from tests.destinations.conformance import Conformance, Records, Subject
from tests.fakes.tiktok import TiktokFake

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
AUDIENCE = "cio_cart_abandon_6h"
RECORDS = Records(start=NOW, step=timedelta(0))
change = RECORDS.change
batch = RECORDS.batch


def destination(
    fake: TiktokFake, tmp_path: Path, http: httpx.Client, **overrides: Any
) -> TiktokAudienceDestination:
    """The destination pointed at the fake."""
    settings: dict[str, Any] = {
        "access_token": fake.token,
        "advertiser_id": fake.advertiser_id,
        "base_url": fake.url,
        **overrides,
    }
    context = DestinationContext("tiktok", tmp_path, http, lambda: NOW)
    return TiktokAudienceDestination(TiktokAudienceConfig(**settings), context)


def email(n: int) -> str:
    return sha256_hex(f"shopper.{n}@example.com")


def test_audience_is_created_once_under_its_exact_name_and_reused(
    tiktok_fake: TiktokFake, tmp_path: Path, http: httpx.Client
) -> None:
    tiktok_fake.create_audience(AUDIENCE + "_old")
    dest = destination(tiktok_fake, tmp_path, http)
    dest.apply(batch(change(1), batch_id="b-1"))
    dest.apply(batch(change(2), batch_id="b-2"))
    destination(tiktok_fake, tmp_path, http).apply(batch(change(3), batch_id="b-3"))

    assert tiktok_fake.audience_count(AUDIENCE) == 1
    created = tiktok_fake.log.to("/segment/audience/", "POST")
    assert [c.json() for c in created] == [
        {
            "advertiser_id": tiktok_fake.advertiser_id,
            "custom_audience_name": AUDIENCE,
            "action": "create",
        }
    ]
    assert tiktok_fake.members(AUDIENCE) == {email(1), email(2), email(3)}
    assert tiktok_fake.members(AUDIENCE + "_old") == set()


def test_existing_audience_is_found_across_pages(
    tiktok_fake: TiktokFake, tmp_path: Path, http: httpx.Client
) -> None:
    for index in range(230):
        tiktok_fake.create_audience(f"other_{index}")
    existing = tiktok_fake.create_audience(AUDIENCE)
    destination(tiktok_fake, tmp_path, http).apply(batch(change(1)))
    assert tiktok_fake.audiences()[AUDIENCE] == existing
    assert len(tiktok_fake.log.to("/dmp/custom_audience/list/")) == 3
    assert tiktok_fake.log.to("/segment/audience/") == []


def test_rows_are_aligned_with_the_schema_and_phones_hashed_without_plus(
    tiktok_fake: TiktokFake, tmp_path: Path, http: httpx.Client
) -> None:
    sent = batch(
        change(1),
        change(2, ids={"phone": "+16505550002"}),
        change(3, ids={"email": "shopper.3@example.com"}),
    )
    destination(tiktok_fake, tmp_path, http).apply(sent)
    (call,) = tiktok_fake.log.to("/segment/mapping/")
    body = call.json()
    audience_id = tiktok_fake.audiences()[AUDIENCE]
    assert call.header("access-token") == tiktok_fake.token
    assert body["id_schema"] == ["EMAIL_SHA256", "PHONE_SHA256"]
    assert body["action"] == "add"
    assert body["batch_data"] == [
        [
            {"id": email(1), "audience_ids": [audience_id]},
            {"id": sha256_hex("16505550001"), "audience_ids": [audience_id]},
        ],
        [{}, {"id": sha256_hex("16505550002"), "audience_ids": [audience_id]}],
        [{"id": email(3), "audience_ids": [audience_id]}, {}],
    ]


def test_removes_are_deletes_and_a_mixed_batch_keeps_its_order(
    tiktok_fake: TiktokFake, tmp_path: Path, http: httpx.Client
) -> None:
    dest = destination(tiktok_fake, tmp_path, http)
    dest.apply(batch(change(1), change(2), batch_id="in"))
    dest.apply(batch(change(3, "remove", who=1), change(4, who=1), change(5, "remove", who=2)))
    actions = [c.json()["action"] for c in tiktok_fake.log.to("/segment/mapping/")]
    assert actions == ["add", "delete", "add", "delete"]
    assert tiktok_fake.members(AUDIENCE) == {email(1)}


def test_2500_adds_go_as_requests_of_at_most_1000(
    tiktok_fake: TiktokFake, tmp_path: Path, http: httpx.Client
) -> None:
    changes = [change(n, ids={"email": f"shopper.{n}@example.com"}) for n in range(2500)]
    result = destination(tiktok_fake, tmp_path, http).apply(batch(*changes))
    sizes = [len(c.json()["batch_data"]) for c in tiktok_fake.log.to("/segment/mapping/")]
    assert sizes == [MAX_USERS, MAX_USERS, 500]
    assert len(tiktok_fake.members(AUDIENCE)) == 2500
    assert result.stats == {"sent": 2500, "requests": 3}


def test_holdout_and_unidentified_records_are_rejected_locally(
    tiktok_fake: TiktokFake, tmp_path: Path, http: httpx.Client
) -> None:
    sent = batch(change(1), change(2, holdout=True), change(3, ids={"user_id": "u-3"}))
    result = destination(tiktok_fake, tmp_path, http).apply(sent)
    assert dict(result.rejected) == {2: HOLDOUT, 3: NO_IDENTIFIER}
    assert tiktok_fake.members(AUDIENCE) == {email(1)}


def test_a_dry_run_counts_the_records_apply_would_refuse(
    tiktok_fake: TiktokFake, tmp_path: Path, http: httpx.Client
) -> None:
    sent = batch(change(1), change(2, holdout=True), change(3, ids={"user_id": "u-3"}))
    found = destination(tiktok_fake, tmp_path, http).preview(sent)
    assert dict(found.refused) == {2: HOLDOUT, 3: NO_IDENTIFIER}
    (request,) = found.requests
    assert len(request["body"]["batch_data"]) == 1
    assert tiktok_fake.log.to("/segment/mapping/") == []


def test_resending_a_batch_sends_identical_bytes(
    tiktok_fake: TiktokFake, tmp_path: Path, http: httpx.Client
) -> None:
    dest = destination(tiktok_fake, tmp_path, http)
    sent = batch(change(1), change(2, "remove", who=3))
    dest.apply(sent)
    dest.apply(sent)
    bodies = [c.body for c in tiktok_fake.log.to("/segment/mapping/")]
    assert len(bodies) == 4
    assert bodies[:2] == bodies[2:]


@pytest.mark.parametrize("code", [40100, 40132, 50000, 20001])
def test_a_200_with_a_retryable_code_is_transient_and_never_acknowledged(
    tiktok_fake: TiktokFake, tmp_path: Path, http: httpx.Client, code: int
) -> None:
    dest = destination(tiktok_fake, tmp_path, http)
    tiktok_fake.create_audience(AUDIENCE)
    tiktok_fake.refuse(code, times=1, path="/segment/mapping/")
    with pytest.raises(TransientError, match=str(code)):
        dest.apply(batch(change(1)))
    assert tiktok_fake.members(AUDIENCE) == set()
    dest.apply(batch(change(1)))
    assert tiktok_fake.members(AUDIENCE) == {email(1)}


@pytest.mark.parametrize("code", [40102, 40104, 40105, 40001])
def test_token_codes_are_auth_errors(
    tiktok_fake: TiktokFake, tmp_path: Path, http: httpx.Client, code: int
) -> None:
    tiktok_fake.refuse(code, times=1)
    with pytest.raises(AuthError, match=str(code)):
        destination(tiktok_fake, tmp_path, http).apply(batch(change(1)))


def test_a_wrong_or_expired_token_is_an_auth_error_end_to_end(
    tiktok_fake: TiktokFake, tmp_path: Path, http: httpx.Client
) -> None:
    with pytest.raises(AuthError, match="40105"):
        destination(tiktok_fake, tmp_path, http, access_token="nope").apply(batch(change(1)))
    tiktok_fake.expire_token()
    with pytest.raises(AuthError, match="40102"):
        destination(tiktok_fake, tmp_path, http).apply(batch(change(1)))


def test_40062_is_a_permanent_defect_with_an_alarm_line_without_the_identifier(
    tiktok_fake: TiktokFake,
    tmp_path: Path,
    http: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tiktok_fake.create_audience(AUDIENCE)
    echo = "batch_data[0][0].id: shopper.1@example.com is not hashed"
    tiktok_fake.refuse(40062, times=1, message=echo, path="/segment/mapping/")
    with caplog.at_level(logging.ERROR), pytest.raises(UnhashedPiiError) as caught:
        destination(tiktok_fake, tmp_path, http).apply(batch(change(1)))
    assert isinstance(caught.value, PermanentError)
    alarms = [r.getMessage() for r in caplog.records if "ALARM" in r.getMessage()]
    assert len(alarms) == 1 and "40062" in alarms[0]
    for text in (*alarms, str(caught.value)):
        assert "shopper.1@example.com" not in text


def test_a_permanent_code_carries_the_platforms_reason(
    tiktok_fake: TiktokFake, tmp_path: Path, http: httpx.Client
) -> None:
    tiktok_fake.refuse(40002, times=1, message="id_schema: invalid", path="/segment/mapping/")
    with pytest.raises(PermanentError, match="40002: id_schema: invalid"):
        destination(tiktok_fake, tmp_path, http).apply(batch(change(1)))


def test_a_timeout_is_transient(tiktok_fake: TiktokFake, tmp_path: Path) -> None:
    tiktok_fake.timeout(delay=1.0, path="/segment/mapping/")
    with httpx.Client(timeout=0.3) as client, pytest.raises(TransientError):
        destination(tiktok_fake, tmp_path, client).apply(batch(change(1)))


def test_dry_run_shows_the_requests_token_redacted_and_sends_nothing(
    tiktok_fake: TiktokFake, tmp_path: Path, http: httpx.Client
) -> None:
    (request,) = destination(tiktok_fake, tmp_path, http).dry_run(batch(change(1)))
    assert request["headers"]["Access-Token"] == "***"
    assert request["body"]["batch_data"][0][0]["audience_ids"] == [f"<id of {AUDIENCE}>"]
    assert len(tiktok_fake.log) == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"advertiser_id": "adv-1"}, "advertiser number"),
        ({"access_token": " "}, "access_token is empty"),
        ({"base_url": "business-api.tiktok.com"}, r"http\(s\) address"),
    ],
)
def test_config_errors_name_the_field_and_fix(value: dict[str, str], message: str) -> None:
    settings = {"access_token": "t", "advertiser_id": "7", **value}
    with pytest.raises(ValidationError, match=message):
        TiktokAudienceConfig(**settings)


OPS = st.lists(
    st.tuples(st.sampled_from(["add", "remove"]), st.integers(min_value=1, max_value=2_500)),
    min_size=1,
    max_size=4,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_no_request_exceeds_1000_people_and_order_is_kept(runs: list[tuple[Op, int]]) -> None:
    """For any mix of adds and removes, every request holds 1..1,000 people of one op, and
    every change is sent once, in batch order (reliability D-5)."""
    changes: list[Change] = []
    for op, count in runs:
        start = len(changes)
        changes += [
            change(start + i, op, ids={"email": f"p{start + i}@x.com"}) for i in range(count)
        ]
    config = TiktokAudienceConfig(access_token="t", advertiser_id="1")
    with httpx.Client() as unused:
        context = DestinationContext("tiktok", Path("."), unused, lambda: NOW)
        mappings, rejected = TiktokAudienceDestination(config, context).plan(batch(*changes))
    assert rejected == {}
    assert all(1 <= len(m.rows) <= MAX_USERS for m in mappings)
    sent = [(m.op, row[0]) for m in mappings for row in m.rows]
    assert sent == [(c.op, email_of(c)) for c in changes]


def email_of(record: Change) -> str:
    return sha256_hex(record.identifiers["email"])


# --- the destination conformance suite -------------------------------------------------------


class TiktokAudienceSubject(Subject):
    """The destination against the TikTok fake; members are the hashed emails it holds."""

    def __init__(self, fake: TiktokFake, http: httpx.Client, tmp_path: Path) -> None:
        self.fake = fake
        self.destination = destination(fake, tmp_path, http)

    def members(self, audience: str) -> set[str]:
        if audience not in self.fake.audiences():
            return set()
        return self.fake.members(audience)

    def key(self, record: Change) -> str:
        return sha256_hex(record.identifiers["email"])

    def state(self) -> object:
        return {
            name: (self.fake.members(name), self.fake.members(name, "PHONE_SHA256"))
            for name in self.fake.audiences()
        }

    def outgoing(self) -> str:
        return "\n".join(item.text() for item in self.fake.log)

    def fail(self, status: int, retry_after: float | None = None) -> None:
        self.fake.fail(status, retry_after=retry_after)

    def recover(self) -> None:
        self.fake.faults.clear()


class TestTiktokAudienceConformance(Conformance):
    @pytest.fixture
    def subject(
        self, tiktok_fake: TiktokFake, http: httpx.Client, tmp_path: Path
    ) -> TiktokAudienceSubject:
        return TiktokAudienceSubject(tiktok_fake, http, tmp_path)
