"""Sync into the ad platforms' contract fakes (Meta, Google Data Manager): outages, ordering,
PII, conversions, end to end."""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cohortsync.engine import Engine
from cohortsync.sync.retry import RetryPolicy
from tests.conftest import PROJECT_YAML
from tests.sync.conftest import Clock, person, track
from tests.sync.platforms import (
    AUDIENCE_DESTINATION as ADS,
)
from tests.sync.platforms import (
    CONVERSION_DESTINATION as CONVERSIONS,
)
from tests.sync.platforms import Platform, serving

AUDIENCE = "cio_cart_1h"
PEOPLE = 24


def platform_yaml(platform: Platform) -> str:
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
    destinations: [{ADS}]
destinations:
{platform.destinations_yaml()}conversions:
  - event: order_completed
    as: Purchase
    value: revenue
    currency: USD
    destinations: [{CONVERSIONS}]
"""
    )


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def raw_people() -> list[dict[str, Any]]:
    """The identify traits exactly as sent (mixed case, spaces, national phones)."""
    return [person(n, datetime(2026, 1, 1, tzinfo=UTC))["traits"] for n in range(PEOPLE)]


def expected_hashes(engine: Engine) -> set[str]:
    """SHA-256 of the normalised emails of the non-holdout members."""
    return {sha(m.email) for m in engine.members(AUDIENCE) if not m.holdout and m.email}


@pytest.fixture(params=["meta", "google"])
def platform(request: pytest.FixtureRequest) -> Iterator[Platform]:
    """Each ad platform's contract fake, running."""
    with serving(str(request.param)) as found:
        yield found


@pytest.fixture
def shop(project_dir: Path, platform: Platform, clock: Clock) -> Engine:
    (project_dir / "cohortsync.yml").write_text(platform_yaml(platform), encoding="utf-8")
    platform.set_now(clock.now)
    platform.known_people(
        [
            {"email": t["email"], **({"phone": t["phone"]} if "phone" in t else {})}
            for t in raw_people()
        ]
    )
    engine = Engine.open(project_dir)
    engine.ingest_messages([person(n, clock.now - timedelta(hours=1)) for n in range(PEOPLE)])
    return engine


@pytest.fixture
def quick_policy() -> RetryPolicy:
    return RetryPolicy(base=5, cap=60, window=86400, rng=random.Random(3))


def test_outage_then_recovery_delivers_everything_in_order_and_nothing_early(
    shop: Engine, platform: Platform, clock: Clock, quick_policy: RetryPolicy
) -> None:
    rng = random.Random(11)
    with shop:
        at = clock.now
        shop.ingest_messages([track(n, "added_to_cart", at) for n in range(PEOPLE)])
        shop.compute(at)
        platform.fail(429, times=10_000, retry_after=600)  # down and throttling
        shop.sync(destination=ADS, clock=clock, policy=quick_policy)
        assert platform.attempts() == 1  # one try, then nothing more this run
        for step in range(1, 6):  # profiles flap while the platform is down
            at = clock.advance(timedelta(minutes=70))
            flapping = rng.sample(range(PEOPLE), k=PEOPLE // 2)
            shop.ingest_messages([track(n, "added_to_cart", at) for n in flapping])
            shop.compute(at)
            clock.advance(timedelta(seconds=60 * step))
            before = platform.attempts()
            shop.sync(destination=ADS, clock=clock, policy=quick_policy)
            assert platform.attempts() - before <= 1
        # Retry-After is honoured: right after a failed try, nothing is sent.
        before = platform.attempts()
        clock.advance(timedelta(seconds=599))
        shop.sync(destination=ADS, clock=clock, policy=quick_policy)
        assert platform.attempts() == before
        platform.fake.faults.clear()  # the platform recovers
        for _ in range(6):
            clock.advance(timedelta(minutes=11))
            shop.sync(destination=ADS, clock=clock, policy=quick_policy)
        assert platform.members(AUDIENCE) == expected_hashes(shop)
        pending = shop.store.query("SELECT count(*) FROM outbox")  # type: ignore[attr-defined]
        assert pending == [(0,)]
        # In order per profile: each profile's applied operations alternate add, remove, add…
        ops: dict[str, list[str]] = {}
        for op, emails in platform.applied():
            for email in emails:
                ops.setdefault(email, []).append(op)
        for sequence in ops.values():
            assert sequence[0] == "add"
            assert all(a != b for a, b in itertools.pairwise(sequence))


def test_no_raw_email_or_phone_reaches_the_platform(
    shop: Engine, platform: Platform, clock: Clock, quick_policy: RetryPolicy
) -> None:
    with shop:
        orders = [
            track(n, "order_completed", clock.now - timedelta(minutes=5), revenue=20.0 + n)
            for n in range(PEOPLE)
        ]
        shop.ingest_messages([track(n, "added_to_cart", clock.now) for n in range(PEOPLE)] + orders)
        shop.compute(clock.now)
        report = shop.sync(clock=clock, policy=quick_policy)
        capi = report.delivery.tally(CONVERSIONS, None)
        assert (capi.acknowledged, capi.rejected) == (PEOPLE, 0), capi.error
        assert platform.counted_conversions() == PEOPLE
    raws: set[str] = set()
    for traits in raw_people():
        email = traits["email"]
        raws |= {email, email.lower(), email.strip().lower()}
        if "phone" in traits:
            digits = "".join(ch for ch in traits["phone"] if ch.isdigit())
            raws |= {traits["phone"], digits, "+" + digits, digits[1:]}
    assert len(platform.fake.log) > 2
    for captured in platform.fake.log:
        text = captured.text()
        leaked = [raw for raw in raws if raw in text]
        assert leaked == [], f"{captured.method} {captured.path} carried raw PII"


def test_expired_token_pauses_and_the_queue_survives(
    shop: Engine, platform: Platform, clock: Clock, quick_policy: RetryPolicy
) -> None:
    with shop:
        shop.ingest_messages([track(n, "added_to_cart", clock.now) for n in range(PEOPLE)])
        shop.compute(clock.now)
        platform.fail(401, times=1)
        report = shop.sync(destination=ADS, clock=clock, policy=quick_policy)
        assert report.delivery.total("acknowledged") == 0
        line = next(s for s in shop.sync_status() if s.destination == ADS)
        assert line.pending == len(expected_hashes(shop)) and line.acknowledged == 0
        clock.advance(timedelta(seconds=quick_policy.auth_pause + 1))
        shop.sync(destination=ADS, clock=clock, policy=quick_policy)
        assert platform.members(AUDIENCE) == expected_hashes(shop)
