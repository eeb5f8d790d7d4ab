"""The match rate Google reports after processing an upload reaches the sync state: each batch's
request ids are asked about from the configured delay, with backoff, until terminal, and the
bucket and error counts are added to that batch's result (on DuckDB and on Postgres)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cohortsync.engine import Engine
from cohortsync.sync.retry import RetryPolicy
from tests.fakes.google_data_manager import GoogleDataManagerFake
from tests.sync.conftest import MIN, Clock, person, track
from tests.sync.platforms import AUDIENCE_DESTINATION as ADS
from tests.sync.platforms import GooglePlatform

AUDIENCE = "cio_cart_1h"


@pytest.fixture
def google() -> Iterator[GooglePlatform]:
    with GoogleDataManagerFake().serving() as fake:
        yield GooglePlatform(fake)


@pytest.fixture
def shop(project_on_both: Path, google: GooglePlatform, clock: Clock) -> Iterator[Engine]:
    settings = project_on_both / "cohortsync.yml"
    yaml = f"""\
segments:
  cart_1h: {{event: added_to_cart, within: 1h}}
audiences:
  {AUDIENCE}:
    segment: cart_1h
    identifiers: [email, phone]
    destinations: [{ADS}]
destinations:
{google.destinations_yaml()}"""
    settings.write_text(settings.read_text(encoding="utf-8") + yaml, encoding="utf-8")
    google.set_now(clock.now)
    with Engine.open(project_on_both) as engine:
        engine.ingest_messages([person(n, clock.now - timedelta(hours=1)) for n in range(6)])
        engine.ingest_messages([track(n, "added_to_cart", clock.now) for n in range(6)])
        engine.compute(clock.now)
        yield engine


def stats(engine: Engine) -> dict[str, Any]:
    rows = engine.store.query(  # type: ignore[attr-defined]
        f"SELECT stats FROM batch_results WHERE destination = '{ADS}'"
    )
    ((raw,),) = rows
    return raw if isinstance(raw, dict) else dict(json.loads(raw))


def test_the_match_rate_is_polled_and_stored_with_the_batch_result(
    shop: Engine, google: GooglePlatform, clock: Clock, policy: RetryPolicy
) -> None:
    shop.sync(destination=ADS, clock=clock, policy=policy)
    assert stats(shop) == {"sent": 6, "requests": 1}
    clock.advance(20 * MIN)
    shop.sync(destination=ADS, clock=clock, policy=policy)
    assert google.fake.log.to("requestStatus") == []  # not before 30 minutes

    clock.advance(15 * MIN)
    google.set_now(clock.now - 10 * MIN)  # still processing at Google
    shop.sync(destination=ADS, clock=clock, policy=policy)
    assert len(google.fake.log.to("requestStatus")) == 1
    assert "match_rate_low" not in stats(shop)
    assert [s.platform_match_rate for s in shop.sync_status() if s.destination == ADS] == [None]

    clock.advance(40 * MIN)
    google.set_now(clock.now)
    google.fake.match_rate = "MATCH_RATE_RANGE_61_TO_70"
    google.fake.error_counts = {"PROCESSING_ERROR_REASON_INVALID_EMAIL": 2}
    shop.sync(destination=ADS, clock=clock, policy=policy)
    assert stats(shop) == {
        "sent": 6,
        "requests": 1,
        "records_processed": 6,
        "match_rate_low": 61,
        "match_rate_high": 70,
        "error_records": 2,
        "error:PROCESSING_ERROR_REASON_INVALID_EMAIL": 2,
    }
    (line,) = [s for s in shop.sync_status() if s.destination == ADS]
    assert line.platform_match_rate == (61, 70)
    asked = len(google.fake.log.to("requestStatus"))
    clock.advance(10 * 60 * MIN)
    shop.sync(destination=ADS, clock=clock, policy=policy)
    assert len(google.fake.log.to("requestStatus")) == asked  # terminal: never asked again
