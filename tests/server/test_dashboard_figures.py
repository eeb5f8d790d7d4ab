"""The dashboard's figures are the store's truth, on DuckDB and on Postgres: events per minute,
profiles, audience sizes, each day's size, entries and exits, and dead letters."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from cohortsync.engine import AudienceSize, Day, Engine
from tests.sync.conftest import MIN, SYNC_YAML, T0, Clock, H, person, track
from tests.sync.scripted import REMOTES, Remote

AUDIENCE = "cio_cart_1h"
DAY = timedelta(days=1)


@pytest.fixture
def shop(project_on_both: Path) -> Iterator[Engine]:
    """Three known people on a project whose audience goes to scripted destinations."""
    settings = project_on_both / "cohortsync.yml"
    settings.write_text(settings.read_text(encoding="utf-8") + SYNC_YAML, encoding="utf-8")
    REMOTES.clear()
    REMOTES.update(ads=Remote(), wh=Remote())
    with Engine.open(project_on_both) as engine:
        engine.ingest_messages([person(n, T0 - 2 * H) for n in range(3)])
        yield engine
    REMOTES.clear()


def naive(moment: datetime) -> datetime:
    return moment.replace(tzinfo=None)


def test_entries_exits_and_sizes_per_day_follow_the_membership_history(shop: Engine) -> None:
    shop.ingest_messages([track(n, "added_to_cart", T0 - 10 * MIN) for n in (0, 1)])
    shop.compute(T0)  # both enter on May 1
    shop.compute(T0 + 2 * H)  # their carts aged out: both leave on May 1
    shop.ingest_messages([track(2, "added_to_cart", T0 + DAY - 10 * MIN)])
    shop.compute(T0 + DAY)  # one enters on May 2

    days = shop.figures.audience_history(AUDIENCE, T0 + DAY + H, 3)
    first = naive(T0).replace(hour=0)
    assert days == [
        Day(first - DAY, 0, 0, 0),
        Day(first, 0, 2, 2),
        Day(first + DAY, 1, 1, 0),
    ]
    held = sum(1 for m in shop.members(AUDIENCE) if m.holdout)
    assert shop.figures.audience_sizes() == {AUDIENCE: AudienceSize(1, held)}
    assert shop.figures.profile_count() == 3


def test_a_size_carries_the_members_who_entered_before_the_window(shop: Engine) -> None:
    shop.ingest_messages([track(n, "added_to_cart", T0 - 10 * MIN) for n in (0, 1)])
    shop.compute(T0)
    days = shop.figures.audience_history(AUDIENCE, T0 + 5 * DAY, 2)
    assert [(d.size, d.entered, d.exited) for d in days] == [(2, 0, 0), (2, 0, 0)]


def test_events_per_minute_count_each_minute_and_fill_the_quiet_ones(shop: Engine) -> None:
    shop.ingest_messages(
        [track(0, "added_to_cart", T0 - 10 * MIN), track(1, "product_viewed", T0 - 10 * MIN)]
        + [track(2, "added_to_cart", T0 - 3 * MIN + timedelta(seconds=s)) for s in (1, 59)]
    )
    minutes = shop.figures.events_per_minute(T0, 1)
    assert len(minutes) == 60 and minutes[-1][0] == naive(T0)
    busy = {m: n for m, n in minutes if n}
    assert busy == {naive(T0 - 10 * MIN): 2, naive(T0 - 3 * MIN): 2}


def test_dead_letters_are_grouped_until_retried(shop: Engine) -> None:
    shop.ingest_messages([track(n, "added_to_cart", T0 - 10 * MIN) for n in (0, 1)])
    shop.compute(T0)
    REMOTES["wh"].script = ["400"]
    shop.sync(destination="wh", clock=Clock())
    [group] = shop.figures.dead_letters("wh")
    assert (group.audience, group.records) == (AUDIENCE, 2)
    assert shop.figures.dead_letters("ads") == []
    shop.retry_dead(destination="wh")
    assert shop.figures.dead_letters("wh") == []
