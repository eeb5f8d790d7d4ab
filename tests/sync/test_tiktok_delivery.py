"""Sync into the TikTok contract fake, whose refusals come with HTTP 200: rate-limit codes
retried with backoff until it recovers, a token error pausing the destination with its queue
kept, 40062 dead-lettered with an alarm line, and no raw email or phone on the wire."""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cohortsync.engine import Engine
from cohortsync.sync.retry import RetryPolicy
from tests.conftest import PROJECT_YAML
from tests.fakes.tiktok import TiktokFake, tiktok_type
from tests.sync.conftest import Clock, person, track

AUDIENCE = "cio_cart_1h"
PEOPLE = 24


def tiktok_yaml(fake: TiktokFake) -> str:
    return (
        PROJECT_YAML
        + f"""\
segments:
  cart_1h: {{event: added_to_cart, within: 1h}}
audiences:
  {AUDIENCE}:
    segment: cart_1h
    holdout: {{percent: 25}}
    identifiers: [email, phone]
    destinations: [tiktok_ads]
destinations:
  tiktok_ads:
    type: "{tiktok_type("tiktok_audience")}"
    advertiser_id: "{fake.advertiser_id}"
    access_token: ${{TIKTOK_TOKEN}}
    base_url: {fake.base_url}
  tiktok_pixel:
    type: "{tiktok_type("tiktok_events")}"
    pixel_code: {fake.pixel_code}
    access_token: ${{TIKTOK_TOKEN}}
    base_url: {fake.base_url}
    event_names: {{Purchase: CompletePayment}}
conversions:
  - event: order_completed
    as: Purchase
    value: revenue
    currency: USD
    destinations: [tiktok_pixel]
"""
    )


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def expected_hashes(engine: Engine) -> set[str]:
    """SHA-256 of the normalised emails of the non-holdout members."""
    return {sha(m.email) for m in engine.members(AUDIENCE) if not m.holdout and m.email}


def raw_forms() -> set[str]:
    """Every raw form of the seeded emails and phones."""
    raws: set[str] = set()
    for n in range(PEOPLE):
        traits = person(n, datetime(2026, 1, 1, tzinfo=UTC))["traits"]
        raws |= {traits["email"], traits["email"].lower()}
        if "phone" in traits:
            digits = "".join(ch for ch in traits["phone"] if ch.isdigit())
            raws |= {traits["phone"], digits, "+" + digits}
    return raws


@pytest.fixture
def shop(
    project_dir: Path, tiktok_fake: TiktokFake, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> Engine:
    """The project, its token read from the environment as secrets are."""
    monkeypatch.setenv("TIKTOK_TOKEN", tiktok_fake.token)
    (project_dir / "cohortsync.yml").write_text(tiktok_yaml(tiktok_fake), encoding="utf-8")
    tiktok_fake.now = clock.now
    engine = Engine.open(project_dir)
    engine.ingest_messages([person(n, clock.now - timedelta(hours=1)) for n in range(PEOPLE)])
    return engine


@pytest.fixture
def quick_policy() -> RetryPolicy:
    return RetryPolicy(base=5, cap=60, window=86400, auth_pause=300, rng=random.Random(3))


def carts(shop: Engine, clock: Clock) -> None:
    shop.ingest_messages([track(n, "added_to_cart", clock.now) for n in range(PEOPLE)])
    shop.compute(clock.now)


def line(shop: Engine, destination: str) -> Any:
    return next(s for s in shop.sync_status() if s.destination == destination)


@pytest.mark.parametrize("code", [40100, 40132])
def test_rate_limit_codes_are_retried_with_backoff_until_tiktok_recovers(
    shop: Engine, tiktok_fake: TiktokFake, clock: Clock, quick_policy: RetryPolicy, code: int
) -> None:
    with shop:
        carts(shop, clock)
        tiktok_fake.refuse(code, times=10_000)  # HTTP 200 with the throttle code, every time
        for _ in range(3):
            report = shop.sync(destination="tiktok_ads", clock=clock, policy=quick_policy)
            assert report.delivery.total("acknowledged") == 0
            clock.advance(timedelta(seconds=quick_policy.cap))
        assert line(shop, "tiktok_ads").acknowledged == 0
        assert tiktok_fake.mapping_calls == 0
        tries = len(tiktok_fake.log)
        assert 3 <= tries <= 6  # one or two tries a run, never a flood
        tiktok_fake.faults.clear()
        for _ in range(3):
            clock.advance(timedelta(seconds=quick_policy.cap))
            shop.sync(destination="tiktok_ads", clock=clock, policy=quick_policy)
        assert tiktok_fake.members(AUDIENCE) == expected_hashes(shop)
        assert line(shop, "tiktok_ads").pending == 0
        assert shop.store.query("SELECT count(*) FROM outbox") == [(0,)]  # type: ignore[attr-defined]


def test_an_outage_of_throttle_codes_while_profiles_flap_ends_in_order_and_complete(
    shop: Engine, tiktok_fake: TiktokFake, clock: Clock, quick_policy: RetryPolicy
) -> None:
    rng = random.Random(11)
    with shop:
        carts(shop, clock)
        tiktok_fake.refuse(40100, times=10_000)
        shop.sync(destination="tiktok_ads", clock=clock, policy=quick_policy)
        for step in range(1, 6):  # profiles flap while TikTok throttles
            at = clock.advance(timedelta(minutes=70))
            flapping = rng.sample(range(PEOPLE), k=PEOPLE // 2)
            shop.ingest_messages([track(n, "added_to_cart", at) for n in flapping])
            shop.compute(at)
            clock.advance(timedelta(seconds=60 * step))
            before = len(tiktok_fake.log)
            shop.sync(destination="tiktok_ads", clock=clock, policy=quick_policy)
            assert len(tiktok_fake.log) - before <= 2  # probed, not flooded
        assert tiktok_fake.mapping_calls == 0
        tiktok_fake.faults.clear()
        for _ in range(6):
            clock.advance(timedelta(seconds=quick_policy.cap))
            shop.sync(destination="tiktok_ads", clock=clock, policy=quick_policy)
        assert tiktok_fake.members(AUDIENCE) == expected_hashes(shop)
        assert shop.store.query("SELECT count(*) FROM outbox") == [(0,)]  # type: ignore[attr-defined]
    # In order per person: each one's applied operations alternate add, delete, add…
    ops: dict[str, list[str]] = {}
    for call in tiktok_fake.log.to("/segment/mapping/"):
        if call.fault is None and call.status == 200:
            body = call.json()
            for row in body["batch_data"]:
                if row[0]:
                    ops.setdefault(row[0]["id"], []).append(body["action"])
    assert ops
    for sequence in ops.values():
        assert sequence[0] == "add"
        assert all(a != b for a, b in itertools.pairwise(sequence))


@pytest.mark.parametrize("code", [40102, 40105])
def test_a_token_error_pauses_and_the_queue_survives(
    shop: Engine, tiktok_fake: TiktokFake, clock: Clock, quick_policy: RetryPolicy, code: int
) -> None:
    with shop:
        carts(shop, clock)
        tiktok_fake.refuse(code, times=1)
        report = shop.sync(destination="tiktok_ads", clock=clock, policy=quick_policy)
        assert report.delivery.total("acknowledged") == 0
        status = line(shop, "tiktok_ads")
        assert status.pending == len(expected_hashes(shop)) and status.acknowledged == 0
        clock.advance(timedelta(seconds=quick_policy.auth_pause - 1))
        shop.sync(destination="tiktok_ads", clock=clock, policy=quick_policy)
        assert tiktok_fake.mapping_calls == 0  # paused: nothing sent before the pause ends
        clock.advance(timedelta(seconds=2))
        shop.sync(destination="tiktok_ads", clock=clock, policy=quick_policy)
        assert tiktok_fake.members(AUDIENCE) == expected_hashes(shop)


def test_40062_is_dead_lettered_with_an_alarm_line_and_no_identifier_logged(
    shop: Engine,
    tiktok_fake: TiktokFake,
    clock: Clock,
    quick_policy: RetryPolicy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with shop, caplog.at_level(logging.INFO):
        carts(shop, clock)
        echo = "batch_data[0][0].id person0@example.com is not hashed"
        tiktok_fake.refuse(40062, times=1, message=echo, path="/segment/mapping/")
        report = shop.sync(destination="tiktok_ads", clock=clock, policy=quick_policy)
        tally = report.delivery.tally("tiktok_ads", AUDIENCE)
        assert tally.acknowledged == 0
        assert tally.dead_lettered == len(expected_hashes(shop))
        assert "40062" in (tally.error or "")
        clock.advance(timedelta(hours=2))
        shop.sync(destination="tiktok_ads", clock=clock, policy=quick_policy)
        assert tiktok_fake.mapping_calls == 0  # never retried
    logged = [record.getMessage() for record in caplog.records]
    assert any("ALARM" in text and "40062" in text for text in logged)
    leaked = [raw for raw in raw_forms() for text in logged if raw.lower() in text.lower()]
    assert leaked == []


def test_no_raw_email_or_phone_reaches_tiktok(
    shop: Engine, tiktok_fake: TiktokFake, clock: Clock, quick_policy: RetryPolicy
) -> None:
    with shop:
        orders = [
            track(n, "order_completed", clock.now - timedelta(minutes=5), revenue=20.0 + n)
            for n in range(PEOPLE)
        ]
        shop.ingest_messages([track(n, "added_to_cart", clock.now) for n in range(PEOPLE)] + orders)
        shop.compute(clock.now)
        report = shop.sync(clock=clock, policy=quick_policy)
        pixel = report.delivery.tally("tiktok_pixel", None)
        assert (pixel.acknowledged, pixel.rejected) == (PEOPLE, 0), pixel.error
        assert {e["event"] for e in tiktok_fake.effective_events} == {"CompletePayment"}
        assert len(tiktok_fake.effective_events) == PEOPLE
        assert tiktok_fake.members(AUDIENCE, "PHONE_SHA256")
    assert len(tiktok_fake.log) > 2
    raws = raw_forms()
    for captured in tiktok_fake.log:
        text = captured.text().lower()
        leaked = [raw for raw in raws if raw.lower() in text]
        assert leaked == [], f"{captured.method} {captured.path} carried raw PII"
