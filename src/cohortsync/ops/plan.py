"""`cohortsync plan`: before a logic change is accepted, who it would move and what each
destination would be sent.

Every audience whose logic differs from `cohortsync.lock` (and every retired one still locked)
is computed live under the project's logic, nothing recorded, and compared with the members
recorded now: who enters, who leaves, whose holdout flag flips. Per destination, the adds and
removes follow the planner's rule — the new desired members (holdout members only where the
destination takes them) against what the destination holds — so they are what `compute`
followed by `sync` would send, once what is already queued has been delivered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cohortsync.audiences.compute import compute_members
from cohortsync.moments import to_datetime
from cohortsync.ops.lock import Standing, State, standings
from cohortsync.ops.lock_file import read_lock
from cohortsync.segments.ast import SegmentProject
from cohortsync.store.base import Store
from cohortsync.store.outbox import Route
from cohortsync.sync.downstream import held

SAMPLE = 5


@dataclass(frozen=True)
class Sampled:
    """One profile of a sample, its identifiers masked (never a whole email or phone)."""

    profile_id: str
    email: str | None
    phone: str | None
    holdout: bool


@dataclass(frozen=True)
class RouteOps:
    """What one destination of the audience would be sent."""

    destination: str
    adds: int
    removes: int
    holdout_withheld: int
    """Holdout members after the change that this destination does not receive (ad platforms)."""
    dry_run: bool


@dataclass(frozen=True)
class AudiencePlan:
    """One changed audience: the lock's view and the project's, and what moving costs."""

    audience: str
    state: str
    version: int | None
    locked_version: int | None
    changed: list[str]
    members_now: int
    members_after: int
    enters: int
    leaves: int
    holdout_flips: int
    enter_sample: list[Sampled] = field(default_factory=list)
    leave_sample: list[Sampled] = field(default_factory=list)
    destinations: list[RouteOps] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    """Every audience that differs from the lock, as of one instant."""

    as_of: datetime
    lock_found: bool
    audiences: list[AudiencePlan]


def plan(
    root: Path, store: Store, project: SegmentProject, routes: Sequence[Route], at_us: int
) -> Plan:
    """The plan of every audience whose members may change against the lock in `root`,
    computed as of `at_us`."""
    lock = read_lock(root)
    lock_found, found = lock is not None, standings(lock, project)
    moving = [s for s in found if s.logic_changed and s.name in project.audiences]
    if not moving:
        return Plan(to_datetime(at_us), lock_found, [])
    computed = compute_members(store, project, at_us).audiences
    plans = [
        _audience(
            s, dict(computed.get(s.name, [])), store, [r for r in routes if r.audience == s.name]
        )
        for s in moving
    ]
    return Plan(to_datetime(at_us), lock_found, plans)


def _audience(
    standing: Standing, after: dict[str, bool], store: Store, routes: Sequence[Route]
) -> AudiencePlan:
    now = dict(store.membership("audience", standing.name, None))
    enters = sorted(set(after) - set(now))
    leaves = sorted(set(now) - set(after))
    flips = sum(1 for p, h in after.items() if p in now and now[p] != h)
    ops = [_route(store, r, after) for r in routes]
    changed = ["retired"] if standing.state is State.retired else list(standing.changed_parts)
    return AudiencePlan(
        standing.name,
        standing.state.value,
        standing.version,
        standing.locked_version,
        changed,
        len(now),
        len(after),
        len(enters),
        len(leaves),
        flips,
        _masked(store, enters[:SAMPLE], after),
        _masked(store, leaves[:SAMPLE], now),
        ops,
    )


def _route(store: Store, route: Route, after: dict[str, bool]) -> RouteOps:
    """The planner's rule: adds where the destination lacks a desired member (or holds it with
    the other holdout flag, unless it refused it); removes of what it holds and should not."""
    desired = {p: h for p, h in after.items() if route.include_holdout or not h}
    base = held(store.sql, route)
    adds = sum(
        1 for p, h in desired.items() if p not in base or (base[p][0] != h and not base[p][1])
    )
    removes = sum(1 for p, (_, refused) in base.items() if not refused and p not in desired)
    withheld = 0 if route.include_holdout else sum(1 for h in after.values() if h)
    return RouteOps(route.destination, adds, removes, withheld, route.dry_run)


def _masked(store: Store, ids: list[str], flags: dict[str, bool]) -> list[Sampled]:
    found = store.identifiers(ids, ("email", "phone"))
    return [
        Sampled(
            p,
            mask_email(found.get(p, {}).get("email")),
            mask_phone(found.get(p, {}).get("phone")),
            flags.get(p, False),
        )
        for p in ids
    ]


def mask_email(value: str | None) -> str | None:
    """`a…@e…`: enough to tell two samples apart, never the address."""
    if not value:
        return None
    local, _, domain = value.partition("@")
    return f"{local[:1]}…@{domain[:1]}…"


def mask_phone(value: str | None) -> str | None:
    """`…34`: the last two digits only."""
    if not value:
        return None
    return "…" + value[-2:]
