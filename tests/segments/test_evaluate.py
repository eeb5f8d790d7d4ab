"""The Python segment evaluator: hand-checked histories and an exactness property."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cohortsync.segments.ast import (
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
from cohortsync.segments.evaluate import (
    EventRecord,
    ProfileHistory,
    compute_trait,
    evaluate,
    next_change,
)

H = 3_600_000_000
D = 24 * H
T0 = 1_700_000_000_000_000


def dur(micros: int) -> Duration:
    """A Duration with a descriptive text."""
    return Duration(f"{micros}us", micros)


def ev(event: str, ts: int, mid: str | None = None, **props: Any) -> EventRecord:
    """An event record; message_id defaults to event@ts."""
    return EventRecord(mid or f"{event}@{ts}", event, ts, props)


def hist(*events: EventRecord, traits: dict[str, Any] | None = None, **ids: Any) -> ProfileHistory:
    """A profile history, sorted as the contract requires."""
    ordered = tuple(sorted(events, key=lambda e: (e.timestamp_us, e.message_id)))
    return ProfileHistory("p1", ordered, traits or {}, {k: tuple(v) for k, v in ids.items()})


def proj(
    segments: dict[str, Condition] | None = None, traits: tuple[ComputedTrait, ...] = ()
) -> SegmentProject:
    """A project holding the given segments and computed traits."""
    segs = {n: Segment(n, c) for n, c in (segments or {}).items()}
    return SegmentProject({t.name: t for t in traits}, segs, {})


EMPTY = proj()

CART = All(
    (
        EventCondition("add_to_cart", window=Within(dur(6 * H))),
        Not(EventCondition("order_completed", window=Since("add_to_cart"))),
    )
)


def test_cart_abandon_enters_on_add_and_leaves_six_hours_after_last_add() -> None:
    """Enters on add; a second add pushes the exit to exactly last add + 6h."""
    h = hist(ev("add_to_cart", T0), ev("add_to_cart", T0 + H))
    assert not evaluate(CART, h, T0 - 1, EMPTY)
    assert evaluate(CART, h, T0, EMPTY)
    assert next_change(CART, hist(ev("add_to_cart", T0)), T0, EMPTY) == T0 + 6 * H
    assert next_change(CART, h, T0 + H, EMPTY) == T0 + 7 * H
    assert evaluate(CART, h, T0 + 7 * H - 1, EMPTY)
    assert not evaluate(CART, h, T0 + 7 * H, EMPTY)
    assert next_change(CART, h, T0 + 7 * H, EMPTY) is None


def test_cart_abandon_leaves_on_order_and_reenters_on_new_add() -> None:
    """An order after the add removes the profile; another add brings it back."""
    h = hist(ev("add_to_cart", T0), ev("order_completed", T0 + H), ev("add_to_cart", T0 + 2 * H))
    assert evaluate(CART, h, T0 + H - 1, EMPTY)
    assert not evaluate(CART, h, T0 + H, EMPTY)
    assert next_change(CART, h, T0 + H, EMPTY) is None  # later add is "new"
    assert evaluate(CART, h, T0 + 2 * H, EMPTY)
    assert next_change(CART, h, T0 + 2 * H, EMPTY) == T0 + 8 * H


REPLENISH = EventCondition("order_completed", window=Between(dur(35 * D), dur(21 * D)))


def test_between_replenishment_window_entry_and_exit() -> None:
    """Enters at ts + 21d, leaves just after ts + 35d (both ends included)."""
    h = hist(ev("order_completed", T0))
    assert not evaluate(REPLENISH, h, T0, EMPTY)
    assert next_change(REPLENISH, h, T0, EMPTY) == T0 + 21 * D
    assert not evaluate(REPLENISH, h, T0 + 21 * D - 1, EMPTY)
    assert evaluate(REPLENISH, h, T0 + 21 * D, EMPTY)
    assert next_change(REPLENISH, h, T0 + 21 * D, EMPTY) == T0 + 35 * D + 1
    assert evaluate(REPLENISH, h, T0 + 35 * D, EMPTY)
    assert not evaluate(REPLENISH, h, T0 + 35 * D + 1, EMPTY)
    assert next_change(REPLENISH, h, T0 + 35 * D + 1, EMPTY) is None


def test_before_window() -> None:
    """Before(90d) holds strictly after ts + 90d."""
    c = EventCondition("signup", window=Before(dur(90 * D)))
    h = hist(ev("signup", T0))
    assert not evaluate(c, h, T0 + 90 * D, EMPTY)
    assert next_change(c, h, T0, EMPTY) == T0 + 90 * D + 1
    assert evaluate(c, h, T0 + 90 * D + 1, EMPTY)
    assert next_change(c, h, T0 + 90 * D + 1, EMPTY) is None


def test_since_with_and_without_reference() -> None:
    """Since counts events strictly after the latest reference; no reference → False."""
    c = EventCondition("page_view", window=Since("purchase"), count_op="lte", count=5)
    assert not evaluate(c, hist(ev("page_view", T0)), T0, EMPTY)
    h = hist(ev("page_view", T0), ev("purchase", T0 + 1), ev("page_view", T0 + 2))
    assert not evaluate(EventCondition("page_view", window=Since("purchase")), h, T0 + 1, EMPTY)
    assert evaluate(EventCondition("page_view", window=Since("purchase")), h, T0 + 2, EMPTY)
    two = EventCondition("page_view", window=Since("purchase"), count_op="eq", count=2)
    assert not evaluate(two, h, T0 + 2, EMPTY)
    same_ts = hist(ev("purchase", T0), ev("page_view", T0))
    assert not evaluate(EventCondition("page_view", window=Since("purchase")), same_ts, T0, EMPTY)
    assert next_change(c, h, T0 + 2, EMPTY) is None


M1 = (Comparison("campaign_id", "in", ("cart_1", "welcome_1")),)
NO_ORDER_AFTER_M1 = EventCondition(
    "order_completed", window=After("email_delivered", M1, dur(D)), count_op="eq", count=0
)


def m1(ts: int, campaign: str = "cart_1") -> EventRecord:
    """A delivery of `campaign` (message 1 unless told otherwise)."""
    return ev("email_delivered", ts, campaign_id=campaign)


def test_after_counts_from_the_latest_matching_anchor_up_to_its_bound() -> None:
    """No order within 24h after the latest delivery of message 1: the window is
    (anchor, anchor + 24h], other campaigns are no anchor, and a later anchor resets it."""
    c = NO_ORDER_AFTER_M1
    assert not evaluate(c, hist(), T0, EMPTY)  # no anchor: false whatever the count
    assert not evaluate(c, hist(m1(T0, "news")), T0 + H, EMPTY)
    late = hist(m1(T0), ev("order_completed", T0 + D + 1))
    assert evaluate(c, late, T0, EMPTY)
    assert evaluate(c, late, T0 + 2 * D, EMPTY)  # ordered, but after the 24h
    edge = hist(m1(T0), ev("order_completed", T0 + D))
    assert evaluate(c, edge, T0 + D - 1, EMPTY)
    assert not evaluate(c, edge, T0 + D, EMPTY)  # the bound is included
    assert evaluate(c, hist(m1(T0), ev("order_completed", T0)), T0, EMPTY)  # not after it
    bought = [m1(T0), ev("order_completed", T0 + H), m1(T0 + 2 * H, "news")]
    assert not evaluate(c, hist(*bought), T0 + 3 * H, EMPTY)
    assert evaluate(c, hist(*bought, m1(T0 + 3 * H, "welcome_1")), T0 + 3 * H, EMPTY)
    # Without a bound: every order after the anchor counts.
    since_m1 = EventCondition("order_completed", window=After("email_delivered", M1))
    assert evaluate(since_m1, late, T0 + 2 * D, EMPTY)
    assert not evaluate(since_m1, late, T0 + D, EMPTY)
    # Time alone never changes it: events after `at` do not exist yet.
    assert next_change(c, edge, T0 + 1, EMPTY) is None
    assert next_change(since_m1, late, T0 + 1, EMPTY) is None


def test_non_converter_after_message_1_enters_when_its_24h_are_over() -> None:
    """The example project's rule: the latest message 1 is 24h to 7d old (the wait) and no
    order came within 24h after it. It enters at delivery + 24h, leaves 7 days after it, and
    a new message 1 starts a new wait."""
    wait = [
        EventCondition("email_delivered", M1, Between(dur(7 * D), dur(D))),
        Not(EventCondition("email_delivered", M1, Within(dur(D)))),
    ]
    rule = All((*wait, NO_ORDER_AFTER_M1))
    h = hist(m1(T0))
    assert not evaluate(rule, h, T0 + D - 1, EMPTY)
    assert next_change(rule, h, T0, EMPTY) == T0 + D
    assert evaluate(rule, h, T0 + D, EMPTY)
    assert next_change(rule, h, T0 + D, EMPTY) == T0 + 7 * D + 1
    converted = hist(m1(T0), ev("order_completed", T0 + 23 * H))
    assert not evaluate(rule, converted, T0 + 2 * D, EMPTY)
    assert next_change(rule, converted, T0 + 23 * H, EMPTY) is None
    again = hist(m1(T0), ev("order_completed", T0 + 23 * H), m1(T0 + 3 * D, "welcome_1"))
    assert not evaluate(rule, again, T0 + 3 * D, EMPTY)
    assert next_change(rule, again, T0 + 3 * D, EMPTY) == T0 + 4 * D
    assert evaluate(rule, again, T0 + 4 * D, EMPTY)


def test_counts_and_ever() -> None:
    """Every count operator against the number of matching events."""
    h = hist(*(ev("login", T0 + i) for i in range(3)))
    for op, n, want in [
        ("gte", 3, True), ("gte", 4, False), ("gt", 2, True), ("gt", 3, False),
        ("eq", 3, True), ("ne", 3, False), ("lt", 4, True), ("lte", 2, False),
    ]:  # fmt: skip
        assert evaluate(EventCondition("login", count_op=op, count=n), h, T0 + 10, EMPTY) is want
    assert evaluate(EventCondition("login", count_op="eq", count=2), h, T0 + 1, EMPTY)
    assert evaluate(EventCondition("logout", count_op="eq", count=0), h, T0, EMPTY)
    assert not evaluate(EventCondition("login", window=Ever()), h, T0 - 1, EMPTY)


PROPS: dict[str, Any] = {
    "amount": 42,
    "price": 9.5,
    "name": "Blue Shirt",
    "flag": True,
    "nested": {"sku": "A-1", "qty": 3},
    "nothing": None,
}


@pytest.mark.parametrize(
    ("field", "op", "value", "want"),
    [
        ("amount", "eq", 42, True), ("amount", "eq", 42.0, True), ("amount", "eq", "42", False),
        ("amount", "ne", 41, True), ("amount", "ne", "x", True), ("name", "ne", "x", True),
        ("amount", "ne", 42.0, False), ("flag", "ne", 1, True), ("amount", "not_in", ["42"], True),
        ("amount", "gt", 41, True), ("amount", "gt", 42, False), ("amount", "gte", 42, True),
        ("price", "lt", 10, True), ("price", "lte", 9.5, True), ("price", "lt", 9.5, False),
        ("name", "gt", "A", True), ("name", "lt", "A", False), ("amount", "gt", "1", False),
        ("flag", "eq", True, True), ("flag", "eq", 1, False), ("amount", "eq", True, False),
        ("flag", "gt", False, False),
        ("name", "contains", "Shirt", True), ("name", "contains", "shirt", False),
        ("amount", "contains", "4", False),
        ("name", "in", ["Blue Shirt", "x"], True), ("name", "in", ["x"], False),
        ("amount", "in", ["42"], False), ("amount", "in", [1, 42], True),
        ("name", "not_in", ["x"], True), ("name", "not_in", ["Blue Shirt"], False),
        ("missing", "not_in", ["x"], False), ("missing", "in", ["x"], False),
        ("missing", "eq", 1, False), ("missing", "ne", 1, False), ("missing", "lt", 1, False),
        ("missing", "contains", "", False),
        ("missing", "exists", True, False), ("missing", "exists", False, True),
        ("amount", "exists", True, True), ("amount", "exists", False, False),
        ("nothing", "exists", False, True), ("nothing", "eq", None, False),
        ("nested.sku", "eq", "A-1", True), ("nested.qty", "gte", 3, True),
        ("nested.missing", "exists", False, True), ("name.sub", "exists", True, False),
        ("nested", "eq", "A-1", False),
    ],
)  # fmt: skip
def test_where_operators(field: str, op: str, value: Any, want: bool) -> None:
    """Each where operator, including missing properties and type mismatches."""
    c = EventCondition("purchase", where=(Comparison(field, op, value),))
    assert evaluate(c, hist(ev("purchase", T0, **PROPS)), T0, EMPTY) is want


def test_where_filters_counts_and_boundaries() -> None:
    """Only matching events count and only they produce window boundaries."""
    h = hist(ev("purchase", T0, amount=5), ev("purchase", T0 + H, amount=50))
    big = EventCondition("purchase", where=(Comparison("amount", "gt", 10),), window=Within(dur(D)))
    assert not evaluate(big, h, T0 + H - 1, EMPTY)
    assert evaluate(big, h, T0 + H, EMPTY)
    assert next_change(big, h, T0 + H, EMPTY) == T0 + H + D
    small = EventCondition("purchase", where=(Comparison("amount", "lt", 10),), count=2)
    assert not evaluate(small, h, T0 + H, EMPTY)
    with pytest.raises(ValueError, match="unknown operator"):
        evaluate(EventCondition("purchase", where=(Comparison("amount", "like", 1),)), h, T0, EMPTY)


SPEND = ComputedTrait("spend_30d", "purchase", "sum", "amount", window=Within(dur(30 * D)))


def trait(agg: str, prop: str | None = "v", **kw: Any) -> ComputedTrait:
    """A computed trait over `x` events."""
    return ComputedTrait(f"t_{agg}", "x", agg, prop, **kw)


AGG_HISTORY = hist(
    ev("x", T0, "m2", v=3),
    ev("x", T0, "m1", v="b"),
    ev("x", T0 + 1, "m3", v=3.5),
    ev("x", T0 + 2, "m4", other=1),
    ev("x", T0 + 3, "m5", v="b"),
    ev("x", T0 + 4, "m6", v=True),
    ev("x", T0 + 5, "m7", v=3),
    ev("x", T0 + 6, "m8", v={"k": 1}),
)


@pytest.mark.parametrize(
    ("agg", "want"),
    [
        ("count", 7), ("sum", 9.5), ("avg", 9.5 / 3), ("min", 3), ("max", 3.5),
        ("first", "b"), ("last", {"k": 1}), ("distinct_count", 5), ("most_frequent", 3),
    ],
)  # fmt: skip
def test_computed_trait_aggregations(agg: str, want: Any) -> None:
    """Aggregations over present values; first/last tie-break on message_id."""
    assert compute_trait(trait(agg), AGG_HISTORY, T0 + 10) == want


def test_computed_trait_empty_and_ties() -> None:
    """Counts give 0 and others None when nothing matches; most_frequent ties → smallest text."""
    empty = hist()
    for agg in ("count", "distinct_count"):
        assert compute_trait(trait(agg), empty, T0) == 0
    for agg in ("sum", "avg", "min", "max", "first", "last", "most_frequent"):
        assert compute_trait(trait(agg), empty, T0) is None
    assert compute_trait(trait("sum"), hist(ev("x", T0, v="a")), T0) is None
    assert compute_trait(trait("count", None), hist(ev("x", T0), ev("x", T0 + 1)), T0) == 1
    tie = hist(ev("x", T0, v="b"), ev("x", T0 + 1, v="a"), ev("x", T0 + 2, v=10))
    assert compute_trait(trait("most_frequent"), tie, T0 + 9) == 10  # numbers < "a" < "b"
    assert compute_trait(trait("first"), AGG_HISTORY, T0 - 1) is None
    since = trait("count", None, window=Since("y"))
    assert compute_trait(since, AGG_HISTORY, T0 + 9) == 0


def test_trait_conditions_identify_and_computed() -> None:
    """Identify traits, computed traits (which win), dotted names and exists."""
    h = hist(
        ev("purchase", T0, amount=60),
        ev("purchase", T0 + D, amount=50),
        traits={"plan": "pro", "spend_30d": 1, "address": {"city": "Oslo"}},
    )
    p = proj(traits=(SPEND,))

    def tc(field: str, op: str, value: Any) -> TraitCondition:
        return TraitCondition(Comparison(field, op, value))

    assert evaluate(tc("plan", "eq", "pro"), h, T0, p)
    assert evaluate(tc("address.city", "in", ["Oslo"]), h, T0, p)
    assert evaluate(tc("age", "exists", False), h, T0, p)
    assert not evaluate(tc("age", "not_in", [1]), h, T0, p)
    assert evaluate(tc("spend_30d", "eq", 60), h, T0, p)
    assert evaluate(tc("spend_30d", "gte", 100), h, T0 + D, p)
    high = tc("spend_30d", "gte", 100)
    assert next_change(high, h, T0 + D, p) == T0 + 30 * D
    assert next_change(tc("spend_30d", "exists", True), h, T0 + D, p) == T0 + 31 * D
    assert evaluate(tc("spend_30d", "exists", False), h, T0 + 31 * D, p)
    assert evaluate(tc("spend_30d", "exists", False), hist(), T0, p)


def test_has_identifier_segment_refs_and_nesting() -> None:
    """HasIdentifier, SegmentRef chains, All/AnyOf/Not nesting and next_change through refs."""
    h = hist(ev("add_to_cart", T0), email=["a@x.io"], phone=[])
    p = proj({"cart": CART, "reachable": All((SegmentRef("cart"), HasIdentifier("email")))})
    assert evaluate(HasIdentifier("email"), h, T0, p)
    assert not evaluate(HasIdentifier("phone"), h, T0, p)
    assert not evaluate(HasIdentifier("user_id"), h, T0, p)
    assert evaluate(SegmentRef("reachable"), h, T0, p)
    assert next_change(SegmentRef("reachable"), h, T0, p) == T0 + 6 * H
    either = AnyOf((Not(SegmentRef("cart")), HasIdentifier("phone")))
    assert not evaluate(either, h, T0, p)
    assert next_change(either, h, T0, p) == T0 + 6 * H
    assert evaluate(All(()), h, T0, p)
    assert not evaluate(AnyOf(()), h, T0, p)
    assert next_change(HasIdentifier("email"), h, T0, p) is None


# --- property: next_change is exact --------------------------------------------------------

NAMES = ("a", "b", "c")
MAX_TS, MAX_D = 60, 25
prop_values = st.one_of(st.integers(-3, 3), st.sampled_from(["x", "y", "xy"]), st.booleans())


@st.composite
def windows(draw: st.DrawFn) -> Window:
    """Any window form with small durations."""
    kind = draw(st.sampled_from(["ever", "within", "between", "before", "since", "after"]))
    if kind == "after":
        where = tuple(draw(st.lists(comparisons, max_size=1)))
        within = draw(st.one_of(st.none(), st.integers(1, MAX_D).map(dur)))
        return After(draw(st.sampled_from(NAMES)), where, within)
    if kind == "within":
        return Within(dur(draw(st.integers(1, MAX_D))))
    if kind == "between":
        newer = draw(st.integers(0, MAX_D - 1))
        return Between(dur(draw(st.integers(newer + 1, MAX_D))), dur(newer))
    if kind == "before":
        return Before(dur(draw(st.integers(0, MAX_D))))
    return Since(draw(st.sampled_from(NAMES))) if kind == "since" else Ever()


comparisons = st.builds(
    Comparison,
    st.sampled_from(["p", "q.r"]),
    st.sampled_from(["eq", "ne", "gt", "lte", "contains", "exists", "in", "not_in"]),
    st.one_of(prop_values, st.lists(prop_values, max_size=2)),
)
event_conditions = st.builds(
    EventCondition,
    st.sampled_from(NAMES),
    st.lists(comparisons, max_size=1).map(tuple),
    windows(),
    st.sampled_from(["gte", "eq", "lt"]),
    st.integers(0, 3),
)
computed = st.builds(
    ComputedTrait,
    st.just("ct"),
    st.sampled_from(NAMES),
    st.sampled_from(["count", "sum", "max", "last", "distinct_count", "most_frequent"]),
    st.just("p"),
    st.lists(comparisons, max_size=1).map(tuple),
    windows(),
)
trait_conditions = st.builds(
    TraitCondition,
    st.builds(
        Comparison,
        st.sampled_from(["ct", "plan"]),
        st.sampled_from(["eq", "gt", "lt", "exists", "ne"]),
        st.one_of(prop_values, st.integers(0, 4)),
    ),
)
leaves = st.one_of(event_conditions, trait_conditions, st.builds(HasIdentifier, st.just("email")))
conditions = st.recursive(
    st.one_of(leaves, st.sampled_from([SegmentRef("s1"), SegmentRef("s2")])),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda cs: All(tuple(cs))),
        st.lists(inner, max_size=3).map(lambda cs: AnyOf(tuple(cs))),
        inner.map(Not),
    ),
    max_leaves=5,
)
events = st.builds(
    EventRecord,
    st.text("0123456789", min_size=1, max_size=3),
    st.sampled_from(NAMES),
    st.integers(0, MAX_TS),
    st.fixed_dictionaries(
        {}, optional={"p": prop_values, "q": st.fixed_dictionaries({"r": prop_values})}
    ),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Condition, ProfileHistory, int, SegmentProject]:
    """A condition, a history, an instant and a project with two segments and a computed trait."""
    s1 = draw(
        st.recursive(leaves, lambda i: st.lists(i, max_size=2).map(lambda c: AnyOf(tuple(c))))
    )
    s2 = draw(st.one_of(leaves, st.just(Not(SegmentRef("s1")))))
    project = proj({"s1": s1, "s2": s2}, (draw(computed),))
    evs = draw(st.lists(events, max_size=8))
    traits = draw(st.fixed_dictionaries({}, optional={"plan": prop_values, "ct": prop_values}))
    h = hist(*evs, traits=traits, email=draw(st.sampled_from([[], ["e@x.io"]])))
    return draw(conditions), h, draw(st.integers(-5, MAX_TS + 10)), project


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_next_change_is_exact(
    scenario: tuple[Condition, ProfileHistory, int, SegmentProject],
) -> None:
    """The result is constant on (at, next_change) and flips at next_change; None → never flips."""
    cond, h, at, project = scenario
    frozen = hist(
        *(e for e in h.events if e.timestamp_us <= at),
        traits=dict(h.traits),
        email=list(h.identifiers["email"]),
    )
    base = evaluate(cond, frozen, at, project)
    assert evaluate(cond, h, at, project) == base
    nc = next_change(cond, h, at, project)
    horizon = MAX_TS + 2 * MAX_D + 3
    first_flip = next(
        (t for t in range(at + 1, horizon) if evaluate(cond, frozen, t, project) != base), None
    )
    assert nc == first_flip
    if nc is not None:
        assert evaluate(cond, frozen, nc - 1, project) == base
        assert nc > at
    else:
        for t in (horizon, horizon + 10**6, 10**15):
            assert evaluate(cond, frozen, t, project) == base
