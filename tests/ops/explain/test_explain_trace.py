"""The trace agrees with the evaluator: every node's truth is what `evaluate` says of that node's
condition, over the generated projects and histories the agreement test draws; and whenever
`next_change` finds a flip, the trace names a leaf that flips then."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings

from cohortsync.segments.ast import (
    After,
    All,
    AnyOf,
    Audience,
    Comparison,
    Condition,
    EventCondition,
    Not,
    Segment,
    SegmentProject,
    SegmentRef,
)
from cohortsync.segments.evaluate import (
    EventRecord,
    ProfileHistory,
    compare,
    evaluate,
    lookup,
    next_change,
)
from cohortsync.segments.trace import TraceNode, changes, matching, trace
from tests.segments.test_agreement import ANCHOR_US, scenarios

CHECKS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def history_of(person: dict[str, Any], index: int) -> ProfileHistory:
    """The drawn person as the evaluator reads it (what `histories` reads back from a store)."""
    events = tuple(
        EventRecord(f"m{index}-{n:03d}", event, ANCHOR_US - off, props)
        for n, (event, off, props) in enumerate(person["events"])
    )
    ids: dict[str, tuple[str, ...]] = {"user_id": (person["user"],)}
    if person["email"]:
        ids["email"] = (f"{person['user']}@example.com",)
    traits = {k: v for k, v in person["traits"].items() if v is not None}
    return ProfileHistory(f"p{index}", events, traits, ids)


def check_nodes(
    node: TraceNode, c: Condition, h: ProfileHistory, at: int, project: SegmentProject
) -> None:
    """Each node's truth is the evaluator's for its own condition; events listed all count."""
    assert node.truth == evaluate(c, h, at, project), c
    if isinstance(c, All | AnyOf):
        assert len(node.children) == len(c.conditions)
        for kid, sub in zip(node.children, c.conditions, strict=True):
            check_nodes(kid, sub, h, at, project)
    elif isinstance(c, Not):
        check_nodes(node.children[0], c.condition, h, at, project)
    elif isinstance(c, SegmentRef) and not node.repeated:
        check_nodes(node.children[0], project.segments[c.name].condition, h, at, project)
    elif isinstance(c, EventCondition):
        found = matching(c, h, at) or []
        assert node.count in (len(found), None)
        assert {e.message_id for e in node.events} <= {e.message_id for e in found}
        assert all(e.timestamp_us <= at for e in node.events)
        if isinstance(c.window, After):  # the reference is the latest anchor passing its where
            anchors = [
                e.timestamp_us
                for e in h.events
                if e.event == c.window.event
                and e.timestamp_us <= at
                and all(
                    compare(lookup(e.properties, w.field), w.op, w.value) for w in c.window.where
                )
            ]
            shown = None if node.reference is None else node.reference.timestamp_us
            assert shown == max(anchors, default=None), c


def with_audiences(project: SegmentProject) -> SegmentProject:
    """The drawn project with audiences over its segments, one with an exclusion."""
    audiences = {
        "a_plain": Audience("a_plain", "s0"),
        "a_excluding": Audience("a_excluding", "s2", exclude=("s0", "s1"), holdout_percent=50),
    }
    return SegmentProject(project.traits, project.segments, audiences)


@CHECKS
@given(scenarios())
def test_every_node_of_the_trace_has_the_evaluators_truth(
    scenario: tuple[list[dict[str, Any]], SegmentProject, int],
) -> None:
    people, drawn, at = scenario
    project = with_audiences(drawn)
    for index, person in enumerate(people):
        h = history_of(person, index)
        for segment in project.segments.values():
            root = trace(segment.condition, h, at, project)
            check_nodes(root, segment.condition, h, at, project)
        for audience in project.audiences.values():
            root = trace(audience.condition, h, at, project)
            assert root.truth == evaluate(audience.condition, h, at, project)
            check_nodes(root, audience.condition, h, at, project)


@CHECKS
@given(scenarios())
def test_a_next_change_always_names_a_leaf_that_flips_then(
    scenario: tuple[list[dict[str, Any]], SegmentProject, int],
) -> None:
    people, project, at = scenario
    for index, person in enumerate(people):
        whole = history_of(person, index)  # explain reads only the events up to `at`
        h = ProfileHistory(
            whole.profile_id,
            tuple(e for e in whole.events if e.timestamp_us <= at),
            whole.traits,
            whole.identifiers,
        )
        for segment in project.segments.values():
            flip = next_change(segment.condition, h, at, project)
            if flip is None:
                continue
            found = changes(segment.condition, h, at, flip, project)
            assert found, segment.condition
            for leaf in found:
                assert all(e.timestamp_us <= at for e in (*leaf.leaving, *leaf.entering))


def test_a_segment_referenced_twice_is_traced_once() -> None:
    cart = EventCondition("added_to_cart")
    project = SegmentProject({}, {"s0": Segment("s0", cart)}, {})
    condition = All((SegmentRef("s0"), Not(SegmentRef("s0"))))
    h = ProfileHistory("p", (EventRecord("m1", "added_to_cart", 10),))
    root = trace(condition, h, 20, project)
    first, second = root.children[0], root.children[1].children[0]
    assert (first.repeated, first.truth, len(first.children)) == (False, True, 1)
    assert (second.repeated, second.truth, second.children) == (True, True, ())
    assert root.truth is False


def test_an_after_leaf_shows_the_latest_anchor_passing_its_filter() -> None:
    """A later delivery of another campaign is not the anchor: the order after message 1 counts."""
    message_1 = (Comparison("campaign_id", "eq", "m1"),)
    ordered = EventCondition("order_completed", window=After("email_delivered", message_1))
    h = ProfileHistory(
        "p",
        (
            EventRecord("d1", "email_delivered", 10, {"campaign_id": "m1"}),
            EventRecord("o1", "order_completed", 20),
            EventRecord("d2", "email_delivered", 30, {"campaign_id": "news"}),
        ),
    )
    leaf = trace(ordered, h, 40, SegmentProject({}, {}, {}))
    assert (leaf.truth, leaf.since, leaf.count) == (True, "email_delivered", 1)
    assert leaf.reference is not None and leaf.reference.message_id == "d1"
    assert [e.message_id for e in leaf.events] == ["o1"]
