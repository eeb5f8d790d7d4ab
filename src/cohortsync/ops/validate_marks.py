"""Test profiles: marked when `validate` creates them, removed (downstream too) by cleanup.

Cleanup first deletes their events and traits, then records that they left every segment and
audience, which queues a remove for every destination holding them (the sync layer's usual
path), and syncs. Only once no destination holds one of them are their identifiers, profiles
and membership history deleted; until then they stay marked, and cleanup can run again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cohortsync.segments.ast import SegmentProject
from cohortsync.store.base import Store
from cohortsync.store.outbox import DRY_REMOVED, DRY_RUN, MEMBER, Route
from cohortsync.store.realtime import ProfileOutcome
from cohortsync.sync.realtime_state import realtime_for

FIRST = ("events", "event_summaries", "property_summaries", "profile_traits")
"""What makes a test profile a member of anything: gone before its exits are recorded."""
LAST = (
    "identities", "memberships", "timers", "realtime_pending", "destination_state",
    "dead_letters", "conversion_outbox", "profiles", "test_profiles",
)  # fmt: skip
"""The rest, deleted once no destination holds the profiles any more. The delivery log and
batch results stay: they carry no identifiers and record what was sent."""


@dataclass
class Cleanup:
    """What `validate --cleanup` removed, and what is still held downstream."""

    profiles: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    """rows deleted per table"""
    removes_queued: int = 0
    still_held: dict[str, int] = field(default_factory=dict)
    """per destination, test-profile memberships it still holds (cleanup can run again)"""

    @property
    def done(self) -> bool:
        """Every test profile is gone, downstream too."""
        return not self.still_held


def test_profiles(store: Store) -> list[str]:
    """The profile ids marked as test profiles."""
    with store.sql.reading() as tx:
        return [str(r[0]) for r in tx.run("SELECT profile_id FROM test_profiles ORDER BY 1")]


def mark(store: Store, profile_ids: Iterable[str], label: str) -> int:
    """Mark profiles as test profiles (left out of `stats`); how many were new."""
    ids = sorted(set(profile_ids))
    with store.sql.transaction() as tx:
        rows = tx.rows("marked", (("profile_id", "text"),), [ids])
        return tx.changed(
            "INSERT INTO test_profiles (profile_id, label, marked_at) "
            "SELECT profile_id, $label, $now FROM {marked} WHERE profile_id NOT IN "
            "(SELECT profile_id FROM test_profiles)",
            {"label": label, "now": datetime.now(UTC)},
            marked=rows,
        )


def cleanup(
    store: Store, project: SegmentProject, routes: tuple[Route, ...], sync: Callable[[], object]
) -> Cleanup:
    """Remove the test profiles: upstream, from every destination (through `sync`), then
    their identifiers, profiles and history."""
    ids = test_profiles(store)
    done = Cleanup(profiles=len(ids))
    if not ids:
        return done
    every = _with_aliases(store, ids)
    tables = _tables(store)
    _delete(store, [t for t in FIRST if t in tables], every, done)
    realtime = realtime_for(store)
    versions = {h.profile_id: h.version for h in realtime.histories(ids, ())}
    scope = [("segment", n) for n in project.segments] + [
        ("audience", n) for n in project.audiences
    ]
    outcomes = [ProfileOutcome(p, {}, {}, versions.get(p, 0)) for p in ids]
    changes = realtime.record_profiles(outcomes, scope, _now_us(), routes)
    done.removes_queued = sum(changes.exited.values())
    sync()
    done.still_held = _held(store, every)
    if done.still_held:
        return done
    _delete(store, [t for t in LAST if t in tables], every, done)
    _delete_aliases(store, every, done)
    store.forget_cached_identities()
    return done


def _now_us() -> int:
    return int(datetime.now(UTC).timestamp() * 1_000_000)


def _with_aliases(store: Store, ids: list[str]) -> list[str]:
    """The test profiles' ids and every id merged into them."""
    with store.sql.reading() as tx:
        rows = tx.run(
            "SELECT profile_id FROM profile_aliases WHERE canonical_id {ids}",
            ids=tx.among("ids", ids),
        )
    return sorted({*ids, *(str(r[0]) for r in rows)})


def _tables(store: Store) -> set[str]:
    with store.sql.reading() as tx:
        rows = tx.run(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
    return {str(r[0]) for r in rows}


def _delete(store: Store, tables: list[str], ids: list[str], done: Cleanup) -> None:
    with store.sql.transaction() as tx:
        for table in tables:
            count = tx.changed(
                f"DELETE FROM {table} WHERE profile_id {{ids}}", ids=tx.among("ids", ids)
            )
            if count:
                done.removed[table] = done.removed.get(table, 0) + count


def _delete_aliases(store: Store, ids: list[str], done: Cleanup) -> None:
    with store.sql.transaction() as tx:
        among = tx.among("ids", ids)
        count = tx.changed(
            "DELETE FROM profile_aliases WHERE profile_id {ids} OR canonical_id {ids}", ids=among
        )
        count += tx.changed(
            "DELETE FROM merges WHERE from_profile {ids} OR into_profile {ids}", ids=among
        )
    if count:
        done.removed["profile_aliases"] = count


def _held(store: Store, ids: list[str]) -> dict[str, int]:
    """Per destination, memberships of these profiles it still holds or has yet to be told of."""
    with store.sql.reading() as tx:
        among = tx.among("ids", ids)
        rows = tx.run(
            "SELECT destination, count(*) FROM destination_state WHERE profile_id {ids} "
            f"AND status IN ('{MEMBER}', '{DRY_RUN}', '{DRY_REMOVED}') GROUP BY 1",
            ids=among,
        )
        waiting = tx.run(
            "SELECT destination, count(*) FROM outbox WHERE profile_id {ids} GROUP BY 1",
            ids=among,
        )
    held: dict[str, int] = {}
    for destination, count in [*rows, *waiting]:
        held[str(destination)] = held.get(str(destination), 0) + int(count)
    return held
