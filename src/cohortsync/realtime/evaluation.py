"""Evaluate a few profiles at one instant and record what changed, as one transaction.

For each profile: its history (events the real-time segments read, identify traits,
identifiers) is read once, every real-time segment is evaluated in Python, audiences follow
(`audiences.rule`, the one audience rule batch uses too), and each segment's
`next_change` becomes a timer. Entries, exits, the outbox rows they need and the timers are
written together, so a crash never leaves one without the others.

Cadence audiences with `exits: realtime` ride along: profiles an event only they read is about
are first looked up (one read per round) and evaluated only if they are current members; every
evaluated profile has those audiences' rules checked, and a member whose rule no longer holds
leaves in the same transaction. Nobody enters them here: entries wait for the refresh.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cohortsync.audiences.rule import audience_members
from cohortsync.realtime.index import RealtimeIndex
from cohortsync.segments.ast import SegmentProject
from cohortsync.segments.evaluate import EventRecord, ProfileHistory, evaluate, next_change
from cohortsync.store.base import MembershipChanges, Store
from cohortsync.store.outbox import Route
from cohortsync.store.realtime import HistoryRows, ProfileOutcome
from cohortsync.sync.realtime_state import realtime_for

LATER_EVENT = "*later-event*"
"""The timer of a profile whose stored history holds events dated after the evaluation."""


@dataclass(frozen=True)
class Processed:
    """What one round of evaluation did."""

    profiles: int
    changes: MembershipChanges

    @property
    def entered(self) -> int:
        """Entries recorded, over every name."""
        return sum(self.changes.entered.values())

    @property
    def exited(self) -> int:
        """Exits recorded, over every name."""
        return sum(self.changes.exited.values())


class ProfileProcessor:
    """Re-evaluates profiles for every real-time audience and records the outcome."""

    def __init__(
        self,
        store: Store,
        project: SegmentProject,
        index: RealtimeIndex,
        routes: Sequence[Route],
    ) -> None:
        self.store = store
        self.project = project
        self.index = index
        kept = {*index.audiences, *index.exit_audiences}
        self.routes = [r for r in routes if r.audience in kept]
        self.realtime = realtime_for(store)

    def process(
        self,
        profile_ids: Iterable[str],
        at_us: int,
        cursor_us: int | None = None,
        exits_only: Iterable[str] = (),
    ) -> Processed:
        """Evaluate the (canonical) profiles of `profile_ids` as of `at_us`, and those of
        `exits_only` that are current members of an `exits: realtime` audience; record
        changes (and move the evaluation cursor to `cursor_us` in the same transaction)."""
        realtime, index = self.realtime, self.index
        wanted, checked = list(profile_ids), list(exits_only)
        found = realtime.canonical([*wanted, *checked]) if wanted or checked else {}
        full = {found[p] for p in wanted if p in found}
        members = {found[p] for p in checked if p in found} - full
        if members and index.exit_audiences:  # a non-member costs this one lookup, no more
            members = realtime.holding(sorted(members), index.exit_audiences)
        else:
            members = set()
        canonical = sorted(full | members)
        if not canonical or not index.active:
            if cursor_us is not None:
                realtime.set_cursor(cursor_us)
            return Processed(0, MembershipChanges(0, {}, {}))
        rows = realtime.histories(canonical, index.reads)
        outcomes = [self.outcome(r, at_us) for r in rows]
        changes = realtime.record_profiles(
            outcomes,
            index.scope + index.exit_scope,
            at_us,
            self.routes,
            cursor_us,
            exits_only=index.exit_audiences,
        )
        return Processed(len(outcomes), changes)

    def outcome(self, rows: HistoryRows, at_us: int) -> ProfileOutcome:
        """One profile's memberships as of `at_us` and its segments' next changes."""
        history = ProfileHistory(
            rows.profile_id,
            tuple(EventRecord(m, key, ts, props) for m, key, ts, props in rows.events),
            rows.traits,
            {kind: tuple(values) for kind, values in rows.identifiers.items()},
        )
        project = self.project
        inside: dict[str, bool] = {}
        timers: dict[str, int] = {}
        for name in self.index.segments:
            condition = project.segments[name].condition
            inside[name] = evaluate(condition, history, at_us, project)
            flip = next_change(condition, history, at_us, project)
            if flip is not None:
                timers[name] = flip
        # An event already stored but dated after `at` (a client clock ahead, or stored while
        # this round read the clock) counts from its own timestamp: evaluate again then.
        later = [ts for _, _, ts, _ in rows.events if ts > at_us]
        if later:
            timers[LATER_EVENT] = min(later)
        members: dict[tuple[str, str], bool] = {
            ("segment", name): False for name, yes in inside.items() if yes
        }
        mine = {name: (rows.profile_id,) for name, yes in inside.items() if yes}
        for name in self.index.audiences:
            for _, held in audience_members(project.audiences[name], mine):
                members[("audience", name)] = held
        return ProfileOutcome(
            rows.profile_id, members, timers, rows.version, self.holding(history, at_us, inside)
        )

    def holding(
        self, history: ProfileHistory, at_us: int, known: dict[str, bool]
    ) -> frozenset[str]:
        """The `exits: realtime` audiences whose rule holds for the profile at `at_us`
        (`known`: segments already evaluated; the rest are evaluated once each here)."""
        if not self.index.exit_audiences:
            return frozenset()
        project = self.project
        inside = dict(known)
        for name in self.index.exit_segments:
            if name not in inside:
                inside[name] = evaluate(project.segments[name].condition, history, at_us, project)
        mine = {name: (history.profile_id,) for name, yes in inside.items() if yes}
        return frozenset(
            name
            for name in self.index.exit_audiences
            if audience_members(project.audiences[name], mine)
        )
