"""The outbox on Postgres: planning, claims, answers; several workers claiming at once.

Memberships, identities and events are written with plain SQL (what compute and ingest leave
behind), then the outbox is driven the way the delivery worker drives it.
"""

from __future__ import annotations

import itertools
import multiprocessing
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from cohortsync.store.outbox import (
    CHANGES,
    CONVERSIONS,
    ClaimedBatch,
    ConversionRoute,
    Resolution,
    Route,
)
from cohortsync.store.postgres_store import PostgresStore
from cohortsync.sync.ledger import Ledger, ledger_for
from cohortsync.sync.planner import plan_changes
from tests.postgres import postgres_schema

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
ADS = Route("ads", "cart", include_holdout=False)
WH = Route("wh", "cart", include_holdout=True)


@dataclass
class Shop:
    """A migrated Postgres store and a plain connection to write what compute would."""

    url: str
    store: PostgresStore
    sql: psycopg.Connection[Any]

    @property
    def outbox(self) -> Ledger:
        return ledger_for(self.store)

    def enter(self, profiles: Sequence[str], audience: str = "cart", holdout: bool = False) -> None:
        for p in profiles:
            self.sql.execute(
                "INSERT INTO identities VALUES ('email', %s, %s, %s) ON CONFLICT DO NOTHING",
                (f"{p}@example.com", p, T0),
            )
            self.sql.execute(
                "INSERT INTO memberships VALUES ('audience', %s, %s, %s, NULL, %s, 1)",
                (audience, p, T0, holdout),
            )

    def exit(self, profiles: Sequence[str], audience: str = "cart") -> None:
        self.sql.execute(
            "UPDATE memberships SET exited_at = %s WHERE kind = 'audience' AND name = %s "
            "AND profile_id = ANY(%s) AND exited_at IS NULL",
            (T0, audience, list(profiles)),
        )

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        return self.sql.execute(query, params).fetchall()  # type: ignore[arg-type]


@pytest.fixture
def shop() -> Iterator[Shop]:
    with postgres_schema() as url:
        store = PostgresStore(url)
        store.migrate()
        with psycopg.connect(url, autocommit=True) as sql:
            yield Shop(url, store, sql)
        store.close()


def claim(shop: Shop, destination: str = "ads", size: int = 100, at: datetime = T0) -> ClaimedBatch:
    batch = shop.outbox.claim(destination, CHANGES, size, at)
    assert batch is not None
    return batch


def sent(batch: ClaimedBatch) -> list[tuple[str, str]]:
    return [(r.profile_id, r.op) for r in batch.records]


def test_plan_queues_members_per_route_and_keeps_holdout_from_ad_platforms(shop: Shop) -> None:
    shop.enter(["a", "b"])
    shop.enter(["h"], holdout=True)
    planned = shop.outbox.plan([ADS, WH], T0)
    assert (planned.adds, planned.removes) == (5, 0)
    assert sent(claim(shop, "ads")) == [("a", "add"), ("b", "add")]
    wh = claim(shop, "wh")
    assert sent(wh) == [("a", "add"), ("b", "add"), ("h", "add")]
    assert wh.records[0].identifiers == {"email": "a@example.com"}
    assert shop.outbox.plan([ADS, WH], T0).total == 0  # nothing new: nothing queued twice


def test_enter_then_exit_before_delivery_coalesces_to_nothing(shop: Shop) -> None:
    shop.enter(["a", "b", "c"])
    shop.outbox.plan([ADS], T0)
    shop.exit(["b"])
    assert shop.outbox.plan([ADS], T0).total == 0
    assert sent(claim(shop)) == [("a", "add"), ("c", "add")]


def test_a_remove_waits_for_its_add_in_flight(shop: Shop) -> None:
    shop.enter(["a", "b"])
    shop.outbox.plan([ADS], T0)
    adds = claim(shop, size=1)
    assert sent(adds) == [("a", "add")]
    shop.exit(["a"])
    assert shop.outbox.plan([ADS], T0).removes == 1
    # Another worker (thread) is handed b's add, never a's remove while a's add is in flight.
    other: list[ClaimedBatch | None] = []
    worker = threading.Thread(
        target=lambda: other.append(shop.outbox.claim("ads", CHANGES, 10, T0))
    )
    worker.start()
    worker.join()
    assert other[0] is not None and sent(other[0]) == [("b", "add")]
    shop.outbox.resolve(adds, Resolution(), T0)
    removal = claim(shop)
    assert sent(removal) == [("a", "remove")]
    assert removal.records[0].identifiers == {"email": "a@example.com"}


def test_a_remove_reuses_the_identifiers_the_destination_acknowledged(shop: Shop) -> None:
    shop.enter(["a"])
    shop.outbox.plan([ADS], T0)
    shop.outbox.resolve(claim(shop), Resolution(), T0)
    shop.sql.execute("UPDATE identities SET value = 'new@example.com' WHERE profile_id = 'a'")
    shop.exit(["a"])
    shop.outbox.plan([ADS], T0)
    assert claim(shop).records[0].identifiers == {"email": "a@example.com"}


def test_a_claimed_batch_is_handed_to_no_other_worker_until_settled(shop: Shop) -> None:
    shop.enter(["a"])
    shop.outbox.plan([ADS], T0)
    first = claim(shop)
    other: list[ClaimedBatch | None] = []
    worker = threading.Thread(
        target=lambda: other.append(shop.outbox.claim("ads", CHANGES, 10, T0))
    )
    worker.start()
    worker.join()
    assert other == [None]
    shop.outbox.defer(first, "timeout", T0 + timedelta(seconds=10), T0)
    assert shop.outbox.claim("ads", CHANGES, 10, T0 + timedelta(seconds=5)) is None
    again = claim(shop, at=T0 + timedelta(seconds=10))
    assert (again.batch_id, again.attempts) == (first.batch_id, 1)


def test_rejected_records_are_kept_out_until_they_leave_and_come_back(shop: Shop) -> None:
    shop.enter(["a", "b"])
    shop.outbox.plan([ADS], T0)
    batch = claim(shop)
    shop.outbox.resolve(batch, Resolution(rejected={batch.records[1].record_id: "bad email"}), T0)
    (status,) = shop.outbox.status([ADS], [], {("ads", "cart"): ["email"]})
    assert (status.acknowledged, status.failed, status.pending) == (1, 1, 0)
    assert shop.outbox.acknowledged("ads", "cart") == {"a": False}
    assert shop.outbox.plan([ADS], T0).total == 0  # a rejected member is not sent again
    shop.exit(["b"])
    assert shop.outbox.plan([ADS], T0).total == 0  # and never removed
    shop.enter(["b"])
    assert shop.outbox.plan([ADS], T0).adds == 1  # a new stay is tried afresh


def test_dead_letters_block_replanning_until_retried(shop: Shop) -> None:
    shop.enter(["a", "b"])
    shop.outbox.plan([ADS], T0)
    shop.outbox.dead_letter(claim(shop), "refused: 400 bad request", T0)
    (status,) = shop.outbox.status([ADS], [], {("ads", "cart"): ["email"]})
    assert (status.dead_lettered, status.pending, status.desired) == (2, 0, 2)
    assert shop.outbox.plan([ADS], T0).total == 0
    assert shop.outbox.retry_dead("ads", None, T0) == 2
    assert shop.outbox.plan([ADS], T0).adds == 2
    assert sent(claim(shop)) == [("a", "add"), ("b", "add")]


def test_records_to_retry_form_their_own_batch_and_the_rest_goes_on(shop: Shop) -> None:
    shop.enter([f"p{n}" for n in range(4)])
    shop.outbox.plan([ADS], T0)
    batch = claim(shop, size=3)
    flaky = batch.records[1].record_id
    later = T0 + timedelta(seconds=30)
    shop.outbox.resolve(batch, Resolution(retry={flaky: "timeout"}, retry_at=later), T0)
    rest = claim(shop)
    assert sent(rest) == [("p3", "add")]  # not held back by the split batch
    shop.outbox.resolve(rest, Resolution(), T0)
    assert shop.outbox.claim("ads", CHANGES, 10, T0 + timedelta(seconds=29)) is None
    retried = claim(shop, at=later)
    assert [r.record_id for r in retried.records] == [flaky]
    assert retried.attempts == 1
    shop.outbox.resolve(retried, Resolution(), later)
    assert set(shop.outbox.acknowledged("ads", "cart")) == {"p0", "p1", "p2", "p3"}


def test_a_record_to_retry_gives_way_to_a_newer_change(shop: Shop) -> None:
    shop.enter(["a"])
    shop.outbox.plan([ADS], T0)
    batch = claim(shop)
    shop.exit(["a"])
    shop.outbox.plan([ADS], T0)  # a's remove waits behind the add in flight
    record = batch.records[0].record_id
    shop.outbox.resolve(batch, Resolution(retry={record: "timeout"}), T0)
    assert sent(claim(shop)) == [("a", "remove")]


def test_a_failing_destination_gets_nothing_new_before_its_retry_time(shop: Shop) -> None:
    shop.enter(["a", "b"])
    shop.outbox.plan([ADS, WH], T0)
    shop.outbox.defer(claim(shop, size=1), "429", T0 + timedelta(minutes=1), T0)
    assert shop.outbox.claim("ads", CHANGES, 10, T0) is None
    assert sent(claim(shop, "wh")) == [("a", "add"), ("b", "add")]  # others go on


def test_per_profile_plans_touch_only_their_profiles(shop: Shop) -> None:
    shop.enter(["a", "b"])
    with shop.store.sql.transaction() as tx:  # the caller's transaction
        counts = plan_changes(tx, [ADS], T0, profiles=["b"])
    assert counts.adds == 1
    assert sent(claim(shop)) == [("b", "add")]


def test_conversions_are_queued_once_per_destination(shop: Shop) -> None:
    for n, revenue in enumerate(["42.5", "n/a"]):
        shop.sql.execute(
            "INSERT INTO events (message_id, type, source, event, event_key, profile_id, "
            '"timestamp", original_timestamp, received_at, properties) VALUES '
            "(%s, 'track', 'web', 'order_completed', 'order_completed', 'a', %s, %s, %s, "
            "%s::jsonb)",
            (f"m{n}", T0, T0, T0, f'{{"revenue": "{revenue}", "currency": "eur"}}'),
        )
    shop.enter(["a"])
    routes = [
        ConversionRoute("capi", "order_completed", "Purchase", "revenue", "USD"),
        ConversionRoute("wh", "order_completed", "Purchase", "revenue"),
    ]
    assert shop.outbox.plan_conversions(routes, T0).conversions == 4
    assert shop.outbox.plan_conversions(routes, T0).conversions == 0
    batch = shop.outbox.claim("capi", CONVERSIONS, 10, T0)
    assert batch is not None
    first, second = batch.records
    assert first.conversion["message_id"] == "m0"
    assert (first.conversion["value"], first.conversion["currency"]) == (42.5, "EUR")
    assert second.conversion["value"] is None
    assert first.identifiers == {"email": "a@example.com"}
    shop.outbox.resolve(batch, Resolution(rejected={second.record_id: "bad value"}), T0)
    capi = shop.outbox.status([], ["capi"], {})[0]
    assert (capi.desired, capi.acknowledged, capi.failed, capi.pending) == (2, 1, 1, 0)
    assert shop.outbox.plan_conversions(routes, T0).conversions == 0


def test_sync_runs_are_logged_newest_first(shop: Shop) -> None:
    from cohortsync.store.outbox import SyncRunRecord

    for n in range(3):
        shop.outbox.log_run(SyncRunRecord(T0, 1.5, False, None, None, n, 0, 0, 0, 0, 0))
    assert [r.planned for r in shop.outbox.runs(2)] == [2, 1]


# --- several workers at once -------------------------------------------------------------

PEOPLE = [f"p{n:03d}" for n in range(120)]
DESTINATIONS = ("ads", "wh")


def drain(url: str, stop_at: float, log: list[tuple[int, str, int, str, str, str]]) -> None:
    """Claim and resolve until `stop_at` passed and nothing is left, logging each step.

    Each log line: (monotonic ns, 'claimed'|'settling', change_id, destination, profile, op).
    'settling' is logged before the answer is committed, 'claimed' after the claim was.
    """
    store = PostgresStore(url)
    outbox = ledger_for(store)
    idle = 0
    try:
        while time.time() < stop_at or idle < 3:
            found = False
            for destination in DESTINATIONS:
                batch = outbox.claim(destination, CHANGES, 7, datetime.now(UTC))
                if batch is None:
                    continue
                found = True
                stamp = time.monotonic_ns()
                log += [
                    (stamp, "claimed", r.record_id, destination, r.profile_id, r.op)
                    for r in batch.records
                ]
                time.sleep(random.uniform(0, 0.003))  # the destination answers
                stamp = time.monotonic_ns()
                log += [
                    (stamp, "settling", r.record_id, destination, r.profile_id, r.op)
                    for r in batch.records
                ]
                outbox.resolve(batch, Resolution(), datetime.now(UTC))
            idle = 0 if found else idle + 1
            if not found:
                time.sleep(0.02)
    finally:
        store.close()


def _drain_process(url: str, start: Any, out: Any) -> None:
    log: list[tuple[int, str, int, str, str, str]] = []
    out.put("ready")
    drain(url, start.get(timeout=60), log)
    out.put(log)


def flap(shop: Shop, seconds: float) -> None:
    """Move random people in and out of the audience, planning after every move."""
    rng = random.Random(11)
    inside: set[str] = set()
    deadline = time.time() + seconds
    while time.time() < deadline:
        moving = rng.sample(PEOPLE, 15)
        shop.exit([p for p in moving if p in inside])
        shop.enter([p for p in moving if p not in inside])
        inside ^= set(moving)
        shop.outbox.plan([ADS, WH], datetime.now(UTC))
        time.sleep(0.01)


def check_exactly_once_in_order(shop: Shop, log: list[tuple[int, str, int, str, str, str]]) -> None:
    claimed = [entry for entry in log if entry[1] == "claimed"]
    ids = [entry[2] for entry in claimed]
    assert len(ids) == len(set(ids)), "a change was handed to two workers"
    delivered = {row[0] for row in shop.rows("SELECT record_id FROM delivery_log")}
    assert set(ids) == delivered
    assert shop.rows("SELECT count(*) FROM outbox") == [(0,)]
    per_key: dict[tuple[str, str], list[tuple[int, str, int, str]]] = {}
    for stamp, step, change_id, destination, profile, op in sorted(log):
        per_key.setdefault((destination, profile), []).append((stamp, step, change_id, op))
    for key, steps in per_key.items():
        # claimed c1, settling c1, claimed c2, ...: never two changes of one key in flight
        assert [s for _, s, _, _ in steps] == ["claimed", "settling"] * (len(steps) // 2), key
        ops = [op for _, step, _, op in steps if step == "claimed"]
        changes = [c for _, step, c, _ in steps if step == "claimed"]
        assert changes == sorted(changes), key
        assert all(a != b for a, b in itertools.pairwise(ops)), key  # add, remove, ...
        assert ops[0] == "add", key
    desired = {
        p for (p,) in shop.rows("SELECT profile_id FROM memberships WHERE exited_at IS NULL")
    }
    for destination in DESTINATIONS:
        assert set(shop.outbox.acknowledged(destination, "cart")) == desired


def test_two_threads_claiming_at_once_deliver_every_change_once_in_order(shop: Shop) -> None:
    log: list[tuple[int, str, int, str, str, str]] = []
    stop_at = time.time() + 3
    workers = [threading.Thread(target=drain, args=(shop.url, stop_at, log)) for _ in range(2)]
    for worker in workers:
        worker.start()
    flap(shop, 2.5)
    for worker in workers:
        worker.join(timeout=60)
    assert len({entry[2] for entry in log}) > 200
    check_exactly_once_in_order(shop, log)


def test_two_processes_claiming_at_once_deliver_every_change_once_in_order(shop: Shop) -> None:
    context = multiprocessing.get_context("spawn")
    start, out = context.Queue(), context.Queue()
    workers = [
        context.Process(target=_drain_process, args=(shop.url, start, out)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    assert [out.get(timeout=60) for _ in workers] == ["ready", "ready"]
    for _ in workers:
        start.put(time.time() + 3.5)
    flap(shop, 3)
    logs = [out.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    assert all(logs), "both processes delivered"
    check_exactly_once_in_order(shop, [entry for log in logs for entry in log])


def _order(conn: psycopg.Connection[Any], message_id: str) -> None:
    conn.execute(
        "INSERT INTO events (message_id, type, source, event, event_key, profile_id, "
        '"timestamp", original_timestamp, received_at, properties) VALUES '
        "(%s, 'track', 'web', 'order_completed', 'order_completed', 'a', %s, %s, %s, '{}'::jsonb)",
        (message_id, T0, T0, T0),
    )


def test_an_order_committed_after_a_planning_began_is_planned_next(shop: Shop) -> None:
    """A planning reads only what was written since the last one, yet an event whose
    transaction was still open while a planning ran (so it could not see it) is not lost."""
    routes = [ConversionRoute("capi", "order_completed", "Purchase")]
    _order(shop.sql, "m0")
    assert shop.outbox.plan_conversions(routes, T0).conversions == 1
    with psycopg.connect(shop.url) as late:  # an ingest transaction, open across a planning
        _order(late, "m1")
        _order(shop.sql, "m2")  # begun and committed later, while m1 is still open
        assert shop.outbox.plan_conversions(routes, T0 + timedelta(minutes=1)).conversions == 1
        late.commit()
    assert shop.outbox.plan_conversions(routes, T0 + timedelta(minutes=2)).conversions == 1
    assert shop.outbox.plan_conversions(routes, T0 + timedelta(minutes=3)).conversions == 0
    cursor = shop.sql.execute("SELECT count(*) FROM conversion_cursors").fetchone()
    assert cursor == (1,)
    queued = shop.sql.execute("SELECT message_id FROM conversion_outbox ORDER BY 1").fetchall()
    assert queued == [("m0",), ("m1",), ("m2",)]
