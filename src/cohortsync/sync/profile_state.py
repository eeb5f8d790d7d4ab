"""What the store holds about one profile beyond its events, read once for both stores: its
recorded memberships, and per destination and audience what was acknowledged, what waits in
the outbox, what was dead-lettered and the last delivery (`explain`, `profile`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cohortsync.store.base import Store
from cohortsync.sync.memberships import MERGED

_KEYS = """SELECT DISTINCT event_key FROM events
WHERE profile_id {ids} AND event_key IS NOT NULL ORDER BY 1"""

_MEMBERSHIPS = """SELECT kind, name, epoch_us(min(entered_at)), bool_or(holdout) FROM memberships
WHERE profile_id {ids} AND exited_at IS NULL GROUP BY kind, name ORDER BY kind, name"""

_STATE = """SELECT destination, audience, status, holdout, reason, epoch_us(updated_at)
FROM destination_state WHERE profile_id {ids} ORDER BY updated_at"""

_OUTBOX = """SELECT o.destination, o.audience, o.op, o.holdout, epoch_us(o.changed_at),
       o.batch_id IS NOT NULL, coalesce(b.attempts, 0), epoch_us(b.next_attempt_at), b.last_error
FROM outbox o LEFT JOIN sync_batches b ON b.batch_id = o.batch_id
WHERE o.profile_id {ids} ORDER BY o.change_id"""

_DELIVERED = """SELECT destination, audience, op, outcome, reason, attempts, epoch_us(resolved_at)
FROM delivery_log WHERE kind = 'changes' AND profile_id {ids} ORDER BY resolved_at, record_id"""

_DEAD = """SELECT destination, audience, op, reason, epoch_us(dead_at) FROM dead_letters
WHERE kind = 'changes' AND retried_at IS NULL AND profile_id {ids} ORDER BY dead_at"""


@dataclass(frozen=True)
class Membership:
    """A current stay in a segment or audience, as recorded (`entered_at_us` in µs)."""

    kind: str
    name: str
    entered_at_us: int
    holdout: bool


@dataclass(frozen=True)
class Queued:
    """A change of the profile waiting in the outbox, or in flight in a claimed batch."""

    op: str
    holdout: bool
    changed_at_us: int
    in_flight: bool
    attempts: int
    next_attempt_us: int | None
    last_error: str | None


@dataclass(frozen=True)
class Delivery:
    """One record of the profile a destination resolved (`outcome`: acknowledged, rejected or
    dry_run), or dead-lettered (`outcome` dead_lettered)."""

    op: str
    outcome: str
    reason: str | None
    attempts: int
    at_us: int


@dataclass
class RouteState:
    """Everything the sync tables hold for the profile on one destination × audience."""

    status: str | None = None
    """The `destination_state` status: member, rejected, dry_run, dry_removed, or None."""
    holdout: bool = False
    reason: str | None = None
    updated_at_us: int | None = None
    queued: list[Queued] = field(default_factory=list)
    last_delivery: Delivery | None = None
    dead: list[Delivery] = field(default_factory=list)


@dataclass(frozen=True)
class ProfileState:
    """A profile's recorded memberships and its state on every route."""

    memberships: list[Membership]
    routes: dict[tuple[str, str], RouteState]


def profile_ids(store: Store, profile_id: str) -> list[str]:
    """The profile and every id merged into it (rows written before a merge keep those)."""
    with store.sql.reading() as tx:
        rows = tx.run(MERGED, ids=tx.among("ids", [profile_id]))
    return [profile_id, *sorted({str(p) for p, _ in rows} - {profile_id})]


def event_keys(store: Store, ids: Sequence[str]) -> list[str]:
    """The event keys the profile's tracked events carry."""
    with store.sql.reading() as tx:
        return [str(k) for (k,) in tx.run(_KEYS, ids=tx.among("ids", list(ids)))]


def memberships(store: Store, ids: Sequence[str]) -> list[Membership]:
    """The profile's current recorded memberships, by kind and name."""
    with store.sql.reading() as tx:
        rows = tx.run(_MEMBERSHIPS, ids=tx.among("ids", list(ids)))
    return [Membership(str(k), str(n), int(t), bool(h)) for k, n, t, h in rows]


def profile_state(store: Store, ids: Sequence[str]) -> ProfileState:
    """Memberships and per-route sync state of the profile, read in one snapshot."""
    with store.sql.reading() as tx:
        wanted = list(ids)
        member_rows = tx.run(_MEMBERSHIPS, ids=tx.among("ids", wanted))
        state_rows = tx.run(_STATE, ids=tx.among("ids", wanted))
        outbox_rows = tx.run(_OUTBOX, ids=tx.among("ids", wanted))
        delivered_rows = tx.run(_DELIVERED, ids=tx.among("ids", wanted))
        dead_rows = tx.run(_DEAD, ids=tx.among("ids", wanted))
    routes: dict[tuple[str, str], RouteState] = {}

    def route(destination: object, audience: object) -> RouteState:
        return routes.setdefault((str(destination), str(audience)), RouteState())

    for destination, audience, status, holdout, reason, updated in state_rows:
        one = route(destination, audience)
        one.status, one.holdout, one.updated_at_us = str(status), bool(holdout), int(updated)
        one.reason = None if reason is None else str(reason)
    for destination, audience, op, holdout, changed, flight, tries, nxt, error in outbox_rows:
        route(destination, audience).queued.append(
            Queued(
                str(op),
                bool(holdout),
                int(changed),
                bool(flight),
                int(tries),
                None if nxt is None else int(nxt),
                None if error is None else str(error),
            )
        )
    for destination, audience, op, outcome, reason, tries, at in delivered_rows:
        route(destination, audience).last_delivery = Delivery(
            str(op), str(outcome), None if reason is None else str(reason), int(tries), int(at)
        )
    for destination, audience, op, reason, at in dead_rows:
        route(destination, audience).dead.append(
            Delivery(str(op), "dead_lettered", str(reason), 0, int(at))
        )
    found = [Membership(str(k), str(n), int(t), bool(h)) for k, n, t, h in member_rows]
    return ProfileState(found, routes)
