"""`exits: realtime` on cadence audiences: a member leaves the moment an event makes its rule
false, and the removal reaches the destination; nobody enters between refreshes.

Each test runs on DuckDB and on Postgres, with `serve`'s loop, scheduler and delivery driven by
hand on a test clock. `winback` and `winback_slow` are the same lapsed-buyer rule, one with
real-time exits and one without; `viewers` loses a member when its exclusion (a purchase in the
last day) turns true; `rt_subscribers` is real-time, so a subscription start is evaluated in
full and must end a `winback` membership through its exclusion too. On DuckDB, a restart
checks the members whose events were stored but not yet checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from cohortsync.engine import Engine
from cohortsync.moments import to_micros
from cohortsync.realtime.serve_workers import ServeWorkers
from cohortsync.store.outbox import CHANGES
from cohortsync.sync.ledger import ledger_for
from cohortsync.sync.realtime_state import realtime_for
from tests.realtime.conftest import Clock, message

WAREHOUSE = "warehouse"
EXITS_YAML = f"""\
segments:
  lapsed:
    all:
      - {{event: order_completed, between: [10d, 2d]}}
      - not: {{event: order_completed, within: 2d}}
  recent_buyer_1d: {{event: order_completed, within: 1d}}
  viewed_3d: {{event: product_viewed, within: 3d}}
  subscribed:
    event: subscription_cancelled
    since: subscription_started
    count: {{eq: 0}}
audiences:
  winback:
    segment: lapsed
    exclude: [subscribed]
    refresh: 1d
    exits: realtime
    destinations: [{WAREHOUSE}]
  winback_slow:
    segment: lapsed
    exclude: [subscribed]
    refresh: 1d
    destinations: [{WAREHOUSE}]
  viewers:
    segment: viewed_3d
    exclude: [recent_buyer_1d]
    refresh: 1d
    exits: realtime
    destinations: [{WAREHOUSE}]
  rt_subscribers: {{segment: subscribed, refresh: realtime}}
destinations:
  {WAREHOUSE}: {{type: warehouse, url: "duckdb:///warehouse.duckdb"}}
"""


@pytest.fixture
def exits_dir(project_on_both: Path) -> Path:
    """The project above, once on DuckDB and once on Postgres."""
    path = project_on_both / "cohortsync.yml"
    path.write_text(path.read_text(encoding="utf-8") + EXITS_YAML, encoding="utf-8")
    return project_on_both


@pytest.fixture
def served(exits_dir: Path, clock: Clock) -> Iterator[tuple[Engine, ServeWorkers]]:
    """The engine and what `serve` runs beside ingest, stepped by the test (no threads)."""
    with Engine.open(exits_dir) as engine:
        workers = engine.serve_workers(clock)
        try:
            yield engine, workers
        finally:
            workers.delivery.close()


def order(user: str, at: datetime) -> dict[str, Any]:
    return message("track", user, at, event="Order Completed", properties={"revenue": 40})


def profile(engine: Engine, user: str) -> str:
    return realtime_for(engine.store).owners([("user_id", user)])[("user_id", user)]


def members(engine: Engine, audience: str) -> set[str]:
    return {p for p, _ in engine.store.membership("audience", audience)}


def queued(engine: Engine, audience: str) -> list[tuple[str, str]]:
    """(op, profile) of the changes waiting for the warehouse for `audience`."""
    batches = ledger_for(engine.store).peek(WAREHOUSE, CHANGES, 1_000, audience)
    return sorted((r.op, r.profile_id) for b in batches for r in b.records)


def in_warehouse(root: Path, workers: ServeWorkers, audience: str) -> set[str]:
    """Deliver what is queued, then read the warehouse table's members of `audience`."""
    workers.delivery.step()
    workers.delivery.destinations[WAREHOUSE].close()  # let the file be read from outside
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as conn:
        rows = conn.execute(
            "SELECT profile_id FROM cohortsync.audience_members WHERE audience = ?", [audience]
        ).fetchall()
    return {str(r[0]) for r in rows}


def lapse(engine: Engine, workers: ServeWorkers, clock: Clock, *users: str) -> None:
    """Each user ordered 5 days ago; a scheduled refresh then makes them lapsed members."""
    engine.ingest_messages([order(u, clock.now - timedelta(days=5)) for u in users])
    workers.loop.step()
    report = workers.cadence.run_due(to_micros(clock.now))
    assert report is not None and report.row("winback").entered == len(users)


def test_a_member_who_orders_leaves_at_once_and_the_destination_drops_them(
    served: tuple[Engine, ServeWorkers], clock: Clock, exits_dir: Path
) -> None:
    engine, workers = served
    lapse(engine, workers, clock, "u1", "u2")
    u1, u2 = profile(engine, "u1"), profile(engine, "u2")
    assert in_warehouse(exits_dir, workers, "winback") == {u1, u2}

    clock.now += timedelta(minutes=5)
    engine.ingest_messages([order("u1", clock.now)])
    report = workers.loop.step()
    assert (report.event_profiles, report.exited, report.entered) == (1, 1, 0)
    assert members(engine, "winback") == {u2}
    assert members(engine, "winback_slow") == {u1, u2}  # exits: cadence waits for the refresh
    assert queued(engine, "winback") == [("remove", u1)]
    assert queued(engine, "winback_slow") == []
    assert in_warehouse(exits_dir, workers, "winback") == {u2}
    assert in_warehouse(exits_dir, workers, "winback_slow") == {u1, u2}
    assert ledger_for(engine.store).acknowledged(WAREHOUSE, "winback") == {u2: False}

    # The next refresh finds the exit recorded already: no change twice, nothing queued.
    clock.now += timedelta(days=1)
    refresh = workers.cadence.run_due(to_micros(clock.now))
    assert refresh is not None
    assert (refresh.row("winback").entered, refresh.row("winback").exited) == (0, 0)
    assert (refresh.row("winback_slow").entered, refresh.row("winback_slow").exited) == (0, 1)
    assert members(engine, "winback") == members(engine, "winback_slow") == {u2}
    assert queued(engine, "winback") == []
    history = engine.store.membership("audience", "winback", to_micros(clock.now))
    assert history == [(u2, False)]


def test_a_non_members_order_evaluates_nobody_and_records_nothing(
    served: tuple[Engine, ServeWorkers], clock: Clock
) -> None:
    engine, workers = served
    lapse(engine, workers, clock, "u1")
    u1 = profile(engine, "u1")
    assert queued(engine, "winback") == [("add", u1)]  # the refresh's entry, not yet delivered
    clock.now += timedelta(minutes=5)
    engine.ingest_messages([order("u3", clock.now), order("u4", clock.now)])
    report = workers.loop.step()
    assert (report.event_profiles, report.exited, report.entered) == (0, 0, 0)
    assert members(engine, "winback") == {u1}
    assert queued(engine, "winback") == [("add", u1)]


def test_an_exclusion_turning_true_ends_the_membership_and_nobody_enters_between_refreshes(
    served: tuple[Engine, ServeWorkers], clock: Clock, exits_dir: Path
) -> None:
    engine, workers = served
    engine.ingest_messages(
        [message("track", u, clock.now - timedelta(hours=1), event="Product Viewed") for u in "ab"]
    )
    workers.loop.step()
    assert workers.cadence.run_due(to_micros(clock.now)) is not None
    a, b = profile(engine, "a"), profile(engine, "b")
    assert members(engine, "viewers") == {a, b}
    assert in_warehouse(exits_dir, workers, "viewers") == {a, b}

    clock.now += timedelta(minutes=5)
    engine.ingest_messages(
        [
            order("a", clock.now),  # still viewed in the last 3 days: the exclusion ends it
            message("track", "c", clock.now, event="Product Viewed"),  # true, but not a member
            message("track", "b", clock.now, event="Product Viewed"),  # a member still true
        ]
    )
    report = workers.loop.step()
    assert (report.exited, report.entered) == (1, 0)
    assert members(engine, "viewers") == {b}
    assert queued(engine, "viewers") == [("remove", a)]
    assert in_warehouse(exits_dir, workers, "viewers") == {b}

    clock.now += timedelta(days=1)  # the refresh enters c, and a once its order is a day old
    refresh = workers.cadence.run_due(to_micros(clock.now) + 1)
    assert refresh is not None
    assert (refresh.row("viewers").entered, refresh.row("viewers").exited) == (2, 0)
    assert members(engine, "viewers") == {a, b, profile(engine, "c")}


def test_an_event_a_real_time_audience_reads_also_checks_the_exits(
    served: tuple[Engine, ServeWorkers], clock: Clock
) -> None:
    """A subscription start is evaluated in full (`rt_subscribers` reads it); the lapsed member
    who subscribed leaves `winback` through its exclusion in the same round, and a subscriber
    whose view makes the `viewers` rule true is not entered there (that waits for a refresh)."""
    engine, workers = served
    lapse(engine, workers, clock, "u1", "u2")
    clock.now += timedelta(minutes=5)
    engine.ingest_messages(
        [
            message("track", "u1", clock.now, event="Subscription Started"),
            message("track", "v", clock.now, event="Product Viewed"),
            message("track", "v", clock.now, event="Subscription Started"),
        ]
    )
    report = workers.loop.step()
    u1, u2, v = profile(engine, "u1"), profile(engine, "u2"), profile(engine, "v")
    assert members(engine, "rt_subscribers") == {u1, v}
    assert members(engine, "winback") == {u2}
    assert members(engine, "winback_slow") == {u1, u2}
    assert members(engine, "viewers") == set()
    assert (report.entered, report.exited) == (4, 1)  # rt_subscribers and its segment; winback


def test_a_restart_checks_the_members_whose_events_were_stored_but_not_yet_checked(
    project_dir: Path, clock: Clock
) -> None:
    """On the embedded store the receive-time cursor covers these events too: an order stored
    just before a crash, never checked, ends the membership when `serve` starts again."""
    path = project_dir / "cohortsync.yml"
    path.write_text(path.read_text(encoding="utf-8") + EXITS_YAML, encoding="utf-8")
    with Engine.open(project_dir) as engine:
        workers = engine.serve_workers(clock)
        try:
            lapse(engine, workers, clock, "u1", "u2")
            clock.now += timedelta(minutes=5)
            engine.ingest_messages([order("u1", clock.now)])  # the process dies before a round
        finally:
            workers.delivery.close()
    with Engine.open(project_dir) as engine:
        workers = engine.serve_workers(clock)
        try:
            assert len(members(engine, "winback")) == 2
            workers.loop.catch_up()
            assert members(engine, "winback") == {profile(engine, "u2")}
            assert queued(engine, "winback") == [
                ("add", profile(engine, "u2"))  # the refresh's entry of u1 and its removal cancel
            ]
        finally:
            workers.delivery.close()
