"""The two back ends agree: compiled SQL over the real store == the Python evaluator.

Hypothesis draws event histories, identify traits and identifiers for a few profiles, segments
over every AST form (nested, with SegmentRefs and computed traits) and evaluation instants
(often exactly on window boundaries). Each example is ingested through a real engine; the
evaluator's `ProfileHistory` is read back from the store (checking the round-trip), and
segment membership, computed trait values and `next_change` are checked against the SQL.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cohortsync.engine import Engine
from cohortsync.segments.ast import (
    AGGREGATIONS,
    OPERATORS,
    After,
    All,
    AnyOf,
    Before,
    Between,
    Comparison,
    ComputedTrait,
    Condition,
    Duration,
    EventCondition,
    Ever,
    HasIdentifier,
    Not,
    Segment,
    SegmentProject,
    SegmentRef,
    Since,
    TraitCondition,
    Window,
    Within,
)
from cohortsync.segments.compile import Compiler, DuckDBCompiler, with_summaries
from cohortsync.segments.evaluate import (
    EventRecord,
    ProfileHistory,
    compute_trait,
    evaluate,
    next_change,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ANCHOR = datetime(2026, 1, 10, tzinfo=UTC)
ANCHOR_US = (ANCHOR - EPOCH) // timedelta(microseconds=1)
H = 3_600_000_000
D = 24 * H
DURATIONS = {"6h": 6 * H, "1d": D, "7d": 7 * D, "21d": 21 * D, "35d": 35 * D}
EVENTS = ("added_to_cart", "order_completed", "product_viewed")
PROPS = ("price", "category", "qty", "meta.channel")
COUNT_OPS = ("eq", "ne", "gt", "gte", "lt", "lte")
SEGMENTS = ("s0", "s1", "s2")
TRAITS = ("ct0", "ct1")
FAR = 400 * D

# Scalars shared by properties, traits and literals so that comparisons often hit.
# Floats are dyadic so sums and averages are exact in any order.
scalars = st.one_of(
    st.integers(-2, 12),
    st.sampled_from([0.5, 1.5, 2.25, 5.0, -3.0, 10.0]),
    st.sampled_from(["shoes", "bags", "Shoes", "5", "", "sho", "ä"]),
    st.booleans(),
)
prop_values = st.one_of(scalars, st.none())
literals = st.one_of(scalars, st.none())

durations = st.sampled_from(sorted(DURATIONS)).map(lambda t: Duration(t, DURATIONS[t]))


@st.composite
def windows(draw: st.DrawFn) -> Window:
    kinds = ["ever", "within", "within", "between", "before", "since", "after", "after"]
    kind = draw(st.sampled_from(kinds))
    if kind == "ever":
        return Ever()
    if kind == "after":
        return After(
            draw(st.sampled_from(EVENTS)), draw(wheres), draw(st.one_of(st.none(), durations))
        )
    if kind == "within":
        return Within(draw(durations))
    if kind == "before":
        return Before(draw(durations))
    if kind == "since":
        return Since(draw(st.sampled_from(EVENTS)))
    a, b = draw(st.lists(durations, min_size=2, max_size=2, unique_by=lambda d: d.micros))
    older, newer = (a, b) if a.micros > b.micros else (b, a)
    return Between(older, newer)


@st.composite
def comparisons(draw: st.DrawFn, fields: st.SearchStrategy[str]) -> Comparison:
    field = draw(fields)
    op = draw(st.sampled_from(OPERATORS))
    value: Any
    if op in ("in", "not_in"):
        value = draw(st.lists(scalars, min_size=1, max_size=3))
    elif op == "exists":
        value = draw(st.booleans())
    elif op == "contains":
        value = draw(st.one_of(st.sampled_from(["ho", "S", "", "a"]), scalars))
    else:
        value = draw(literals)
    return Comparison(field, op, value)


wheres = st.one_of(
    st.just(()), st.lists(comparisons(st.sampled_from(PROPS)), max_size=2).map(tuple)
)


@st.composite
def event_conditions(draw: st.DrawFn) -> EventCondition:
    return EventCondition(
        draw(st.sampled_from(EVENTS)),
        where=draw(wheres),
        window=draw(windows()),
        count_op=draw(st.sampled_from(COUNT_OPS)),
        count=draw(st.integers(0, 3)),
    )


@st.composite
def computed_traits(draw: st.DrawFn, name: str) -> ComputedTrait:
    agg = draw(st.sampled_from(AGGREGATIONS))
    prop = draw(st.sampled_from(PROPS)) if agg != "count" else draw(st.sampled_from((None, *PROPS)))
    return ComputedTrait(
        name, draw(st.sampled_from(EVENTS)), agg, prop, draw(wheres), draw(windows())
    )


def conditions(refs: tuple[str, ...]) -> st.SearchStrategy[Condition]:
    trait_fields = st.sampled_from(("plan", "ltv", "address.city", *TRAITS))
    leaves: list[st.SearchStrategy[Condition]] = [
        event_conditions(),
        event_conditions(),
        comparisons(trait_fields).map(TraitCondition),
        st.sampled_from(("email", "user_id", "phone")).map(HasIdentifier),
    ]
    if refs:
        leaves.append(st.sampled_from(refs).map(SegmentRef))
    return st.recursive(
        st.one_of(leaves),
        lambda kids: st.one_of(
            st.lists(kids, min_size=1, max_size=3).map(lambda cs: All(tuple(cs))),
            st.lists(kids, min_size=1, max_size=3).map(lambda cs: AnyOf(tuple(cs))),
            kids.map(Not),
        ),
        max_leaves=5,
    )


@st.composite
def projects(draw: st.DrawFn) -> SegmentProject:
    traits = {name: draw(computed_traits(name)) for name in TRAITS}
    segments: dict[str, Segment] = {}
    for i, name in enumerate(SEGMENTS):
        segments[name] = Segment(name, draw(conditions(SEGMENTS[:i])))
    return SegmentProject(traits, segments, {})


offsets = st.one_of(
    st.integers(-2 * D, 120 * D),
    st.integers(0, 36 * D),
    st.sampled_from([0, H, 6 * H, D, 7 * D, 21 * D, 35 * D, -H]),
)


@st.composite
def properties(draw: st.DrawFn) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for key in ("price", "category", "qty"):
        if draw(st.booleans()):
            props[key] = draw(prop_values)
    if draw(st.integers(0, 3)) == 0:
        props["meta"] = {"channel": draw(prop_values)}
    return props


@st.composite
def profiles(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for i in range(draw(st.integers(1, 4))):
        traits: dict[str, Any] = {}
        for key in ("plan", "ltv"):
            if draw(st.booleans()):
                traits[key] = draw(prop_values)
        if draw(st.integers(0, 3)) == 0:
            traits["address"] = {"city": draw(st.sampled_from(["Oslo", "Rome", 5]))}
        events = draw(
            st.lists(st.tuples(st.sampled_from(EVENTS), offsets, properties()), max_size=8)
        )
        # Events a window's length (give or take 1 µs) after another: on the bound of `within`
        # after an anchor.
        for _, off, _ in draw(st.lists(st.sampled_from(events), max_size=2)) if events else ():
            later = off - draw(st.sampled_from(sorted(DURATIONS.values())))
            later += draw(st.sampled_from([-1, 0, 0, 1]))
            events.append((draw(st.sampled_from(EVENTS)), later, draw(properties())))
        out.append(
            {"user": f"u{i}", "traits": traits, "email": draw(st.booleans()), "events": events}
        )
    return out


@st.composite
def last_between(draw: st.DrawFn) -> Condition:
    """ "An event between X and Y ago and none in the last Z" (the lapsed pattern, which the
    compiler reads from one latest timestamp), its parts sometimes on other events or filters."""
    event, where = draw(st.sampled_from(EVENTS)), draw(wheres)
    a, b = draw(st.lists(durations, min_size=2, max_size=2, unique_by=lambda d: d.micros))
    older, newer = (a, b) if a.micros > b.micros else (b, a)
    op, count = draw(st.sampled_from([("gte", 1), ("gt", 0), ("ne", 0), ("gte", 2)]))
    gap = EventCondition(
        draw(st.sampled_from([event, event, event, *EVENTS])),
        where=draw(st.sampled_from([where, where, ()])),
        window=Within(draw(durations)),
    )
    parts = [
        EventCondition(event, where, Between(older, newer), op, count),
        Not(gap),
        *draw(st.lists(event_conditions(), max_size=1)),
    ]
    return All(tuple(draw(st.permutations(parts))))


@st.composite
def non_converters(draw: st.DrawFn) -> Condition:
    """ "The latest anchor event X to Y ago, and no (or some) event within D after it" (the
    example project's non-converters after message 1): the anchor filtered like its wait."""
    anchor, where = draw(st.sampled_from(EVENTS)), draw(wheres)
    a, b = draw(st.lists(durations, min_size=2, max_size=2, unique_by=lambda d: d.micros))
    older, newer = (a, b) if a.micros > b.micros else (b, a)
    op, count = draw(st.sampled_from([("eq", 0), ("eq", 0), ("gte", 1), ("lt", 2), ("gte", 0)]))
    after = After(anchor, where, draw(st.one_of(durations, durations, st.none())))
    parts = [
        EventCondition(anchor, where, Between(older, newer)),
        Not(EventCondition(anchor, where, Within(newer))),
        EventCondition(draw(st.sampled_from(EVENTS)), draw(wheres), after, op, count),
    ]
    return All(tuple(draw(st.permutations(parts))))


@st.composite
def anchored_projects(draw: st.DrawFn) -> SegmentProject:
    traits = {name: draw(computed_traits(name)) for name in TRAITS}
    s0, s1 = draw(non_converters()), draw(non_converters())
    s2 = draw(st.sampled_from([SegmentRef("s0"), All((SegmentRef("s0"), Not(SegmentRef("s1"))))]))
    return SegmentProject(
        traits, {n: Segment(n, c) for n, c in zip(SEGMENTS, (s0, s1, s2), strict=True)}, {}
    )


@st.composite
def lapsed_projects(draw: st.DrawFn) -> SegmentProject:
    traits = {name: draw(computed_traits(name)) for name in TRAITS}
    s0, s1 = draw(last_between()), draw(last_between())
    s2 = draw(st.sampled_from([SegmentRef("s0"), All((SegmentRef("s0"), Not(SegmentRef("s1"))))]))
    return SegmentProject(
        traits, {n: Segment(n, c) for n, c in zip(SEGMENTS, (s0, s1, s2), strict=True)}, {}
    )


@st.composite
def scenarios(
    draw: st.DrawFn, project_strategy: st.SearchStrategy[SegmentProject] | None = None
) -> tuple[list[dict[str, Any]], SegmentProject, int]:
    people = draw(profiles())
    project = draw(projects() if project_strategy is None else project_strategy)
    stamps = [ANCHOR_US - off for p in people for _, off, _ in p["events"]]
    # Instants on window edges: ts + d - 1, ts + d, ts + d + 1 for every duration.
    edges = [ts + d + k for ts in stamps for d in (0, *DURATIONS.values()) for k in (-1, 0, 1)]
    last = max(stamps, default=ANCHOR_US)
    late = [ANCHOR_US + 2 * D, *(last + d for d in (0, *DURATIONS.values()))]
    at = draw(
        st.one_of(
            st.just(ANCHOR_US),
            st.sampled_from(late),
            st.sampled_from(edges) if edges else st.nothing(),
        )
    )
    return people, project, at


# --- the store side -------------------------------------------------------------------------

_run = itertools.count()


def iso(us: int) -> str:
    """An ISO-8601 UTC timestamp with microseconds."""
    return (EPOCH + timedelta(microseconds=us)).isoformat().replace("+00:00", "Z")


def messages(people: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """Segment messages for the drawn profiles; user ids and message ids carry `prefix`."""
    out: list[dict[str, Any]] = []
    n = itertools.count()
    for p in people:
        user = f"{prefix}{p['user']}"
        traits = dict(p["traits"])
        if p["email"]:
            traits["email"] = f"{prefix}{p['user']}@example.com"
        out.append(
            {
                "type": "identify",
                "messageId": f"{prefix}m{next(n):03d}",
                "userId": user,
                "timestamp": iso(ANCHOR_US - 200 * D),
                "traits": traits,
            }
        )
        for event, off, props in p["events"]:
            out.append(
                {
                    "type": "track",
                    "messageId": f"{prefix}m{next(n):03d}",
                    "userId": user,
                    "event": event,
                    "timestamp": iso(ANCHOR_US - off),
                    "properties": props,
                }
            )
    return out


def histories(engine: Engine, prefix: str) -> dict[str, ProfileHistory]:
    """Every profile of this example (by profile id), read back from the store."""
    q = engine.store.query
    like = (f"{prefix}%",)
    users = dict(q("SELECT profile_id, value FROM identities WHERE kind = 'user_id' "
                   "AND value LIKE ?", like))  # fmt: skip
    events: dict[str, list[EventRecord]] = {pid: [] for pid in users}
    rows = q(
        'SELECT canonical_profile_id, message_id, event_key, epoch_us("timestamp"), properties '
        "FROM profile_events WHERE event_key IS NOT NULL AND message_id LIKE ?",
        like,
    )
    for pid, mid, key, ts, props in rows:
        events[pid].append(EventRecord(mid, key, ts, json.loads(props) if props else {}))
    traits: dict[str, dict[str, Any]] = {pid: {} for pid in users}
    for pid, name, value in q("SELECT profile_id, name, value FROM profile_traits", ()):
        if pid in traits:
            traits[pid][name] = None if value is None else json.loads(value)
    ids: dict[str, dict[str, list[str]]] = {pid: {} for pid in users}
    for pid, kind, value in q("SELECT profile_id, kind, value FROM identities", ()):
        if pid in ids:
            ids[pid].setdefault(kind, []).append(value)
    return {
        pid: ProfileHistory(
            pid,
            tuple(events[pid]),
            traits[pid],
            {k: tuple(v) for k, v in ids[pid].items()},
        )
        for pid in users
    }


def sql_members(
    engine: Engine, project: SegmentProject, name: str, at: int, compiler: Compiler | None = None
) -> set[str]:
    compiler = compiler or DuckDBCompiler()
    rows = engine.store.query(compiler.render(compiler.compile_segment(name, project, at)), ())
    ids = [row[0] for row in rows]
    assert len(ids) == len(set(ids)), "duplicate members"
    return set(ids)


def sql_trait(
    engine: Engine, trait: ComputedTrait, at: int, compiler: Compiler | None = None
) -> dict[str, Any]:
    compiler = compiler or DuckDBCompiler()
    rows = engine.store.query(compiler.render(compiler.compile_trait(trait, at)), ())
    return {pid: None if v is None else json.loads(v) for pid, v in rows}


def same_value(sql: Any, py: Any) -> bool:
    """Trait values agree; numbers numerically (SQL sums are doubles), bools are not numbers."""
    if isinstance(sql, bool) or isinstance(py, bool):
        return type(sql) is type(py) and sql == py
    if isinstance(sql, int | float) and isinstance(py, int | float):
        return math.isclose(sql, py, rel_tol=1e-9, abs_tol=1e-9)
    return bool(type(sql) is type(py) and sql == py)


@pytest.fixture(scope="module")
def shared_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """One real engine for every example; each example uses its own id prefix."""
    folder: Path = tmp_path_factory.mktemp("agreement")
    (folder / "cohortsync.yml").write_text(
        "store: store.duckdb\nidentity:\n  primary: email\n  default_region: US\n"
        "sources:\n  web:\n    write_key: wk_agreement_0123456789\n",
        encoding="utf-8",
    )
    with Engine.open(folder) as opened:
        yield opened


def check(engine: Engine, people: list[dict[str, Any]], project: SegmentProject, at: int) -> str:
    """Ingest the example, assert the back ends agree; the example's id prefix."""
    run = next(_run)
    prefix = f"x{run}-"

    # The portable compiler (no DuckDB-only aggregates), DuckDB's, and DuckDB's told what the
    # store's summaries hold as of each instant, in turn: the shared-scan most_frequent and its
    # window-ranked form are both checked, and reads of the summaries as well as of the log.
    def compiler_at(t: int) -> Compiler:
        if run % 3 == 0:
            return Compiler()
        if run % 3 == 1:
            return DuckDBCompiler()
        return with_summaries(DuckDBCompiler(), engine.store, project, t)

    engine.ingest_messages(messages(people, prefix))
    hist = histories(engine, prefix)
    assert len(hist) == len(people)
    # The store round-trip keeps every event.
    assert sum(len(h.events) for h in hist.values()) == sum(len(p["events"]) for p in people)

    for trait in project.traits.values():
        sql = sql_trait(engine, trait, at, compiler_at(at))
        for pid, h in hist.items():
            py = compute_trait(trait, h, at)
            assert same_value(sql[pid], py), (trait, pid, sql[pid], py, h)

    cache: dict[tuple[str, int], set[str]] = {}

    def members(name: str, t: int) -> set[str]:
        if (name, t) not in cache:
            cache[name, t] = sql_members(engine, project, name, t, compiler_at(t)) & set(hist)
        return cache[name, t]

    for name, segment in project.segments.items():
        py_members = {pid for pid, h in hist.items() if evaluate(segment.condition, h, at, project)}
        assert members(name, at) == py_members, (name, segment.condition)

    check_next_change(project, hist, at, members)
    return prefix


EXAMPLES = settings(
    max_examples=int(os.environ.get("AGREEMENT_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# Segments of every form; "an event between X and Y ago and none in the last Z" (the lapsed
# pattern), which the compiler reads from one latest timestamp; and "none within D after the
# latest anchor, which is X to Y old" (the non-converters after message 1).
PROJECTS = {
    "every form": None,
    "lapsed pattern": lapsed_projects(),
    "after an anchor": anchored_projects(),
}


@pytest.mark.parametrize("projects", PROJECTS.values(), ids=PROJECTS.keys())
@EXAMPLES
@given(data=st.data())
def test_sql_and_evaluator_agree(
    shared_engine: Engine, projects: st.SearchStrategy[SegmentProject] | None, data: st.DataObject
) -> None:
    people, project, at = data.draw(scenarios(projects), label="scenario")
    check(shared_engine, people, project, at)


# --- regressions found by the property above -------------------------------------------------


def one_segment(cond: Condition, *traits: ComputedTrait) -> SegmentProject:
    """A project whose every segment is `cond` (the property checks next_change on s2)."""
    pool = {t.name: t for t in traits} or {
        n: ComputedTrait(n, "product_viewed", "count", None) for n in TRAITS
    }
    return SegmentProject(pool, {n: Segment(n, cond) for n in SEGMENTS}, {})


def user_members(engine: Engine, project: SegmentProject, prefix: str) -> set[str]:
    """user_ids (without the example prefix) of the SQL members of s2 at the anchor."""
    rows = engine.store.query(
        "SELECT profile_id, value FROM identities WHERE kind = 'user_id' AND value LIKE ?",
        (f"{prefix}%",),
    )
    users = dict(rows)
    found = sql_members(engine, project, "s2", ANCHOR_US)
    return {users[pid].removeprefix(prefix) for pid in found if pid in users}


def test_numeric_comparison_on_a_non_numeric_value_is_false_not_a_cast_error(
    shared_engine: Engine,
) -> None:
    """CAST(... AS DOUBLE) ran before the type check on `false`; TRY_CAST keeps it False."""
    people = [
        {"user": "u0", "traits": {}, "email": False,
         "events": [("added_to_cart", H, {"price": False})]},
        {"user": "u1", "traits": {}, "email": False,
         "events": [("added_to_cart", H, {"price": 3})]},
    ]  # fmt: skip
    cond = EventCondition("added_to_cart", where=(Comparison("price", "gt", 0),))
    project = one_segment(cond)
    prefix = check(shared_engine, people, project, ANCHOR_US)
    assert user_members(shared_engine, project, prefix) == {"u1"}


@pytest.mark.parametrize("op", ["ne", "not_in"])
def test_ne_and_not_in_hold_for_a_present_value_of_another_type(
    shared_engine: Engine, op: str
) -> None:
    """`ne`/`not_in` are the complements of `eq`/`in` over present values (5 is not "shoes")."""
    value: Any = "shoes" if op == "ne" else ["shoes"]
    people = [
        {"user": "u0", "traits": {}, "email": False,
         "events": [("product_viewed", H, {"category": 5})]},
        {"user": "u1", "traits": {}, "email": False,
         "events": [("product_viewed", H, {"category": "shoes"})]},
        {"user": "u2", "traits": {}, "email": False,
         "events": [("product_viewed", H, {"category": None})]},
    ]  # fmt: skip
    cond = EventCondition("product_viewed", where=(Comparison("category", op, value),))
    project = one_segment(cond)
    prefix = check(shared_engine, people, project, ANCHOR_US)
    assert user_members(shared_engine, project, prefix) == {"u0"}


def test_most_frequent_keeps_5_and_string_5_apart_and_breaks_ties_by_typed_value(
    shared_engine: Engine,
) -> None:
    """SQL grouped 5 with "5" (same text); ties: numbers by value before strings."""
    people = [
        {"user": "u0", "traits": {}, "email": False,
         "events": [("product_viewed", k * H, {"price": v})
                    for k, v in enumerate([5, "5", "5", 1.5, 1.5, 1e22, 1e22, True, True], 1)]},
    ]  # fmt: skip
    trait = ComputedTrait("ct0", "product_viewed", "most_frequent", "price")
    project = one_segment(TraitCondition(Comparison("ct0", "eq", 1.5)), trait)
    prefix = check(shared_engine, people, project, ANCHOR_US)
    assert user_members(shared_engine, project, prefix) == {"u0"}


AFTER_SHOES_CART = EventCondition(
    "order_completed",
    window=After("added_to_cart", (Comparison("category", "eq", "shoes"),), Duration("1d", D)),
    count_op="eq",
    count=0,
)
AFTER_EDGES = [
    # An order exactly 1d after the anchor counts; 1 µs later it does not; at the anchor's
    # instant it is not after it; a later cart that fails the anchor's filter moves nothing.
    {"user": "u0", "traits": {}, "email": False,
     "events": [("added_to_cart", 2 * D, {"category": "shoes"}), ("order_completed", D, {})]},
    {"user": "u1", "traits": {}, "email": False,
     "events": [("added_to_cart", 2 * D, {"category": "shoes"}),
                ("order_completed", D - 1, {})]},
    {"user": "u2", "traits": {}, "email": False,
     "events": [("added_to_cart", 2 * D, {"category": "shoes"}),
                ("order_completed", 2 * D, {})]},
    {"user": "u3", "traits": {}, "email": False,
     "events": [("added_to_cart", 2 * D, {"category": "shoes"}),
                ("added_to_cart", D + H, {"category": "bags"}), ("order_completed", D, {})]},
    {"user": "u4", "traits": {}, "email": False,
     "events": [("added_to_cart", 2 * D, {"category": "bags"})]},
]  # fmt: skip


def test_after_counts_up_to_its_bound_from_the_latest_matching_anchor(
    shared_engine: Engine,
) -> None:
    """The edges of `after:` with `within:` that the property draws only now and then."""
    project = one_segment(AFTER_SHOES_CART)
    prefix = check(shared_engine, AFTER_EDGES, project, ANCHOR_US)
    assert user_members(shared_engine, project, prefix) == {"u1", "u2"}


def check_next_change(
    project: SegmentProject,
    hist: dict[str, ProfileHistory],
    at: int,
    members: Callable[[str, int], set[str]],
) -> None:
    """`next_change` is exact against SQL members (`members(name, instant)`): the answer is the
    same just before it and flips at it, or never flips when it is None. Profiles with an event
    after `at` are skipped (a later event, not time, changes them)."""
    for top in project.segments.values():
        for pid, h in hist.items():
            if any(e.timestamp_us > at for e in h.events):
                continue
            base = pid in members(top.name, at)
            change = next_change(top.condition, h, at, project)
            if change is None:
                assert (pid in members(top.name, at + FAR)) == base, (pid, top.condition)
                continue
            assert change > at
            assert (pid in members(top.name, change - 1)) == base, (pid, change, top.condition)
            assert (pid in members(top.name, change)) != base, (pid, change, top.condition)
