"""Sync into the Meta contract fake: outages, ordering, PII, conversions, end to end."""

from __future__ import annotations

import hashlib
import itertools
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cohortsync.engine import Engine
from cohortsync.sync.retry import RetryPolicy
from tests.conftest import PROJECT_YAML
from tests.fakes.meta import MetaFake
from tests.sync.conftest import Clock, person, track

AUDIENCE = "cio_cart_1h"
PEOPLE = 24


def meta_yaml(fake: MetaFake) -> str:
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
    destinations: [meta_ads]
destinations:
  meta_ads:
    type: meta_custom_audience
    ad_account_id: act_{fake.ad_account_id}
    access_token: {fake.token}
    api_url: {fake.base_url}
  meta_capi:
    type: meta_capi
    pixel_id: "{fake.pixel_id}"
    access_token: {fake.token}
    api_url: {fake.base_url}
    action_source: system_generated
conversions:
  - event: order_completed
    as: Purchase
    value: revenue
    currency: USD
    destinations: [meta_capi]
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


@pytest.fixture
def shop(project_dir: Path, meta_fake: MetaFake, clock: Clock) -> Engine:
    (project_dir / "cohortsync.yml").write_text(meta_yaml(meta_fake), encoding="utf-8")
    meta_fake.now = clock.now
    meta_fake.known_people(
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
    shop: Engine, meta_fake: MetaFake, clock: Clock, quick_policy: RetryPolicy
) -> None:
    rng = random.Random(11)
    with shop:
        at = clock.now
        shop.ingest_messages([track(n, "added_to_cart", at) for n in range(PEOPLE)])
        shop.compute(at)
        meta_fake.fail(429, times=10_000, retry_after=600)  # down and throttling
        shop.sync(destination="meta_ads", clock=clock, policy=quick_policy)
        assert len(meta_fake.log) == 1  # one try, then nothing more this run
        for step in range(1, 6):  # profiles flap while the platform is down
            at = clock.advance(timedelta(minutes=70))
            flapping = rng.sample(range(PEOPLE), k=PEOPLE // 2)
            shop.ingest_messages([track(n, "added_to_cart", at) for n in flapping])
            shop.compute(at)
            clock.advance(timedelta(seconds=60 * step))
            before = len(meta_fake.log)
            shop.sync(destination="meta_ads", clock=clock, policy=quick_policy)
            assert len(meta_fake.log) - before <= 1
        # Retry-After is honoured: right after a failed try, nothing is sent.
        before = len(meta_fake.log)
        clock.advance(timedelta(seconds=599))
        shop.sync(destination="meta_ads", clock=clock, policy=quick_policy)
        assert len(meta_fake.log) == before
        meta_fake.faults.clear()  # the platform recovers
        for _ in range(6):
            clock.advance(timedelta(minutes=11))
            shop.sync(destination="meta_ads", clock=clock, policy=quick_policy)
        assert meta_fake.members(AUDIENCE) == expected_hashes(shop)
        pending = shop.store.query("SELECT count(*) FROM outbox")  # type: ignore[attr-defined]
        assert pending == [(0,)]
        # In order per profile: each profile's applied operations alternate add, remove, add…
        ops: dict[str, list[str]] = {}
        seen: set[tuple[Any, ...]] = set()
        for batch in meta_fake.batches:
            key = (batch.audience_id, batch.op, batch.session_id, batch.batch_seq)
            if key in seen:
                continue
            seen.add(key)
            for row in batch.rows:
                ops.setdefault(row["EMAIL"], []).append(batch.op)
        for sequence in ops.values():
            assert sequence[0] == "add"
            assert all(a != b for a, b in itertools.pairwise(sequence))


def test_no_raw_email_or_phone_reaches_meta(
    shop: Engine, meta_fake: MetaFake, clock: Clock, quick_policy: RetryPolicy
) -> None:
    with shop:
        orders = [
            track(n, "order_completed", clock.now - timedelta(minutes=5), revenue=20.0 + n)
            for n in range(PEOPLE)
        ]
        shop.ingest_messages([track(n, "added_to_cart", clock.now) for n in range(PEOPLE)] + orders)
        shop.compute(clock.now)
        report = shop.sync(clock=clock, policy=quick_policy)
        capi = report.delivery.tally("meta_capi", None)
        assert (capi.acknowledged, capi.rejected) == (PEOPLE, 0), capi.error
        assert len(meta_fake.effective_events) == PEOPLE
    raws: set[str] = set()
    for traits in raw_people():
        email = traits["email"]
        raws |= {email, email.lower(), email.strip().lower()}
        if "phone" in traits:
            digits = "".join(ch for ch in traits["phone"] if ch.isdigit())
            raws |= {traits["phone"], digits, "+" + digits, digits[1:]}
    assert len(meta_fake.log) > 2
    for captured in meta_fake.log:
        text = captured.text()
        leaked = [raw for raw in raws if raw in text]
        assert leaked == [], f"{captured.method} {captured.path} carried raw PII"


def test_expired_token_pauses_and_the_queue_survives(
    shop: Engine, meta_fake: MetaFake, clock: Clock, quick_policy: RetryPolicy
) -> None:
    with shop:
        shop.ingest_messages([track(n, "added_to_cart", clock.now) for n in range(PEOPLE)])
        shop.compute(clock.now)
        meta_fake.fail(401, times=1)
        report = shop.sync(destination="meta_ads", clock=clock, policy=quick_policy)
        assert report.delivery.total("acknowledged") == 0
        line = next(s for s in shop.sync_status() if s.destination == "meta_ads")
        assert line.pending == len(expected_hashes(shop)) and line.acknowledged == 0
        clock.advance(timedelta(seconds=quick_policy.auth_pause + 1))
        shop.sync(destination="meta_ads", clock=clock, policy=quick_policy)
        assert meta_fake.members(AUDIENCE) == expected_hashes(shop)
