"""What every lint rule reads: the audiences, where each goes, and the measured memberships."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

from cohortsync.config.models import LintConfig
from cohortsync.segments.ast import Audience, SegmentProject
from cohortsync.segments.names import IDENTIFIER_KINDS, event_key
from cohortsync.store.base import Store
from cohortsync.sync.configure import SyncSetup

IDENTIFIED = ("user_id", "email", "phone")
"""The kinds that name a person; a profile with none of them is anonymous-only."""


@dataclass(frozen=True)
class Place:
    """A destination as lint sees it: ad platform or not, what it matches on (in order of
    preference), the smallest audience its platform serves, and its type."""

    name: str
    ad_platform: bool
    identifiers: tuple[str, ...]
    minimum: int | None
    kind: str


class Measures:
    """Current memberships (from the last compute) and members' identifiers, read once."""

    def __init__(self, store: Store, project: SegmentProject, kinds: Sequence[str]) -> None:
        self._store = store
        self.members: dict[str, set[str]] = {}
        self.holdout: dict[str, set[str]] = {}
        for name in project.audiences:
            rows = store.membership("audience", name, None)
            self.members[name] = {p for p, _ in rows}
            self.holdout[name] = {p for p, flagged in rows if flagged}
        everyone = set().union(*self.members.values()) if self.members else set()
        self.ids = store.identifiers(sorted(everyone), list(kinds))
        self._segments: dict[str, set[str]] = {}

    def sent(self, audience: str) -> set[str]:
        """Members an ad platform receives: the holdout left out."""
        return self.members[audience] - self.holdout[audience]

    def segment(self, name: str) -> set[str]:
        """Current members of a segment."""
        if name not in self._segments:
            self._segments[name] = {p for p, _ in self._store.membership("segment", name, None)}
        return self._segments[name]

    def holding(self, profiles: Iterable[str], kinds: Iterable[str]) -> set[str]:
        """The profiles holding at least one identifier of `kinds`."""
        wanted = tuple(kinds)
        return {p for p in profiles if any(k in self.ids.get(p, {}) for k in wanted)}

    def coverage(self, profiles: set[str], kind: str) -> float:
        """Share of `profiles` holding an identifier of `kind` (0 for none)."""
        return len(self.holding(profiles, (kind,))) / len(profiles) if profiles else 0.0


@dataclass
class LintContext:
    """The project as lint reads it; `measures` is None before the first compute."""

    project: SegmentProject
    config: LintConfig
    primary: str
    purchases: tuple[str, ...]
    places: Mapping[str, Place]
    accepts: Mapping[tuple[str, str], tuple[str, ...]]
    measures: Measures | None

    @cached_property
    def audiences(self) -> list[Audience]:
        """The audiences lint judges: every one not retired, by name."""
        return sorted(
            (a for a in self.project.audiences.values() if not a.retired), key=lambda a: a.name
        )

    def ads(self, audience: Audience) -> list[str]:
        """The ad-platform destinations the audience goes to."""
        return [d for d in audience.destinations if self.places[d].ad_platform]

    def owned(self, audience: Audience) -> list[str]:
        """The destinations that take the holdout flagged (warehouse, analytics, own systems)."""
        return [d for d in audience.destinations if not self.places[d].ad_platform]

    def allowed(self, audience: Audience) -> tuple[str, ...]:
        """The identifier kinds the audience may send ad platforms (all that name a person
        when it lists none)."""
        return audience.identifiers or IDENTIFIED

    @property
    def intent(self) -> tuple[str, ...]:
        """The intent events, as event keys."""
        return tuple(event_key(e) for e in self.config.intent_events)


def places_of(setup: SyncSetup) -> dict[str, Place]:
    """Every destination of the project as a `Place`."""
    return {
        name: Place(
            name,
            cls.capabilities.ad_platform,
            tuple(cls.capabilities.identifiers),
            setup.configs[name].usable_minimum(),
            cls.kind,
        )
        for name, cls in setup.classes.items()
    }


def purchase_events(conversion_events: Sequence[str]) -> tuple[str, ...]:
    """The purchase events: those of `conversions:`, else `order_completed`."""
    return tuple(event_key(e) for e in conversion_events) or ("order_completed",)


def measured_kinds(project: SegmentProject, primary: str, secondary: Sequence[str]) -> list[str]:
    """Every identifier kind lint measures coverage of."""
    listed = [k for a in project.audiences.values() for k in a.identifiers]
    return sorted({*IDENTIFIER_KINDS, primary, *secondary, *listed})
