"""A segment's query starts from one read of the events only when no profile without a row there
can be a member; otherwise it walks every live profile."""

from __future__ import annotations

import pytest
from sqlglot import exp, parse_one

from cohortsync.segments.anchor import rejects_nulls
from cohortsync.segments.ast import (
    After,
    All,
    AnyOf,
    Comparison,
    ComputedTrait,
    Condition,
    EventCondition,
    HasIdentifier,
    Not,
    Segment,
    SegmentProject,
    Since,
    TraitCondition,
    Within,
)
from cohortsync.segments.compile import DuckDBCompiler, PostgresCompiler
from tests.segments.test_compile import dur

A = frozenset({"a0"})


@pytest.mark.parametrize(
    ("sql", "rejects"),
    [
        ("COALESCE(a0 >= 5, FALSE)", True),
        ("NOT COALESCE(a0 >= 5, FALSE)", False),
        ("a0 IS NOT NULL", True),
        ("a0 IS NULL", False),
        ("COALESCE(a0, 0) >= 3", True),
        ("COALESCE(a0, 0) = 0", False),
        ("COALESCE(a0, 0) <= 2", False),
        ("COALESCE(a0 > 1, FALSE) AND COALESCE(b0 > 1, FALSE)", True),
        ("COALESCE(a0 > 1, FALSE) OR COALESCE(b0 > 1, FALSE)", False),
        ("(COALESCE(a0 > 1, FALSE) OR a0 = 2) AND NOT b0", True),
        ("NOT (COALESCE(a0 > 1, FALSE) OR COALESCE(a0 < 0, FALSE))", False),
        ("COALESCE(b0 > 1, FALSE)", False),
        ("p.profile_id IN (SELECT profile_id FROM identities)", False),
        ("COALESCE(CAST(a0 AS DOUBLE) > 1, FALSE)", True),
        ("COALESCE(TRY_CAST(b0 AS DOUBLE) > a0, TRUE)", False),
        ("COALESCE(a0 > b0, FALSE) AND TRUE", True),
    ],
)
def test_null_rejection(sql: str, rejects: bool) -> None:
    assert rejects_nulls(parse_one(sql, read="duckdb"), A) is rejects


def _project(**segments: Condition) -> SegmentProject:
    ltv = ComputedTrait("ltv", "order_completed", "sum", "revenue")
    return SegmentProject(
        traits={"ltv": ltv},
        segments={n: Segment(n, c) for n, c in segments.items()},
        audiences={},
    )


RECENT = EventCondition("order_completed", window=Within(dur("7d")))
PROJECT = _project(
    recent=RECENT,
    repeat=EventCondition("order_completed", count_op="gte", count=3),
    big=TraitCondition(Comparison("ltv", "gte", 100)),
    recent_not_big=All((RECENT, Not(TraitCondition(Comparison("ltv", "gte", 100))))),
    no_orders=Not(EventCondition("order_completed")),
    none_recently=EventCondition(
        "order_completed", window=Within(dur("7d")), count_op="eq", count=0
    ),
    never_cancelled=EventCondition(  # false while it never started
        "subscription_cancelled", window=Since("subscription_started"), count_op="eq", count=0
    ),
    recent_or_email=AnyOf((RECENT, HasIdentifier("email"))),
    small=TraitCondition(Comparison("ltv", "lt", 50)),
    no_order_after_message_1=EventCondition(  # false without a message 1
        "order_completed",
        window=After("email_delivered", (Comparison("campaign_id", "eq", "c1"),), dur("24h")),
        count_op="eq",
        count=0,
    ),
    not_ordered_after_message_1=Not(  # true without a message 1
        EventCondition("order_completed", window=After("email_delivered", (), dur("24h")))
    ),
)


@pytest.mark.parametrize("compiler", [DuckDBCompiler(), PostgresCompiler()])
def test_a_query_walks_every_profile_only_when_a_profile_without_events_could_be_in(
    compiler: DuckDBCompiler,
) -> None:
    starts = {
        "recent", "repeat", "big", "recent_not_big", "small", "never_cancelled",
        "no_order_after_message_1",
    }  # fmt: skip
    for name in PROJECT.segments:
        query = compiler.compile_segment(name, PROJECT, 1_780_000_000_000_000)
        source = query.args["from_"].this if "from_" in query.args else query.args["from"].this
        from_profiles = isinstance(source, exp.Table) and source.name == "profiles"
        assert from_profiles is (name not in starts), name
        sql = compiler.render(query)
        assert ("merged_into" in sql) is from_profiles, name  # a read's ids are live already
