"""Which stored messages can change a real-time audience, so an unrelated page view costs nothing.

The index walks the segments every `refresh: realtime` audience depends on (its segment, the
segments it excludes, and every segment they reference) and collects the event names and trait
names they read, computed traits included, and the anchor event of every `after:`/`since:`
window (a new anchor moves the window). Cadence audiences with `exits: realtime` are indexed
apart: their events only make current members be checked (a member leaves at once when its
rule turns false; nobody enters between refreshes).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

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
from cohortsync.store.records import Message, RealtimeInterest

REALTIME = "realtime"


@dataclass(frozen=True)
class RealtimeIndex:
    """The real-time audiences, the segments they need, and what those read."""

    audiences: tuple[str, ...]
    segments: tuple[str, ...]
    events: frozenset[str]
    traits: frozenset[str]
    exit_audiences: tuple[str, ...] = ()
    """Cadence audiences with `exits: realtime`: their members are checked per event."""
    exit_segments: tuple[str, ...] = ()
    """Every segment the rules of `exit_audiences` read (evaluated, never recorded here)."""
    exit_events: frozenset[str] = frozenset()
    """Event names those segments read, beyond `events`."""

    @property
    def active(self) -> bool:
        """Whether any audience changes between refreshes (real-time ones or real-time exits)."""
        return bool(self.audiences or self.exit_audiences)

    @property
    def reads(self) -> frozenset[str]:
        """Every event name a history must hold to evaluate both kinds of audience."""
        return self.events | self.exit_events

    @property
    def exit_scope(self) -> list[tuple[str, str]]:
        """The (kind, name) pairs whose members only ever leave in real time."""
        return [("audience", a) for a in self.exit_audiences]

    @property
    def scope(self) -> list[tuple[str, str]]:
        """Every (kind, name) the real-time path keeps: its audiences and their segments."""
        return [("segment", s) for s in self.segments] + [("audience", a) for a in self.audiences]

    @cached_property
    def interest(self) -> RealtimeInterest:
        """Which stored messages may change a real-time audience, as data a store checks.

        Identify and alias calls always may (they can merge profiles); a track only when a
        segment reads its event; nothing when no audience is real-time.
        """
        return RealtimeInterest(self.events, profile_changes=bool(self.audiences))

    @cached_property
    def exit_interest(self) -> RealtimeInterest:
        """Which stored messages may end a membership of an `exits: realtime` audience: tracks
        its rule reads, and identify and alias calls (traits, merges)."""
        return RealtimeInterest(self.exit_events, profile_changes=bool(self.exit_audiences))

    def relevant(self, message: Message) -> bool:
        """Whether storing `message` may change a real-time audience of its profile, or end
        its membership of an `exits: realtime` audience."""
        return self.interest.covers(message) or self.exit_interest.covers(message)

    def evaluates(self, message: Message) -> bool:
        """Whether `message` makes its profiles be evaluated in full (real-time audiences);
        otherwise a relevant message only has its profiles' current members checked."""
        return self.interest.covers(message)


def build_index(project: SegmentProject) -> RealtimeIndex:
    """Index the project's `refresh: realtime` audiences."""
    audiences = tuple(sorted(a.name for a in project.audiences.values() if a.refresh == REALTIME))
    segments: set[str] = set()
    for name in audiences:
        audience = project.audiences[name]
        for segment in (audience.segment, *audience.exclude):
            _segments(project, segment, segments)
    events: set[str] = set()
    traits: set[str] = set()
    for segment in segments:
        _reads(project, project.segments[segment].condition, events, traits)
    exits = tuple(
        sorted(
            a.name
            for a in project.audiences.values()
            if a.exits == REALTIME and a.refresh != REALTIME
        )
    )
    exit_segments: set[str] = set()
    for name in exits:
        audience = project.audiences[name]
        for segment in (audience.segment, *audience.exclude):
            _segments(project, segment, exit_segments)
    exit_events: set[str] = set()
    for segment in exit_segments:
        _reads(project, project.segments[segment].condition, exit_events, set())
    return RealtimeIndex(
        audiences,
        tuple(sorted(segments)),
        frozenset(events),
        frozenset(traits),
        exits,
        tuple(sorted(exit_segments)),
        frozenset(exit_events - events),
    )


def _segments(project: SegmentProject, name: str, found: set[str]) -> None:
    if name in found:
        return
    found.add(name)
    for ref in _refs(project.segments[name].condition):
        _segments(project, ref, found)


def _refs(condition: Condition) -> Iterable[str]:
    if isinstance(condition, SegmentRef):
        yield condition.name
    elif isinstance(condition, All | AnyOf):
        for c in condition.conditions:
            yield from _refs(c)
    elif isinstance(condition, Not):
        yield from _refs(condition.condition)


def _reads(
    project: SegmentProject, condition: Condition, events: set[str], traits: set[str]
) -> None:
    if isinstance(condition, EventCondition):
        events.add(condition.event)
        if isinstance(condition.window, After):  # a new anchor moves the window
            events.add(condition.window.event)
    elif isinstance(condition, TraitCondition):
        name = condition.comparison.field
        computed = project.traits.get(name)
        if computed is not None:
            events.add(computed.event)
            if isinstance(computed.window, After):
                events.add(computed.window.event)
        else:
            traits.add(name)
    elif isinstance(condition, HasIdentifier | SegmentRef):
        return
    elif isinstance(condition, All | AnyOf):
        for c in condition.conditions:
            _reads(project, c, events, traits)
    elif isinstance(condition, Not):
        _reads(project, condition.condition, events, traits)
