"""Every segment computed in one query agrees with each segment compiled on its own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb

from cohortsync.audiences.compute import _segment_members, compute_members
from cohortsync.engine import Engine
from cohortsync.segments.ast import (
    US_PER,
    All,
    AnyOf,
    Between,
    Comparison,
    ComputedTrait,
    Condition,
    Duration,
    EventCondition,
    HasIdentifier,
    Not,
    Segment,
    SegmentProject,
    SegmentRef,
    Since,
    TraitCondition,
    Within,
)
from cohortsync.segments.compile import Compiler, DuckDBCompiler
from cohortsync.store.duckdb_compute import flagged_members
from cohortsync.store.duckdb_store import DuckDBStore

AT = datetime(2026, 1, 10, tzinfo=UTC)
AT_US = int((AT - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))
H = timedelta(hours=1)
D = timedelta(days=1)


def dur(text: str) -> Duration:
    """A Duration from `6h` / `35d` text."""
    return Duration(text, int(text[:-1]) * US_PER[text[-1]])


def track(n: int, user: str, event: str, ago: timedelta, **props: object) -> dict[str, object]:
    """A track message `ago` before AT."""
    stamp = (AT - ago).isoformat().replace("+00:00", "Z")
    return {"type": "track", "messageId": f"m{n:04d}", "userId": user, "event": event,
            "timestamp": stamp, "properties": props}  # fmt: skip


CONDITIONS: dict[str, Condition] = {
    "buyer_7d": EventCondition("order_completed", window=Within(dur("7d"))),
    "cart_abandon": All(
        (
            EventCondition("added_to_cart", window=Within(dur("6h"))),
            Not(EventCondition("order_completed", window=Since("added_to_cart"))),
        )
    ),
    "vip": TraitCondition(Comparison("ltv", "gte", 100)),
    "web_buyer": TraitCondition(Comparison("channel", "eq", "web")),
    "lapsed_vip": All(
        (
            SegmentRef("vip"),
            EventCondition("order_completed", window=Between(dur("35d"), dur("21d"))),
            Not(SegmentRef("buyer_7d")),
        )
    ),
    "reachable": AnyOf((HasIdentifier("email"), SegmentRef("cart_abandon"))),
}
PROJECT = SegmentProject(
    traits={
        "ltv": ComputedTrait("ltv", "order_completed", "sum", "revenue"),
        "channel": ComputedTrait("channel", "order_completed", "most_frequent", "channel"),
    },
    segments={name: Segment(name, cond) for name, cond in CONDITIONS.items()},
    audiences={},
)


def ingest(engine: Engine) -> None:
    """Orders, carts and identities for six people."""
    messages = [
        track(1, "u1", "Order Completed", 2 * D, revenue=120, channel="web"),
        track(2, "u2", "Added To Cart", 3 * H),
        track(3, "u3", "Added To Cart", 3 * H),
        track(4, "u3", "Order Completed", 1 * H, revenue=20, channel="app"),
        track(5, "u4", "Order Completed", 30 * D, revenue=80, channel="web"),
        track(6, "u4", "Order Completed", 25 * D, revenue=40, channel="app"),
        track(7, "u4", "Order Completed", 24 * D, revenue=5, channel="app"),
        track(8, "u5", "Order Completed", 22 * D, revenue=300, channel="web"),
        {"type": "identify", "messageId": "m0100", "userId": "u6",
         "traits": {"email": "u6@example.com"}, "timestamp": "2026-01-01T00:00:00Z"},
    ]  # fmt: skip
    engine.ingest_messages(messages)


def one_by_one(store: DuckDBStore, compiler: Compiler) -> dict[str, list[str]]:
    """Each segment's members from its own query."""
    out = {}
    for name in PROJECT.segments:
        sql = compiler.render(compiler.compile_segment(name, PROJECT, AT_US))
        out[name] = sorted(row[0] for row in store.query(sql, ()))
    return out


def test_one_query_for_all_segments_agrees_with_each_alone(engine: Engine) -> None:
    ingest(engine)
    store = engine.store
    assert isinstance(store, DuckDBStore)
    alone = one_by_one(store, DuckDBCompiler())
    assert alone == one_by_one(store, Compiler())  # the portable most_frequent agrees
    users = dict(store.query("SELECT profile_id, value FROM identities "
                                    "WHERE kind = 'user_id'", ()))  # fmt: skip
    named = {name: {users[p] for p in ids} for name, ids in alone.items()}
    assert named == {
        "buyer_7d": {"u1", "u3"},
        "cart_abandon": {"u2"},
        "vip": {"u1", "u4", "u5"},
        "web_buyer": {"u1", "u5"},
        "lapsed_vip": {"u4", "u5"},
        "reachable": {"u2", "u6"},
    }
    assert compute_members(store, PROJECT, AT_US).segments == alone
    assert compute_members(store, PROJECT, AT_US, Compiler()).segments == alone
    # Through a temporary table, as stores without a one-query reader do.
    compiler = DuckDBCompiler()
    assert _segment_members(store, PROJECT, AT_US, compiler, through_table=True) == alone
    assert not store.query("SELECT * FROM duckdb_tables() WHERE temporary", ())  # dropped
    # The one-query reader a DuckDB store uses gives the same members.
    con = duckdb.connect(str(store.path))
    plan = DuckDBCompiler().compile_members(PROJECT, list(PROJECT.segments), AT_US)
    assert flagged_members(con, DuckDBCompiler().render(plan.query), plan.columns) == alone
    con.close()
