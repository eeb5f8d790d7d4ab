"""Why a profile is in or out of a condition: every node's truth as of an instant, with the
events, trait values and segments that decided it (`cohortsync explain`).

Leaves are decided by the evaluator itself (`evaluate` on the leaf, its matching events and
trait values from the same functions), so any window form the evaluator knows shows here, and
the root's truth is the evaluator's answer for the whole condition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cohortsync.segments.ast import (
    After,
    All,
    AnyOf,
    Condition,
    EventCondition,
    HasIdentifier,
    Not,
    SegmentProject,
    SegmentRef,
    TraitCondition,
)
from cohortsync.segments.evaluate import (
    MISSING,
    EventRecord,
    ProfileHistory,
    _anchor,
    _matching,
    _trait_value,
    evaluate,
)
from cohortsync.segments.explain import _clause, _full

SHOWN_EVENTS = 20
"""The latest matching events a leaf lists (its `count` is always the full number)."""


@dataclass(frozen=True)
class Deciding:
    """One event that counted for a leaf."""

    message_id: str
    event: str
    timestamp_us: int


@dataclass(frozen=True)
class TraceNode:
    """One node of a condition as of an instant: its truth and what decided it.

    `kind` is all, any, not, event, trait, has or segment. Event leaves carry their matching
    events (the latest `SHOWN_EVENTS`, oldest first), how many matched and the comparison the
    count must pass; an `after:`/`since:` window its anchor's event key and the anchor (the latest
    such event passing the anchor's `where`; None when there is none: the leaf is then false
    whatever the count). Trait leaves carry the value (None when missing), `has:` leaves how
    many identifiers of the kind the profile holds. A segment traced earlier in the same tree is
    `repeated`: its truth only.
    """

    kind: str
    text: str
    truth: bool
    children: tuple[TraceNode, ...] = ()
    name: str | None = None
    events: tuple[Deciding, ...] = ()
    count: int | None = None
    compared: str | None = None
    reference: Deciding | None = None
    since: str | None = None
    value: Any = None
    computed: bool = False
    repeated: bool = False


@dataclass(frozen=True)
class LeafChange:
    """A leaf whose truth flips between two instants, and the events crossing its window."""

    text: str
    becomes: bool
    leaving: tuple[Deciding, ...] = ()
    entering: tuple[Deciding, ...] = ()


Mask = Callable[[Any], Any]


def _same(value: Any) -> Any:
    return value


def _deciding(e: EventRecord) -> Deciding:
    return Deciding(e.message_id, e.event, e.timestamp_us)


def _text(c: Condition) -> str:
    """The node in plain English, as `preview` words rules."""
    if isinstance(c, All):
        return "all of these hold"
    if isinstance(c, AnyOf):
        return "at least one of these holds"
    return _full(_clause(c, False))


class _Tracer:
    """Traces one condition tree for one history and instant, each segment once."""

    def __init__(
        self, history: ProfileHistory, at: int, project: SegmentProject, mask: Mask
    ) -> None:
        self.h, self.at, self.project, self.mask = history, at, project, mask
        self.done: dict[str, bool] = {}
        self.active: set[str] = set()

    def node(self, c: Condition) -> TraceNode:
        if isinstance(c, All | AnyOf):
            kids = tuple(self.node(x) for x in c.conditions)
            truths = [k.truth for k in kids]
            truth = all(truths) if isinstance(c, All) else any(truths)
            return TraceNode("all" if isinstance(c, All) else "any", _text(c), truth, kids)
        if isinstance(c, Not):
            kid = self.node(c.condition)
            return TraceNode("not", _text(c), not kid.truth, (kid,))
        if isinstance(c, SegmentRef):
            return self.segment(c)
        if isinstance(c, EventCondition):
            return self.event(c)
        if isinstance(c, TraitCondition):
            return self.trait(c)
        if isinstance(c, HasIdentifier):
            held = len(self.h.identifiers.get(c.kind, ()))
            return TraceNode("has", _text(c), held > 0, name=c.kind, value=held)
        # A condition form this module does not know: the evaluator still decides it.
        return TraceNode(type(c).__name__.lower(), _text(c), self.truth(c))

    def truth(self, c: Condition) -> bool:
        return evaluate(c, self.h, self.at, self.project)

    def segment(self, c: SegmentRef) -> TraceNode:
        segment = self.project.segments[c.name]
        text = f"in segment {c.name}" + (f": {segment.description}" if segment.description else "")
        if c.name in self.done:
            return TraceNode("segment", text, self.done[c.name], name=c.name, repeated=True)
        if c.name in self.active:
            raise ValueError(f"segment {c.name!r} refers to itself")
        self.active.add(c.name)
        kid = self.node(segment.condition)
        self.active.discard(c.name)
        self.done[c.name] = kid.truth
        return TraceNode("segment", text, kid.truth, (kid,), name=c.name)

    def event(self, c: EventCondition) -> TraceNode:
        truth = self.truth(c)
        found = matching(c, self.h, self.at)
        reference, since = None, None
        if isinstance(c.window, After):
            since = c.window.event
            anchor = _anchor(c.window, self.h, self.at)  # the latest passing the anchor's where
            reference = None if anchor is None else _deciding(anchor)
            if reference is None:  # never happened: false whatever the count, and none count
                found = []
        shown = tuple(_deciding(e) for e in (found or [])[-SHOWN_EVENTS:])
        return TraceNode(
            "event",
            _text(c),
            truth,
            name=c.event,
            events=shown,
            count=None if found is None else len(found),
            compared=f"{c.count_op} {c.count}",
            reference=reference,
            since=since,
        )

    def trait(self, c: TraitCondition) -> TraceNode:
        name = c.comparison.field
        value = _trait_value(name, self.h, self.at, self.at, self.project)
        computed = name in self.project.traits or name.partition(".")[0] in self.project.traits
        return TraceNode(
            "trait",
            _text(c),
            self.truth(c),
            name=name,
            value=None if value is MISSING else self.mask(value),
            computed=computed,
        )


def matching(c: EventCondition, history: ProfileHistory, at: int) -> list[EventRecord] | None:
    """The events that count for an event leaf as of `at` (None: its `since:` event never
    happened, or the window is one only the evaluator's count knows)."""
    try:
        return _matching(c.event, c.where, c.window, history, at, at)
    except TypeError:
        return None


def trace(
    condition: Condition,
    history: ProfileHistory,
    at: int,
    project: SegmentProject,
    mask: Mask = _same,
) -> TraceNode:
    """The condition's tree as of `at`: each node's truth and what decided it. Trait values
    pass through `mask` (to hide identifiers a trait may hold)."""
    return _Tracer(history, at, project, mask).node(condition)


def changes(
    condition: Condition, history: ProfileHistory, at: int, then: int, project: SegmentProject
) -> list[LeafChange]:
    """The leaves whose truth differs between `at` and `then` (with no event added), each
    segment visited once, with the events that enter or leave their windows meanwhile."""
    found: list[LeafChange] = []
    _changes(condition, history, at, then, project, found, set())
    return found


def _changes(
    c: Condition,
    h: ProfileHistory,
    at: int,
    then: int,
    project: SegmentProject,
    found: list[LeafChange],
    seen: set[str],
) -> None:
    if isinstance(c, All | AnyOf):
        for x in c.conditions:
            _changes(x, h, at, then, project, found, seen)
    elif isinstance(c, Not):
        _changes(c.condition, h, at, then, project, found, seen)
    elif isinstance(c, SegmentRef):
        if c.name not in seen:
            seen.add(c.name)
            _changes(project.segments[c.name].condition, h, at, then, project, found, seen)
    else:
        before, after = evaluate(c, h, at, project), evaluate(c, h, then, project)
        if before == after:
            return
        leaving: tuple[Deciding, ...] = ()
        entering: tuple[Deciding, ...] = ()
        source: EventCondition | None = c if isinstance(c, EventCondition) else None
        if isinstance(c, TraitCondition):  # a computed trait moves as its events cross a window
            name = c.comparison.field
            trait = project.traits.get(name) or project.traits.get(name.partition(".")[0])
            if trait is not None:
                source = EventCondition(trait.event, trait.where, trait.window)
        if source is not None:
            old = {e.message_id: e for e in matching(source, h, at) or []}
            new = {e.message_id: e for e in matching(source, h, then) or []}
            leaving = tuple(_deciding(e) for m, e in old.items() if m not in new)
            entering = tuple(_deciding(e) for m, e in new.items() if m not in old)
        found.append(LeafChange(_text(c), after, leaving, entering))
