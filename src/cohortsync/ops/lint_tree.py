"""What lint reads from the segment tree: purchase suppression, intent, suppression lists.

- A segment *suppresses purchases* when every profile with a recent purchase event (the events
  of `conversions:`, else `order_completed`) is in it: its rule holds a purchase event with no
  `where:`, counted at least once in a window reaching now (`within:` or ever), directly, as one
  branch of `any:`, as every part of `all:`, or through a referenced segment.
- A segment *requires* an event when every way into it passes that event positively.
- An audience is *intent* when its segment requires a browse, cart or checkout event
  (`lint.intent_events`) and no purchase event (win-back and replenishment audiences are
  defined by their orders).
- An audience is a *suppression list* when its segment suppresses purchases or another
  audience excludes that segment.
"""

from __future__ import annotations

from collections.abc import Collection

from cohortsync.segments.ast import (
    All,
    AnyOf,
    Audience,
    Condition,
    EventCondition,
    Ever,
    SegmentProject,
    SegmentRef,
    Within,
)
from cohortsync.segments.names import event_key

DEFAULT_PURCHASE = ("order_completed",)


def _positive(condition: EventCondition) -> bool:
    """At least one matching event is needed for the condition to hold."""
    if condition.count_op == "gte":
        return condition.count >= 1
    if condition.count_op == "gt":
        return condition.count >= 0
    return condition.count_op == "eq" and condition.count >= 1


def suppresses(project: SegmentProject, condition: Condition, purchases: Collection[str]) -> bool:
    """Whether every profile with a purchase event just now satisfies `condition`."""
    if isinstance(condition, EventCondition):
        recent = isinstance(condition.window, (Within, Ever))
        plain = (condition.count_op, min(condition.count, 1)) in (("gte", 1), ("gte", 0))
        plain = plain or (condition.count_op, condition.count) == ("gt", 0)
        return event_key(condition.event) in purchases and recent and plain and not condition.where
    if isinstance(condition, AnyOf):
        return any(suppresses(project, c, purchases) for c in condition.conditions)
    if isinstance(condition, All):
        return all(suppresses(project, c, purchases) for c in condition.conditions)
    if isinstance(condition, SegmentRef) and condition.name in project.segments:
        return suppresses(project, project.segments[condition.name].condition, purchases)
    return False


def requires(project: SegmentProject, condition: Condition, events: Collection[str]) -> bool:
    """Whether `condition` can hold only for a profile with one of `events` (positively)."""
    if isinstance(condition, EventCondition):
        return _positive(condition) and event_key(condition.event) in events
    if isinstance(condition, All):
        return any(requires(project, c, events) for c in condition.conditions)
    if isinstance(condition, AnyOf):
        return all(requires(project, c, events) for c in condition.conditions)
    if isinstance(condition, SegmentRef) and condition.name in project.segments:
        return requires(project, project.segments[condition.name].condition, events)
    return False


def segment_suppresses(project: SegmentProject, name: str, purchases: Collection[str]) -> bool:
    """Whether the segment `name` holds every recent buyer."""
    segment = project.segments.get(name)
    return segment is not None and suppresses(project, segment.condition, purchases)


def is_intent(
    project: SegmentProject, audience: Audience, intent: Collection[str], purchases: Collection[str]
) -> bool:
    """Whether the audience is built on browse/cart/checkout intent, not on past orders."""
    rule = SegmentRef(audience.segment)
    return requires(project, rule, intent) and not requires(project, rule, purchases)


def suppression_lists(project: SegmentProject, purchases: Collection[str]) -> set[str]:
    """The audiences that are suppression lists."""
    excluded = {x for a in project.audiences.values() for x in a.exclude}
    return {
        a.name
        for a in project.audiences.values()
        if a.segment in excluded or segment_suppresses(project, a.segment, purchases)
    }


def suppressing_exclusions(
    project: SegmentProject, audience: Audience, purchases: Collection[str]
) -> list[str]:
    """The audience's excluded segments that hold every recent buyer."""
    return [x for x in audience.exclude if segment_suppresses(project, x, purchases)]
