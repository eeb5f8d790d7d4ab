"""Recovery after an outage: a failing batch holds back only its own profiles, and a destination
that answers again is tried again within the base backoff, not minutes later.

The next tries asserted are the ones the outbox recorded (`sync_batches.next_attempt_at`), never
wall-clock timings. Every test holds on a DuckDB store and on a Postgres one.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from cohortsync.engine import Engine
from cohortsync.sync.retry import RetryPolicy
from tests.sync.conftest import MIN, T0, Clock, H, track
from tests.sync.scripted import Remote

AUDIENCE = "cio_cart_1h"
BASE = timedelta(seconds=10)  # the `policy` fixture's backoff_base


@pytest.fixture
def shop(shop_on_both: Engine) -> Engine:
    return shop_on_both


def carts(engine: Engine, people: range, at: datetime) -> None:
    engine.ingest_messages([track(n, "added_to_cart", at) for n in people])


def profile(engine: Engine, n: int) -> str:
    return engine.find_profile(f"user_id:u{n}").profile_id


def waiting(engine: Engine, destination: str) -> list[tuple[datetime, int, int]]:
    """(next try, attempts, failures the backoff counts) of each batch waiting for a retry."""
    rows = engine.store.query(  # type: ignore[attr-defined]
        "SELECT next_attempt_at, attempts, backoff_attempts FROM sync_batches "
        f"WHERE destination = '{destination}' AND attempts > 0 ORDER BY created_at"
    )
    return [(at, int(tries), int(backoff)) for at, tries, backoff in rows]


def fail_times(engine: Engine, remote: Remote, clock: Clock, policy: RetryPolicy, n: int) -> None:
    """The one batch of `wh` fails `n` times, each try at its recorded next try; the clock is
    left at the last failure."""
    remote.script = ["500"] * n
    for i in range(n):
        if i:
            ((next_try, _, _),) = waiting(engine, "wh")
            clock.now = max(clock.now, next_try)
        engine.sync(destination="wh", clock=clock, policy=policy)
    assert remote.script == []


def test_a_failing_batch_holds_back_only_its_own_profiles(
    shop: Engine, remotes: dict[str, Remote], clock: Clock, policy: RetryPolicy
) -> None:
    wh = remotes["wh"]
    carts(shop, range(1), T0)
    shop.compute(T0)
    wh.script = ["500"]
    shop.sync(destination="wh", clock=clock, policy=policy)  # u0's add fails, waits its retry
    carts(shop, range(1, 10), T0 + 50 * MIN)
    shop.compute(T0 + 70 * MIN)  # u0's cart aged out: its remove queues behind the failed add
    shop.sync(destination="wh", clock=clock, policy=policy)  # before u0's retry time
    blocked = profile(shop, 0)
    assert {p for _, _, p in wh.calls} == {profile(shop, n) for n in range(1, 10)}
    assert blocked not in {p for _, _, p in wh.calls}  # its remove did not overtake its add
    clock.advance(H)
    shop.sync(destination="wh", clock=clock, policy=policy)
    assert [op for op, _, p in wh.calls if p == blocked] == ["add", "remove"]
    assert set(wh.members) == {f"{AUDIENCE}/{profile(shop, n)}" for n in range(1, 10)}


def test_a_run_goes_on_past_a_batch_that_fails_again(
    shop: Engine, remotes: dict[str, Remote], clock: Clock, policy: RetryPolicy
) -> None:
    wh = remotes["wh"]
    carts(shop, range(1), T0)
    shop.compute(T0)
    wh.script = ["500"]
    shop.sync(destination="wh", clock=clock, policy=policy)
    carts(shop, range(1, 10), T0 + 10 * MIN)
    shop.compute(T0 + 10 * MIN)
    clock.advance(H)  # u0's batch is due again, and fails again first in the run
    wh.script = ["500"]
    shop.sync(destination="wh", clock=clock, policy=policy)
    assert len(wh.attempts) == 3
    assert {p for _, _, p in wh.calls} == {profile(shop, n) for n in range(1, 10)}


def test_two_failures_in_a_row_end_the_run_for_that_destination(
    shop: Engine, remotes: dict[str, Remote], clock: Clock, policy: RetryPolicy
) -> None:
    ads = remotes["ads"]
    carts(shop, range(20), T0)
    shop.compute(T0)  # more than two batches of 3 for ads
    ads.script = ["500"] * 10
    shop.sync(destination="ads", clock=clock, policy=policy)
    assert len(ads.attempts) == 2  # a down destination is probed, not flooded


def test_after_an_outage_the_next_try_comes_within_the_base_backoff(
    shop: Engine, remotes: dict[str, Remote], clock: Clock, policy: RetryPolicy
) -> None:
    wh = remotes["wh"]
    carts(shop, range(1), T0)
    shop.compute(T0)
    fail_times(shop, wh, clock, policy, 10)
    ((next_try, attempts, backoff),) = waiting(shop, "wh")
    assert (attempts, backoff) == (10, 10)
    assert next_try - clock.now > BASE  # backing off for minutes
    # The destination is healthy again; other profiles enter and are sent before that try.
    carts(shop, range(1, 6), T0 + 5 * MIN)
    shop.compute(T0 + 5 * MIN)
    clock.advance(BASE)
    shop.sync(destination="wh", clock=clock, policy=policy)
    assert {p for _, _, p in wh.calls} == {profile(shop, n) for n in range(1, 6)}
    ((next_try, attempts, backoff),) = waiting(shop, "wh")
    assert next_try <= clock.now + BASE  # within the base backoff, not minutes
    assert (attempts, backoff) == (10, 0)
    clock.now = next_try
    shop.sync(destination="wh", clock=clock, policy=policy)
    assert profile(shop, 0) in {p for _, _, p in wh.calls}
    assert waiting(shop, "wh") == []


def test_a_429_waits_retry_after_then_backs_off_from_the_base(
    shop: Engine, remotes: dict[str, Remote], clock: Clock, policy: RetryPolicy
) -> None:
    wh = remotes["wh"]
    carts(shop, range(1), T0)
    shop.compute(T0)
    fail_times(shop, wh, clock, policy, 10)
    ((clock.now, _, _),) = waiting(shop, "wh")
    wh.script, wh.retry_after = ["429"], 30
    shop.sync(destination="wh", clock=clock, policy=policy)
    assert waiting(shop, "wh") == [(clock.now + timedelta(seconds=30), 11, 0)]
    wh.retry_after = None
    tries = len(wh.attempts)
    clock.advance(timedelta(seconds=29))
    shop.sync(destination="wh", clock=clock, policy=policy)
    assert len(wh.attempts) == tries  # never before Retry-After
    clock.advance(timedelta(seconds=1))
    wh.script = ["500"]
    shop.sync(destination="wh", clock=clock, policy=policy)
    ((next_try, attempts, backoff),) = waiting(shop, "wh")
    assert (attempts, backoff) == (12, 1)
    assert next_try <= clock.now + BASE  # from the base, not from attempt 12


def test_a_failing_conversion_holds_back_only_its_own_profile(
    shop: Engine, remotes: dict[str, Remote], clock: Clock, policy: RetryPolicy
) -> None:
    ads = remotes["ads"]
    shop.ingest_messages([track(0, "order_completed", T0, revenue=1.0)])
    ads.script = ["500"]
    shop.sync(destination="ads", clock=clock, policy=policy)
    assert ads.conversions == {}
    shop.ingest_messages(
        [track(n, "order_completed", T0 + MIN, revenue=float(n + 10)) for n in range(3)]
    )
    shop.sync(destination="ads", clock=clock, policy=policy)  # before u0's retry time
    assert sorted(c["value"] for c in ads.conversions.values()) == [11.0, 12.0]
    clock.advance(H)
    shop.sync(destination="ads", clock=clock, policy=policy)
    assert sorted(c["value"] for c in ads.conversions.values()) == [1.0, 10.0, 11.0, 12.0]


def test_the_backoff_cap_defaults_to_five_minutes(shop: Engine) -> None:
    assert shop.retry_policy().cap == RetryPolicy().cap == 300
