"""Segments read from the store's summaries give the answers of a full scan of the log, as of
any instant: now, the past (summaries straddle it) and the future, merged profiles included."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cohortsync.engine import Engine
from cohortsync.segments.ast import (
    All,
    Before,
    Between,
    Comparison,
    ComputedTrait,
    EventCondition,
    Not,
    Segment,
    SegmentProject,
    Since,
    TraitCondition,
    Within,
)
from cohortsync.segments.compile import Compiler, DuckDBCompiler, with_summaries
from cohortsync.segments.summary import SummaryCoverage
from cohortsync.store.duckdb_store import DuckDBStore
from tests.segments.test_compile import dur

NOW = datetime(2026, 4, 1, tzinfo=UTC)
NOW_US = int(NOW.timestamp()) * 1_000_000
DAY_US = 86_400 * 1_000_000
INSTANTS = [NOW_US + d * DAY_US for d in (-75, -40, -12, -3, 0, 2, 30)]


TRAITS = (
    ComputedTrait("ltv", "order_completed", "sum", "revenue"),
    ComputedTrait("aov", "order_completed", "avg", "revenue"),
    ComputedTrait("top", "order_completed", "max", "revenue"),
    ComputedTrait("low", "order_completed", "min", "revenue"),
    ComputedTrait("priced", "order_completed", "count", "revenue"),
    ComputedTrait("orders", "order_completed", "count", None),
    ComputedTrait("discounted", "order_completed", "most_frequent", "discount"),
    ComputedTrait("views_14d", "product_viewed", "count", None, window=Within(dur("14d"))),
)
SEGMENTS = {
    "recent": EventCondition("order_completed", window=Within(dur("7d"))),
    "recent_month": EventCondition("order_completed", window=Within(dur("30d"))),
    "subscriber": EventCondition(
        "subscription_cancelled", window=Since("subscription_started"), count_op="eq", count=0
    ),
    "lapsed": All(
        (
            EventCondition("order_completed", window=Between(dur("60d"), dur("20d"))),
            Not(EventCondition("order_completed", window=Within(dur("20d")))),
        )
    ),
    "old_buyer": EventCondition("order_completed", window=Before(dur("30d"))),
    "repeat": EventCondition("order_completed", count_op="gte", count=3),
    "no_views": Not(EventCondition("product_viewed")),
    "big": TraitCondition(Comparison("ltv", "gte", 100)),
    "middling": All(
        (TraitCondition(Comparison("aov", "gte", 20)), TraitCondition(Comparison("top", "lt", 90)))
    ),
    "cheap": TraitCondition(Comparison("low", "lte", 10)),
    "priced": TraitCondition(Comparison("priced", "gte", 2)),
    "discount_lover": TraitCondition(Comparison("discounted", "eq", True)),
    "browser": TraitCondition(Comparison("views_14d", "gte", 2)),
}
PROJECT = SegmentProject(
    traits={t.name: t for t in TRAITS},
    segments={name: Segment(name, cond) for name, cond in SEGMENTS.items()},
    audiences={},
)


def history(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """Track calls of a few users and anonymous visitors over 90 days and 10 days ahead."""
    events = ["order_completed", "product_viewed", "subscription_started",
              "subscription_cancelled"]  # fmt: skip
    out = []
    for i in range(n):
        who = rng.choice(["u1", "u2", "u3", "u4", "u5", None])
        event = rng.choice(events)
        props: dict[str, Any] = {}
        if event == "order_completed":
            props = {"revenue": rng.choice([5, 12.5, 30, 45.25, 80, "9", None]),
                     "discount": rng.choice([True, False, "yes"])}  # fmt: skip
            if rng.random() < 0.1:
                del props["revenue"]
        at = NOW - timedelta(minutes=rng.randrange(-10 * 1440, 90 * 1440))
        ids = {"userId": who} if who else {"anonymousId": f"a{rng.randrange(3)}"}
        out.append({"type": "track", "messageId": f"h-{i}", "event": event,
                    "timestamp": at.isoformat().replace("+00:00", "Z"), "properties": props,
                    **ids})  # fmt: skip
    return out


def merge(anonymous: str, user: str, n: int) -> dict[str, Any]:
    """An identify call tying an anonymous visitor to a user (their profiles merge)."""
    return {"type": "identify", "messageId": f"id-{n}", "userId": user,
            "anonymousId": anonymous, "timestamp": NOW.isoformat().replace("+00:00", "Z"),
            "traits": {}}  # fmt: skip


def answers(engine: Engine, compiler: Compiler, at_us: int) -> dict[str, Any]:
    """Every segment's members and every trait's values as of `at_us`."""
    plan = compiler.compile_members(PROJECT, list(PROJECT.segments), at_us)
    store = engine.store
    assert isinstance(store, DuckDBStore)
    found: dict[str, Any] = dict(store.flagged_members(compiler.render(plan.query), plan.columns))
    for name in PROJECT.segments:  # alone, a segment's query may start from one read instead
        alone = store.query(compiler.render(compiler.compile_segment(name, PROJECT, at_us)))
        assert sorted(str(r[0]) for r in alone) == found[name], name
    for trait in TRAITS:
        rows = store.query(compiler.render(compiler.compile_trait(trait, at_us)))
        found[trait.name] = sorted((str(p), str(v)) for p, v in rows if v is not None)
    return found


@pytest.fixture(params=[1, 2])
def shop(project_dir: Path, request: pytest.FixtureRequest) -> Iterator[Engine]:
    """Events ingested in shuffled batches (late events land after newer ones), merges."""
    rng = random.Random(request.param)
    messages = history(rng, 400)
    with Engine.open(project_dir) as engine:
        for start in range(0, len(messages), 60):
            engine.ingest_messages(messages[start : start + 60])
            if start == 120:
                engine.ingest_messages([merge("a0", "u1", start), merge("a1", "u2", start)])
        yield engine


def assert_agree(engine: Engine, *, everything: bool = False) -> None:
    """At every instant, the compiler told what the store's summaries hold agrees with the
    one reading the log only (`everything`: and reads every property from summaries now)."""
    for at_us in INSTANTS:
        from_log = answers(engine, DuckDBCompiler(), at_us)
        compiler = with_summaries(DuckDBCompiler(), engine.store, PROJECT, at_us)
        assert isinstance(compiler, DuckDBCompiler) and compiler.summaries is not None
        if at_us == NOW_US + 30 * DAY_US:  # after every event: nothing straddles
            assert not compiler.summaries.straddling_events
            assert len(compiler.summaries.properties) == 2 or not everything
        assert answers(engine, compiler, at_us) == from_log, at_us
    assert any(from_log[s] for s in ("big", "discount_lover"))


def test_summaries_agree_with_the_log_at_every_instant(shop: Engine) -> None:
    store = shop.store
    assert isinstance(store, DuckDBStore)
    # The first compute that reads revenue and discount summarises them, from the log.
    assert store.query("SELECT count(*) FROM summarised_properties") == [(0,)]
    assert_agree(shop, everything=True)
    assert store.query("SELECT count(*) FROM summarised_properties") == [(2,)]
    store.compact_summaries()
    assert_agree(shop, everything=True)


def test_compiled_sql_reads_summaries_only_where_they_are_exact() -> None:
    everything = SummaryCoverage.of([], [], [("order_completed", "revenue")])
    compiler = DuckDBCompiler(summaries=everything)
    ltv = compiler.render(compiler.compile_segment("big", PROJECT, NOW_US))
    assert "property_summaries" in ltv and "profile_events" not in ltv
    month = compiler.render(compiler.compile_segment("recent_month", PROJECT, NOW_US))
    assert "event_summaries" in month and "profile_events" not in month
    # A window of a week or less reads the log: in arrival order, its rows are the last ones.
    recent = compiler.render(compiler.compile_segment("recent", PROJECT, NOW_US))
    assert "profile_events" in recent and "event_summaries" not in recent
    # An order 60 to 20 days ago and none since: the latest order, which the summaries hold.
    lapsed = compiler.render(compiler.compile_segment("lapsed", PROJECT, NOW_US))
    assert "event_summaries" in lapsed and "profile_events" not in lapsed
    between = EventCondition("order_completed", window=Between(dur("60d"), dur("20d")))
    counted = compiler.render(compiler.compile_condition(between, PROJECT, NOW_US))
    assert "profile_events" in counted  # a count over a window reads the log
    # Discount is not summarised; orders straddle the instant: both read from the log.
    mixed = DuckDBCompiler(summaries=SummaryCoverage.of(["order_completed"], [], []))
    for name in ("big", "recent", "discount_lover"):
        sql = mixed.render(mixed.compile_segment(name, PROJECT, NOW_US))
        assert "summaries" not in sql and "profile_events" in sql
    plain = DuckDBCompiler()
    assert "summaries" not in plain.render(plain.compile_segment("big", PROJECT, NOW_US))
