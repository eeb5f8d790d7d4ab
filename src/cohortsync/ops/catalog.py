"""`cohortsync catalog`: the document paid and analytics teams read, one entry per audience.

Each entry says what the audience is for (locked name, owner, description), who is in it (the
entry and exit rules in plain English, exclusions written out), how fast it moves (refresh,
real-time exits), what leaves the building (identifiers, holdout handling, offer,
destinations), and the true figures the store holds (size, holdout size, last compute, last
scheduled refresh), with the version history of `cohortsync.lock`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cohortsync.moments import to_datetime
from cohortsync.ops.lock import standings
from cohortsync.ops.lock_file import Accepted, read_lock
from cohortsync.segments.ast import Audience, SegmentProject
from cohortsync.segments.explain import audience_rules, refresh_words
from cohortsync.store.base import Store
from cohortsync.store.outbox import Route
from cohortsync.sync.realtime_state import realtime_for


@dataclass(frozen=True)
class CatalogEntry:
    """One audience as the catalog presents it."""

    name: str
    owner: str | None
    description: str | None
    segment: str
    entry_rule: str
    exit_rule: str
    refresh: str
    refresh_words: str
    realtime_exits: bool
    exclusions: list[str]
    holdout_percent: float | None
    holdout_sent_to: list[str]
    """Destinations that receive holdout members, flagged (the warehouse, your own systems)."""
    holdout_withheld_from: list[str]
    """Destinations that never receive holdout members (ad platforms)."""
    identifiers: list[str]
    offer: str | None
    destinations: list[str]
    size: int
    holdout_size: int
    last_computed: datetime | None
    last_refresh: datetime | None
    version: int
    locked_version: int | None
    lock_state: str
    retired: bool
    history: list[Accepted] = field(default_factory=list)


@dataclass(frozen=True)
class Catalog:
    """Every audience of the project, in the project file's order."""

    generated_at: datetime
    lock_found: bool
    audiences: list[CatalogEntry]


def catalog(root: Path, store: Store, project: SegmentProject, routes: Sequence[Route]) -> Catalog:
    """The catalog of the project in `root`, its figures read from `store`."""
    lock = read_lock(root)
    states = {s.name: s for s in standings(lock, project)}
    last_compute = store.last_compute_as_of()
    refreshed = realtime_for(store).audience_runs()
    entries = []
    for audience in project.audiences.values():
        members = store.membership("audience", audience.name, None)
        locked = None if lock is None else lock.audiences.get(audience.name)
        state = states[audience.name]
        entry, exit_ = audience_rules(audience, project)
        mine = [r for r in routes if r.audience == audience.name]
        entries.append(
            CatalogEntry(
                audience.name,
                audience.owner,
                audience.description,
                audience.segment,
                entry,
                exit_,
                audience.refresh,
                refresh_words(audience.refresh),
                _realtime_exits(audience),
                list(audience.exclude),
                audience.holdout_percent,
                sorted(r.destination for r in mine if r.include_holdout),
                sorted(r.destination for r in mine if not r.include_holdout),
                list(audience.identifiers),
                audience.offer,
                list(audience.destinations),
                len(members),
                sum(1 for _, h in members if h),
                None if last_compute is None else to_datetime(last_compute),
                _when(refreshed.get(audience.name)),
                audience.version,
                state.locked_version,
                state.state.value,
                audience.retired,
                [] if locked is None else list(locked.history),
            )
        )
    return Catalog(datetime.now(UTC), lock is not None, entries)


def _realtime_exits(audience: Audience) -> bool:
    return audience.refresh == "realtime" or audience.exits == "realtime"


def _when(micros: int | None) -> datetime | None:
    return None if micros is None else to_datetime(micros)
