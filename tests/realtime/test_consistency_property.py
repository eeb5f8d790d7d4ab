"""Real-time membership equals a batch compute, and destinations hold it, for generated streams.

The property behind `test_consistency.py`, with Hypothesis writing the streams: a stream is a
list of steps, each either a message (a cart, order, view or unrelated track; an identify with
a tier and an email; an alias) or a clock jump. Messages are stamped relative to the test clock,
often in the past (out of order, or late: older than checkpoints and timers already run) and
now and then ahead of it. A few user ids, anonymous ids and emails are shared, so identifies
and aliases merge profiles (an anonymous visitor who logs in or is aliased; an email first seen
without a user id), and two user ids claiming one email meet the email limit. Clock jumps are
0, small, or the segments' window lengths (3h, 6h, 1d, 2d) give or take 1 µs or 1 s, so
checkpoints land just before, at and just after window edges and timers.

At every checkpoint the loop runs a round, and then, for every real-time segment and audience,
the members `serve` recorded must be the members `compute_members` finds at that instant,
holdout flags included. Delivery then drains the outbox the real-time path wrote (no sync plan
repairs it) to two local destinations, and each must hold what its route says:

- `warehouse` (a DuckDB file; the team's own table takes the holdout): every member of every
  real-time audience with its holdout flag, in its table and in what the ledger records as
  acknowledged;
- `exports` (files for an ad platform, which never receives the control group): the members
  out of the holdout whose identifiers, as sent, give it something to match (a user id or an
  email), in its state file and in what the ledger records as acknowledged.

The project also has `email_winback`, a cadence audience (`refresh: 1h`) with `exits: realtime`
whose rule turns false only on an event (an order, or a merge) and true by time (a day after an
order, unless the spend reached 100). The scheduler refreshes it when due at each checkpoint;
between refreshes real time may only remove members: what it holds must be among the last
refresh's members and among those the rule keeps now (holdout flags included), and both
destinations must hold exactly that.

Each example builds its own project and store (a temporary folder; for Postgres a fresh
schema), so examples share nothing. Runs are derandomised and keep no example database, so CI
sees the same streams every time. COHORTSYNC_PROPERTY_EXAMPLES sets how many streams each
store gets (default 8) and COHORTSYNC_PROPERTY_STEPS the longest stream (default 36 steps);
e.g. COHORTSYNC_PROPERTY_EXAMPLES=200 COHORTSYNC_PROPERTY_STEPS=80 for a long soak.
"""

from __future__ import annotations

import itertools
import operator
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cohortsync.audiences.compute import compute_members
from cohortsync.engine import Engine
from cohortsync.events.timestamps import to_micros
from cohortsync.realtime.serve_workers import ServeWorkers
from cohortsync.sync.ledger import ledger_for
from tests.conftest import PROJECT_YAML
from tests.postgres import postgres_schema
from tests.realtime.conftest import REALTIME_YAML, T0, Clock, stamp

EXAMPLES = int(os.environ.get("COHORTSYNC_PROPERTY_EXAMPLES", "15"))
ROUNDS = int(os.environ.get("COHORTSYNC_PROPERTY_ROUNDS", "8"))

REALTIME_AUDIENCES = (
    "rt_browse",
    "rt_cart_abandon_6h",
    "rt_emailable",
    "rt_lapsing_big",
    "rt_purchase_suppress",
)
EXITS_AUDIENCE = "email_winback"
"""A cadence audience whose members leave in real time (`exits: realtime`)."""
DELIVERED = (*REALTIME_AUDIENCES, EXITS_AUDIENCE)
WAREHOUSE = "warehouse"
EXPORTS = "exports"
EXPORTS_PATH = "exports"
DESTINATIONS_YAML = f"""\
destinations:
  {WAREHOUSE}: {{type: warehouse, url: "duckdb:///warehouse.duckdb"}}
  {EXPORTS}: {{type: files, path: {EXPORTS_PATH}, platform: meta, formats: [csv]}}
"""
MATCHED_ON = ("user_id", "email")
"""What the `exports` files (Meta layout) can match a member on; phone never occurs here."""

UNREAD = "Page Loaded"
"""An event no real-time segment reads."""
EVENTS = ("Added To Cart", "Product Viewed", "Order Completed", "Added To Cart", UNREAD)
UNREAD_MERGES = os.environ.get("COHORTSYNC_PROPERTY_UNREAD_MERGES") == "1"
"""Whether a track of UNREAD may carry a user id and a device, and so merge two profiles;
off until `test_a_track_no_segment_reads_that_merges_profiles_evaluates_the_survivor` passes."""

USERS = ("u0", "u6", "u1")
DEVICES = ("a0", "a1", "a9")
"""A profile's id derives from its first identifier: those of u6, a0 and a9 fall in the holdout
of rt_cart_abandon_6h, the others out of it (`test_a_stream_across_every_edge` checks that the
holdout is reached)."""
EMAILS = ("e0@example.com", "e1@example.com", "e2@example.com")

SECOND = timedelta(seconds=1)
MICRO = timedelta(microseconds=1)
EDGES = (timedelta(hours=3), timedelta(hours=6), timedelta(days=1), timedelta(days=2))
NUDGES = (-SECOND, -MICRO, timedelta(0), MICRO, SECOND)


def realtime_yaml() -> str:
    """REALTIME_YAML with every real-time audience sent to both local destinations."""
    text = REALTIME_YAML
    for name in REALTIME_AUDIENCES:
        text = text.replace(
            f"  {name}:\n", f"  {name}:\n    destinations: [{WAREHOUSE}, {EXPORTS}]\n"
        )
        text = text.replace(
            f"  {name}: {{", f"  {name}: {{destinations: [{WAREHOUSE}, {EXPORTS}], "
        )
    assert text.count("destinations: [") == len(REALTIME_AUDIENCES)
    exits = (
        f"  {EXITS_AUDIENCE}:\n    segment: emailable\n    exclude: [bought_1d, big_spender]\n"
        f"    refresh: 1h\n    exits: realtime\n    holdout: {{percent: 25}}\n"
        f"    destinations: [{WAREHOUSE}, {EXPORTS}]\n"
    )
    return text + exits + DESTINATIONS_YAML


@contextmanager
def project(store: str) -> Iterator[Path]:
    """A fresh project folder whose store is a new DuckDB file or a new Postgres schema."""
    with tempfile.TemporaryDirectory(prefix="cohortsync-prop-") as folder:
        root = Path(folder)
        default = nullcontext(".cohortsync/store.duckdb")
        with postgres_schema("prop") if store == "postgres" else default as location:
            text = PROJECT_YAML.replace("store: .cohortsync/store.duckdb", f"store: {location}")
            (root / "cohortsync.yml").write_text(text + realtime_yaml(), encoding="utf-8")
            yield root


# --- the stream ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """One message, stamped `late` before the clock (negative: ahead of it). The loop runs a
    round right after it is stored, as `serve` does, unless `deferred` (then at the next step,
    maybe after the clock moved: a slow round)."""

    call: str
    user: str | None = None
    device: str | None = None
    late: timedelta = timedelta(0)
    event: str | None = None
    revenue: int | None = None
    tier: str | None = None
    email: str | None = None
    previous: str | None = None
    deferred: bool = False

    def message(self, now: datetime, message_id: str) -> dict[str, Any]:
        """The Segment message this step sends when the clock says `now`."""
        raw: dict[str, Any] = {
            "type": self.call,
            "messageId": message_id,
            "timestamp": stamp(now - self.late),
        }
        if self.user is not None:
            raw["userId"] = self.user
        if self.device is not None:
            raw["anonymousId"] = self.device
        if self.call == "track":
            raw["event"] = self.event
            if self.revenue is not None:
                raw["properties"] = {"revenue": self.revenue}
        elif self.call == "identify":
            traits = {"tier": self.tier, "email": self.email}
            raw["traits"] = {k: v for k, v in traits.items() if v is not None}
        elif self.call == "alias":
            raw["previousId"] = self.previous
        return raw

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def __repr__(self) -> str:
        shown = [repr(self.call)]
        for item in fields(self)[1:]:
            value = getattr(self, item.name)
            if value != item.default:
                shown.append(f"{item.name}={_shown(value)}")
        return f"Send({', '.join(shown)})"


@dataclass(frozen=True)
class Advance:
    """Move the clock by `by`, run a round, then check."""

    by: timedelta

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def __repr__(self) -> str:
        return f"Advance({_shown(self.by)})"


def _shown(value: object) -> str:
    """`value` as Python, a timedelta without its module and negative ones as `-timedelta(...)`
    (a shrunk stream reads short)."""
    if isinstance(value, timedelta) and value < timedelta(0):
        return "-" + _shown(-value)
    return repr(value).removeprefix("datetime.")


Step = Send | Advance

edges = st.builds(operator.add, st.sampled_from(EDGES), st.sampled_from(NUDGES))
small = st.sampled_from([timedelta(0), MICRO, SECOND, timedelta(minutes=20), timedelta(hours=1)])
jumps = st.one_of(small, edges)
ahead = st.sampled_from([-SECOND, -timedelta(minutes=20), -timedelta(hours=1)])
lateness = st.one_of(st.just(timedelta(0)), small, edges, ahead, st.just(timedelta(days=3)))
users = st.sampled_from(USERS)
devices = st.sampled_from(DEVICES)
who = st.one_of(  # a visitor, a user, a device seen logged in
    st.tuples(st.none(), devices),
    st.tuples(users, st.none()),
    st.tuples(users, devices),
)
logins = st.one_of(who.branches[2], who.branches[0], who.branches[1])


@st.composite
def tracks(draw: st.DrawFn) -> Send:
    """A cart, an order with revenue, a product view, or an event no segment reads."""
    user, device = draw(who)
    event = draw(st.sampled_from(EVENTS))
    revenue = draw(st.sampled_from([130, 20, 45, 80])) if event == "Order Completed" else None
    if event == UNREAD and user is not None and device is not None and not UNREAD_MERGES:
        device = None
    late, deferred = draw(lateness), draw(st.booleans())
    return Send("track", user, device, late, event, revenue, deferred=deferred)


@st.composite
def identifies(draw: st.DrawFn) -> Send:
    """Traits for the vip and emailable segments; a login (a user on a device seen before) or
    a shared email merges profiles."""
    user, device = draw(logins)
    email = draw(st.none() | st.sampled_from(EMAILS))
    tier = draw(
        st.sampled_from(["vip", "regular"])
        if email is None
        else st.none() | st.sampled_from(["vip", "regular"])
    )
    late, deferred = draw(lateness), draw(st.booleans())
    return Send("identify", user, device, late, tier=tier, email=email, deferred=deferred)


@st.composite
def aliases(draw: st.DrawFn) -> Send:
    """A user id given to a previous id: a visitor's device (a merge) or another user id."""
    user, previous = draw(users), draw(st.one_of(devices, devices, users))
    late, deferred = draw(lateness), draw(st.booleans())
    return Send("alias", user, late=late, previous=previous, deferred=deferred)


sends = st.one_of(tracks(), identifies(), tracks(), aliases(), tracks())


@st.composite
def streams(draw: st.DrawFn) -> list[Step]:
    """Up to ROUNDS rounds of a few messages, each round ending with a clock jump."""
    stream: list[Step] = []
    for _ in range(draw(st.integers(1, ROUNDS))):
        stream += draw(st.lists(sends, min_size=1, max_size=4))
        stream.append(Advance(draw(jumps)))
    return stream


# A stream that surely exercises every part: a visitor's cart, their login (a merge), a late
# order, a member of email_winback who orders, an alias, two user ids claiming one email, an
# email first seen on a device, and
# checkpoints on either side of the 3h, 6h, 1d and 2d edges.
EDGE_STREAM: list[Step] = [
    Send("track", device="a0", event="Added To Cart"),
    Send("track", device="a0", event="Product Viewed"),
    Send("track", device="a0", late=MICRO, event="Product Viewed"),
    Send("identify", "u0", tier="vip", email=EMAILS[0]),
    Send("track", device="a1", late=timedelta(hours=2), event="Order Completed", revenue=130),
    Advance(timedelta(hours=3) - MICRO),
    Advance(MICRO),
    Send("track", "u0", event="Order Completed", revenue=20),  # leaves email_winback at once
    Send("identify", "u0", "a0", email=EMAILS[0]),
    Send("identify", "u1", email=EMAILS[0]),
    Send("alias", "u1", previous="a1"),
    Advance(timedelta(hours=3) - MICRO),
    Advance(MICRO),
    Send("track", "u1", late=timedelta(hours=7), event="Order Completed", revenue=45),
    Advance(timedelta(days=1) - SECOND),
    Advance(SECOND),
    Send("track", "u6", late=timedelta(days=2), event="Product Viewed"),
    Send("identify", device="a9", email=EMAILS[1], deferred=True),
    Send("identify", "u6", email=EMAILS[1], deferred=True),
    Advance(timedelta(days=1)),
    Advance(timedelta(days=2)),
]


# --- running a stream ------------------------------------------------------------------------


def warehouse_rows(root: Path) -> dict[str, dict[str, tuple[bool, bool]]]:
    """Per audience, what the warehouse table holds: profile_id → (holdout, matchable)."""
    path = root / "warehouse.duckdb"
    held: dict[str, dict[str, tuple[bool, bool]]] = {name: {} for name in DELIVERED}
    if not path.exists():
        return held
    any_match = " OR ".join(f"{kind} IS NOT NULL" for kind in MATCHED_ON)
    with duckdb.connect(str(path), read_only=True) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_schema = 'cohortsync' AND table_name = 'audience_members'"
        ).fetchone()
        if not tables or not tables[0]:
            return held
        rows = conn.execute(
            f"SELECT audience, profile_id, holdout, {any_match} FROM cohortsync.audience_members"
        ).fetchall()
    for audience, profile_id, holdout, matchable in rows:
        held.setdefault(audience, {})[profile_id] = (bool(holdout), bool(matchable))
    return held


def exported(root: Path, audience: str) -> set[str]:
    """The profiles the `exports` files hold for `audience` (its state file, keyed by profile)."""
    state = root / EXPORTS_PATH / audience / "_state.parquet"
    if not state.exists():
        return set()
    return {str(p) for p in pq.read_table(state, columns=["profile_id"]).column(0).to_pylist()}


@dataclass
class Seen:
    """What a stream made happen, for the statistics and for the edge stream's own checks."""

    timer_profiles: int = 0
    exited: int = 0
    merged_away: int = 0
    holdout: bool = False
    exits_left: int = field(default=0, compare=False)
    """Members `email_winback` lost between refreshes (real-time exits)."""
    refreshed: set[str] = field(default_factory=set, compare=False)
    """`email_winback`'s members as its last refresh recorded them."""
    exits_held: set[str] = field(default_factory=set, compare=False)
    """`email_winback`'s members at the last checkpoint."""


def check(engine: Engine, workers: ServeWorkers, root: Path, moment: datetime, seen: Seen) -> None:
    """Membership equals a batch compute at `moment`; after delivery, destinations hold it."""
    loop = workers.loop
    batch = compute_members(engine.store, engine.segments, to_micros(moment))
    when = moment.isoformat()
    for kind, name in loop.index.scope:
        realtime = {p for p, _ in engine.store.membership(kind, name)}
        assert realtime == batch.ids(kind, name), f"{kind} {name} at {when}"
    wanted: dict[str, dict[str, bool]] = {}
    for name in loop.index.audiences:
        flags = dict(engine.store.membership("audience", name))
        wanted[name] = dict(batch.audiences[name])
        assert flags == wanted[name], f"holdout flags of {name} at {when}"
        seen.holdout = seen.holdout or any(flags.values())
    held = dict(engine.store.membership("audience", EXITS_AUDIENCE))
    keeps = dict(batch.audiences[EXITS_AUDIENCE])
    assert set(held) <= seen.refreshed & set(keeps), f"{EXITS_AUDIENCE} at {when}"
    assert held == {p: keeps[p] for p in held}, f"holdout flags of {EXITS_AUDIENCE} at {when}"
    seen.exits_left += len(seen.exits_held - set(held))
    seen.exits_held = set(held)
    wanted[EXITS_AUDIENCE] = held

    workers.delivery.step()
    workers.delivery.destinations[WAREHOUSE].close()  # let the table be read from outside
    ledger = ledger_for(engine.store)
    table = warehouse_rows(root)
    for name in DELIVERED:
        in_table = {p: holdout for p, (holdout, _) in table[name].items()}
        assert in_table == wanted[name], f"{WAREHOUSE} table for {name} at {when}"
        assert ledger.acknowledged(WAREHOUSE, name) == wanted[name], (
            f"{WAREHOUSE} acknowledged for {name} at {when}"
        )
        matchable = {p for p, (holdout, can) in table[name].items() if can and not holdout}
        assert exported(root, name) == matchable, f"{EXPORTS} files for {name} at {when}"
        assert ledger.acknowledged(EXPORTS, name) == dict.fromkeys(matchable, False), (
            f"{EXPORTS} acknowledged for {name} at {when}"
        )


def refresh(engine: Engine, workers: ServeWorkers, moment: datetime, seen: Seen) -> None:
    """Run the scheduled refreshes due at `moment`; note what `email_winback`'s left it (and
    what real time removed before it)."""
    before = {p for p, _ in engine.store.membership("audience", EXITS_AUDIENCE)}
    seen.exits_left += len(seen.exits_held - before)
    seen.exits_held = before
    report = workers.cadence.run_due(to_micros(moment))
    if report is not None and any(r.name == EXITS_AUDIENCE for r in report.rows):
        seen.refreshed = {p for p, _ in engine.store.membership("audience", EXITS_AUDIENCE)}
        seen.exits_held = set(seen.refreshed)


def replay(store: str, stream: list[Step]) -> Seen:
    """Run `stream` through `serve`'s loop and delivery on a fresh project, checking as it goes."""
    ids = itertools.count()
    clock = Clock(T0)
    seen = Seen()
    with project(store) as root, Engine.open(root) as engine:
        workers = engine.serve_workers(clock)

        def run_round() -> None:
            done = workers.loop.step()
            seen.timer_profiles += done.timer_profiles
            seen.exited += done.exited

        try:
            for step in stream:
                if isinstance(step, Advance):
                    clock.now += step.by
                    run_round()
                    refresh(engine, workers, clock.now, seen)
                    check(engine, workers, root, clock.now, seen)
                    continue
                raw = step.message(clock.now, f"prop-{next(ids):05d}")
                assert engine.ingest_messages([raw]).stored == 1, raw
                if not step.deferred:
                    run_round()
            run_round()
            check(engine, workers, root, clock.now, seen)
            seen.merged_away = engine.stats()["profiles"]["merged_away"]
        finally:
            workers.delivery.close()
    return seen


@pytest.mark.parametrize("store", ["duckdb", "postgres"])
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(stream=streams())
def test_realtime_equals_batch_and_destinations_hold_it(store: str, stream: list[Step]) -> None:
    seen = replay(store, stream)
    event(f"profiles merged away: {min(seen.merged_away, 2)}{'+' if seen.merged_away >= 2 else ''}")
    event(f"timers fired: {bool(seen.timer_profiles)}")
    event(f"exits recorded: {bool(seen.exited)}")
    event(f"holdout members: {seen.holdout}")
    event(f"real-time exits of {EXITS_AUDIENCE}: {bool(seen.exits_left)}")


@pytest.mark.parametrize("store", ["duckdb", "postgres"])
def test_a_stream_across_every_edge(store: str) -> None:
    """EDGE_STREAM: whatever the generated streams happen to cover, this one covers it all."""
    seen = replay(store, EDGE_STREAM)
    assert seen == Seen(seen.timer_profiles, seen.exited, merged_away=3, holdout=True)
    assert seen.timer_profiles and seen.exited and seen.exits_left


@pytest.mark.parametrize("store", ["duckdb", "postgres"])
def test_a_track_no_segment_reads_that_merges_profiles_evaluates_the_survivor(store: str) -> None:
    """A visitor known as vip logs in; the login's only message is a page view carrying both
    ids, which merges the visitor into the user: the survivor is vip at once."""
    replay(
        store,
        [
            Send("track", "u0", event=UNREAD),
            Send("identify", device="a1", tier="vip"),
            Advance(timedelta(0)),
            Send("track", "u0", "a1", event=UNREAD),
            Advance(timedelta(0)),
        ],
    )
