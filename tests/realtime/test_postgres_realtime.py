"""Real time on a Postgres store shared by several workers.

The events are ingested by a DuckDB engine (its batch compute is the oracle) and copied row for
row into the Postgres tables, each relevant event marking its profile pending as the Postgres
store's ingest does; the real-time loop then runs on the Postgres side.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from cohortsync.audiences.compute import compute_members
from cohortsync.engine import Engine
from cohortsync.events.timestamps import to_micros
from cohortsync.realtime.evaluation import ProfileProcessor
from cohortsync.realtime.index import RealtimeIndex, build_index
from cohortsync.realtime.loop import RealtimeLoop
from cohortsync.store.base import Store
from cohortsync.store.outbox import Route
from cohortsync.store.postgres_schema import MIGRATIONS
from cohortsync.store.postgres_shared import PgConnections, PgSql
from cohortsync.store.realtime import ProfileOutcome
from cohortsync.store.records import Message
from cohortsync.sync.realtime_state import TIMER_LEASE, RealtimeState, realtime_for
from tests.postgres import postgres_schema
from tests.realtime.conftest import T0, Clock, message
from tests.realtime.test_consistency import stream

ROUTE = Route("crm", "rt_purchase_suppress", include_holdout=False)


@pytest.fixture
def pg() -> Iterator[PgConnections]:
    """A fresh Postgres schema with the store's tables."""
    with postgres_schema() as url:
        db = PgConnections(url)
        with db.transaction() as cur:
            for _, _, sql in MIGRATIONS:
                cur.execute(sql.encode())
        yield db
        db.close()


@dataclass
class RealtimeOnly:
    """The part of a store the real-time loop and processor use."""

    sql: PgSql
    tracks_pending: bool = True


class Mirror:
    """Copies what a DuckDB engine stored into the Postgres tables, marking profiles pending."""

    def __init__(self, engine: Engine, db: PgConnections, index: RealtimeIndex) -> None:
        self.engine = engine
        self.db = db
        self.index = index
        self.copied: set[str] = set()
        self.stored: list[Message] = []
        engine.on_stored(lambda messages, _profiles: self.stored.extend(messages))

    def ingest(self, raws: Sequence[dict[str, Any]]) -> list[Message]:
        """Ingest into the engine, copy to Postgres; the stored messages."""
        self.stored.clear()
        self.engine.ingest_messages(raws)
        self.copy()
        return list(self.stored)

    def copy(self) -> None:
        query = self.engine.store.query  # type: ignore[attr-defined]
        events = [
            r
            for r in query(
                'SELECT message_id, type, source, event_key, profile_id, "timestamp", '
                "received_at, properties::VARCHAR FROM events"
            )
            if r[0] not in self.copied
        ]
        with self.db.transaction() as cur:
            for table in ("identities", "profile_traits", "profile_aliases"):
                cur.execute(f"DELETE FROM {table}")  # type: ignore[arg-type]
            cur.executemany(
                "INSERT INTO identities VALUES (%s, %s, %s, %s)",
                query("SELECT kind, value, profile_id, first_seen FROM identities"),
            )
            cur.executemany(
                "INSERT INTO profile_traits VALUES (%s, %s, %s::jsonb, %s)",
                query("SELECT profile_id, name, value::VARCHAR, updated_at FROM profile_traits"),
            )
            cur.executemany(
                "INSERT INTO profile_aliases VALUES (%s, %s)",
                query("SELECT profile_id, canonical_id FROM profile_aliases"),
            )
            cur.executemany(
                "INSERT INTO events (message_id, type, source, event_key, profile_id, "
                '"timestamp", original_timestamp, received_at, properties) '
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)",
                [(m, t, s, k, p, ts, ts, rcv, props) for m, t, s, k, p, ts, rcv, props in events],
            )
            for m, kind, _, key, profile, *_ in events:
                self.copied.add(m)
                if kind in ("identify", "alias") or key in self.index.events:
                    mark(cur, profile)


def mark(cur: Any, profile_id: str) -> None:
    """Mark a profile pending as storing a relevant event does (a version never reused)."""
    cur.execute(
        "INSERT INTO realtime_pending VALUES "
        "(%s, (extract(epoch from clock_timestamp()) * 1000000)::bigint, now()) "
        "ON CONFLICT (profile_id) DO UPDATE "
        "SET version = greatest(realtime_pending.version + 1, excluded.version)",
        (profile_id,),
    )


def profile_of(s: Setup, kind: str, value: str) -> str:
    """The profile the engine resolved an identifier to."""
    found = s.engine.store.find_profile(kind, value)
    assert found is not None
    return found


def current(db: PgConnections, kind: str, name: str) -> dict[str, bool]:
    rows = db.query(
        "SELECT profile_id, holdout FROM memberships "
        "WHERE kind = %s AND name = %s AND exited_at IS NULL",
        (kind, name),
    )
    return {str(p): bool(h) for p, h in rows}


@dataclass
class Setup:
    engine: Engine
    db: PgConnections
    realtime: RealtimeState
    processor: ProfileProcessor
    mirror: Mirror

    def loop(self, clock: Clock) -> RealtimeLoop:
        return RealtimeLoop(self.processor.store, self.processor, clock)

    def processor_copy(self) -> ProfileProcessor:
        p = self.processor
        return ProfileProcessor(p.store, p.project, p.index, p.routes)


@pytest.fixture
def setup(realtime_dir: Path, pg: PgConnections) -> Iterator[Setup]:
    with Engine.open(realtime_dir) as engine:
        index = build_index(engine.segments)
        realtime = RealtimeState(PgSql(pg), tracks_pending=True)
        store = cast(Store, RealtimeOnly(PgSql(pg)))
        processor = ProfileProcessor(store, engine.segments, index, [ROUTE])
        yield Setup(engine, pg, realtime, processor, Mirror(engine, pg, index))


def check(s: Setup, moment: datetime) -> None:
    """Every real-time name on Postgres holds what batch compute finds for the instant."""
    batch = compute_members(s.engine.store, s.engine.segments, to_micros(moment))
    for kind, name in s.processor.index.scope:
        assert set(current(s.db, kind, name)) == batch.ids(kind, name), f"{kind} {name}"
    for name in s.processor.index.audiences:
        assert current(s.db, "audience", name) == dict(batch.audiences[name]), name


@pytest.mark.parametrize("seed", [1, 2])
def test_realtime_on_postgres_equals_batch_at_every_checkpoint(
    setup: Setup, clock: Clock, seed: int
) -> None:
    loop = setup.loop(clock)
    checkpoints = [T0 + timedelta(minutes=67 * k) for k in range(1, 4 * 24 * 60 // 67)]
    fired = 0
    for moment, raw in stream(seed):
        while checkpoints and checkpoints[0] < moment:
            clock.now = checkpoints.pop(0)
            fired += loop.step().timer_profiles
            check(setup, clock.now)
        clock.now = moment
        loop.submit(setup.mirror.ingest([raw]))
        loop.step()
    for point in checkpoints:
        clock.now = point
        fired += loop.step().timer_profiles
        check(setup, point)
    assert fired > 0  # windows closed by timers
    assert setup.realtime.pending(2**62) == []  # every mark cleared by its evaluation
    # The outbox was planned with each change: the waiting adds are the members to deliver.
    waiting = setup.db.query(
        "SELECT profile_id, op FROM outbox WHERE audience = %s AND batch_id IS NULL",
        (ROUTE.audience,),
    )
    members = current(setup.db, "audience", ROUTE.audience)
    assert {p for p, op in waiting if op == "add"} == {p for p, h in members.items() if not h}
    assert all(op == "add" for _, op in waiting)  # nothing delivered: exits cancel adds


def test_an_outcome_read_before_a_newer_event_records_nothing_and_stays_pending(
    setup: Setup, clock: Clock
) -> None:
    realtime, index, at_us = setup.realtime, setup.processor.index, to_micros(clock.now)
    setup.mirror.ingest([message("track", "u1", clock.now, event="Added To Cart")])
    [profile] = realtime.pending(2**62)
    [history] = realtime.histories([profile], index.events)
    assert history.version > 0 and len(history.events) == 1
    stale = setup.processor.outcome(history, at_us)
    assert ("audience", "rt_cart_abandon_6h") in stale.members
    setup.mirror.ingest(
        [message("track", "u1", clock.now, event="Order Completed", properties={"revenue": 5})]
    )

    changes = realtime.record_profiles([stale], index.scope, at_us, [ROUTE])
    assert changes.entered == {} and changes.exited == {}
    assert current(setup.db, "segment", "cart_6h") == {}
    assert realtime.pending(2**62) == [profile]
    # Evaluating it again from the newer history records the purchase and clears the mark.
    assert setup.processor.process([profile], at_us).profiles == 1
    assert current(setup.db, "audience", "rt_purchase_suppress") == {profile: False}
    assert current(setup.db, "audience", "rt_cart_abandon_6h") == {}
    assert realtime.pending(2**62) == []
    # An outcome read when no mark existed (version 0) is stale once one appears.
    [history] = realtime.histories([profile], index.events)
    assert history.version == 0
    setup.mirror.ingest([message("track", "u1", clock.now, event="Added To Cart")])
    realtime.record_profiles([setup.processor.outcome(history, at_us)], index.scope, at_us, [])
    assert realtime.pending(2**62) == [profile]


def test_two_workers_evaluating_the_same_profiles_record_each_change_once(
    setup: Setup, clock: Clock
) -> None:
    events = stream(3)
    first, later = events[:120], events[120:]
    for _, raw in first:
        setup.mirror.ingest([raw])
    clock.now = max(t for t, _ in events) + timedelta(minutes=1)
    at_us = to_micros(clock.now)
    profiles = setup.realtime.profiles_received_since(0, setup.processor.index.events)
    totals: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    start, stored = threading.Barrier(3), threading.Event()

    def evaluate() -> None:
        processor = setup.processor_copy()
        try:
            start.wait()
            while not stored.is_set():  # no pass after the last store: marks must tell
                done = processor.process(profiles, at_us)
                totals.append((done.entered, done.exited))
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    def store_more() -> None:
        start.wait()
        for _, raw in later:  # stored while the two workers evaluate
            setup.mirror.ingest([raw])
        stored.set()

    threads = [threading.Thread(target=f) for f in (evaluate, evaluate, store_more)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # What the workers skipped as stale is still pending; evaluating it catches up.
    while missed := setup.realtime.pending(2**62):
        done = setup.processor.process(missed, at_us)
        totals.append((done.entered, done.exited))

    check(setup, clock.now)
    [(rows, exits)] = setup.db.query(
        "SELECT count(*), count(exited_at) FROM memberships WHERE run_id = 0"
    )
    assert sum(e for e, _ in totals) == rows  # every entry written once and counted once
    assert sum(x for _, x in totals) == exits
    assert (
        setup.db.query(
            "SELECT kind, name, profile_id FROM memberships WHERE exited_at IS NULL "
            "GROUP BY 1, 2, 3 HAVING count(*) > 1"
        )
        == []
    )


def test_a_due_timer_is_leased_to_one_worker_until_its_lease_runs_out(
    setup: Setup, clock: Clock
) -> None:
    realtime, now = setup.realtime, to_micros(clock.now)
    outcomes = [
        ProfileOutcome(f"p{i:03d}", {}, {"cart_6h": now - 1_000 * i, "later": now + 10**9})
        for i in range(60)
    ]
    realtime.record_profiles(outcomes, [], now - 10**9, [])
    assert realtime.next_timer() == now - 59_000
    taken: list[list[tuple[str, int]]] = []
    start = threading.Barrier(2)

    def take() -> None:
        start.wait()
        taken.append(realtime.due_timers(now, limit=40))

    threads = [threading.Thread(target=take) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first, second = (dict(t) for t in taken)
    assert not set(first) & set(second)  # never handed to both
    assert set(first) | set(second) == {o.profile_id for o in outcomes}
    assert first == {p: now - 1_000 * int(p[1:]) for p in first}  # each at its due instant
    assert realtime.due_timers(now) == []
    assert realtime.next_timer() == now + 10**9  # the leased ones are not waited for

    # The worker holding p000 recorded it (its timers replaced); the others died.
    realtime.record_profiles([ProfileOutcome("p000", {}, {})], [], now, [])
    lease_over = now + int(TIMER_LEASE.total_seconds() * 1_000_000) + 1
    again = dict(realtime.due_timers(lease_over))
    assert set(again) == {o.profile_id for o in outcomes} - {"p000"}
    assert realtime.due_timers(lease_over) == []


def test_pending_and_first_start_name_canonical_profiles(setup: Setup, clock: Clock) -> None:
    realtime, events = setup.realtime, setup.processor.index.events
    setup.mirror.ingest(
        [
            message("track", "u1", clock.now, event="Added To Cart"),
            message("track", "u2", clock.now, event="Page Loaded"),  # read by no segment
            message("identify", "u3", clock.now, traits={"tier": "vip"}),
        ]
    )
    u1, u3 = (profile_of(setup, "user_id", u) for u in ("u1", "u3"))
    assert set(realtime.profiles_received_since(0, events)) == {u1, u3}
    assert realtime.cursor() is None  # the first start's catch-up has not run
    assert sorted(realtime.pending(2**62)) == sorted([u1, u3])
    assert realtime.pending(0) == []  # none marked before the epoch
    realtime.set_cursor(to_micros(clock.now))
    assert realtime.cursor() == to_micros(clock.now)
    # Once started, a restart evaluates the pending profiles (received whenever).
    setup.processor.process([u1], to_micros(clock.now))
    assert realtime.profiles_received_since(to_micros(clock.now), events) == [u3]
    with setup.db.transaction() as cur:  # more left pending than one sweep takes
        cur.execute(
            "INSERT INTO realtime_pending SELECT 'x' || i, 1, now() FROM generate_series(1, 6000) i"
        )
    assert len(realtime.pending(2**62)) == 5_000
    assert len(realtime.profiles_received_since(to_micros(clock.now), events)) == 6_001


def test_a_merged_away_profile_is_folded_into_its_survivor(setup: Setup, clock: Clock) -> None:
    realtime, index = setup.realtime, setup.processor.index
    at_us = to_micros(clock.now)
    anon: dict[str, Any] = {"anonymousId": "anon-1"}
    cart = {**message("track", "", clock.now, event="Added To Cart"), **anon}
    del cart["userId"]
    setup.mirror.ingest([message("identify", "u9", clock.now, traits={"tier": "vip"}), cart])
    setup.processor.process(realtime.pending(2**62), at_us)
    anonymous = profile_of(setup, "anonymous_id", "anon-1")
    assert set(current(setup.db, "segment", "cart_6h")) == {anonymous}

    setup.mirror.ingest([{**message("identify", "u9", clock.now), **anon}])  # merges the two
    survivor = profile_of(setup, "user_id", "u9")
    [merged] = {anonymous, survivor} - {survivor}
    assert realtime.canonical([merged]) == {merged: survivor}
    [history] = realtime.histories([survivor], index.events)
    assert [e[1] for e in history.events] == ["added_to_cart"]
    assert history.traits["tier"] == "vip" and history.version > 0
    with setup.db.transaction() as cur:
        mark(cur, merged)  # left from before the merge
    assert realtime.pending(2**62) == [survivor]  # named by its survivor

    setup.processor.process([survivor], at_us)
    assert set(current(setup.db, "segment", "cart_6h")) == {survivor}  # the merged id left
    assert set(current(setup.db, "segment", "vip")) == {survivor}
    assert realtime.pending(2**62) == []


@pytest.fixture
def engine_on_postgres(realtime_dir: Path) -> Iterator[Engine]:
    """The real-time project with its events stored by the Postgres store itself."""
    with postgres_schema() as url:
        path = realtime_dir / "cohortsync.yml"
        text = path.read_text(encoding="utf-8")
        path.write_text(text.replace(".cohortsync/store.duckdb", url), encoding="utf-8")
        with Engine.open(realtime_dir) as engine:
            yield engine


def test_a_mark_cleared_and_made_again_is_never_mistaken_for_the_one_read(
    engine_on_postgres: Engine, clock: Clock
) -> None:
    """A worker that read a profile before another recorded it, then records late, must not
    clear the mark of an event stored in between (the mark's version never repeats)."""
    engine = engine_on_postgres
    index = build_index(engine.segments)
    processor = ProfileProcessor(engine.store, engine.segments, index, [])
    realtime, at_us = realtime_for(engine.store), to_micros(clock.now)
    engine.ingest_messages([message("track", "u1", clock.now, event="Added To Cart")])
    [profile] = realtime.pending(2**62)
    [slow_read] = realtime.histories([profile], index.events)  # a slow worker reads
    processor.process([profile], at_us)  # another records it: the mark is cleared
    engine.ingest_messages(
        [message("track", "u1", clock.now, event="Order Completed", properties={"revenue": 5})]
    )
    late = processor.outcome(slow_read, at_us)
    realtime.record_profiles([late], index.scope, at_us, [])
    assert realtime.pending(2**62) == [profile]  # the purchase is still to be evaluated
    processor.process(realtime.pending(2**62), at_us)
    assert engine.store.membership("audience", "rt_cart_abandon_6h") == []
    assert engine.store.membership("audience", "rt_purchase_suppress") == [(profile, False)]
