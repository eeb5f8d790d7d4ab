"""Durable state of per-profile (real-time) evaluation, written once for both stores:
histories of a few profiles, their recording, leased timers, the cursor or the pending marks.

A store written by one process (DuckDB) follows a receive-time cursor: everything received
before it has been evaluated. A store several workers write (Postgres) instead keeps what is
not yet evaluated in `realtime_pending`, marked by the transaction that stores a relevant event;
a history is read with its profile's mark `version` in one snapshot, and an outcome is
recorded only if the mark has not moved since. A due timer is leased when taken, so two
workers do not fire it both; if the worker dies before recording, the timer is taken again
once the lease has run out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import orjson

from cohortsync.store.base import MembershipChanges, Store
from cohortsync.store.outbox import Route
from cohortsync.store.realtime import HistoryRows, ProfileOutcome
from cohortsync.store.sql import SqlStore, SqlType, as_json, transposed
from cohortsync.sync.memberships import (
    MARKS,
    MERGED,
    MOVE_CURSOR,
    at_most_last,
    record_profiles,
)

TIMER_LEASE = timedelta(seconds=30)
"""How long a taken timer is hidden from other workers before it may be taken again."""

_EVENTS = """SELECT e.profile_id, e.message_id, e.event_key, epoch_us(e."timestamp"), e.properties
FROM events e WHERE e.profile_id {folded} AND e.event_key {keys}"""

_TRAITS = """SELECT t.profile_id, t.name, CAST(t.value AS VARCHAR) FROM profile_traits t
WHERE t.profile_id {ids}"""

_IDENTIFIERS = """SELECT x.profile_id, x.kind, x.value FROM identities x WHERE x.profile_id {ids}"""

_CANONICAL = """SELECT ids.profile_id, coalesce(a.canonical_id, ids.profile_id) FROM {ids}
LEFT JOIN profile_aliases a ON a.profile_id = ids.profile_id"""

_OWNERS = """SELECT keys.kind, keys.value, coalesce(a.canonical_id, x.profile_id) FROM {keys}
JOIN identities x ON x.kind = keys.kind AND x.value = keys.value
LEFT JOIN profile_aliases a ON a.profile_id = x.profile_id"""

_ANY_DUE = """SELECT 1 FROM timers
WHERE due_at <= $now AND (leased_until IS NULL OR leased_until < $now) LIMIT 1"""

_LEASE_DUE = """UPDATE timers SET leased_until = $until
FROM (SELECT profile_id, segment FROM timers
      WHERE due_at <= $now AND (leased_until IS NULL OR leased_until < $now)
      ORDER BY due_at LIMIT $limit{skip_locked}) due
WHERE timers.profile_id = due.profile_id AND timers.segment = due.segment
RETURNING timers.profile_id, epoch_us(timers.due_at)"""

_MARKED = """SELECT coalesce(a.canonical_id, p.profile_id) AS id FROM realtime_pending p
LEFT JOIN profile_aliases a ON a.profile_id = p.profile_id
WHERE p.marked_at < $before GROUP BY 1 ORDER BY min(p.marked_at), 1"""

_RECEIVED = """SELECT DISTINCT canonical_profile_id FROM profile_events
WHERE received_at >= $since AND (type IN ('identify', 'alias') OR event_key {keys})"""

_HOLDING = """SELECT DISTINCT m.profile_id FROM memberships m
WHERE m.profile_id {folded} AND m.exited_at IS NULL AND m.kind = 'audience'
  AND m.name {audiences}"""

_AUDIENCE_RUNS = """INSERT INTO audience_runs (audience, last_run_at, run_id)
SELECT runs.audience, $at, $run FROM {runs}
ON CONFLICT (audience) DO UPDATE SET last_run_at = excluded.last_run_at, run_id = excluded.run_id"""


class RealtimeState:
    """Per-profile evaluation state of one store; each write is one transaction."""

    def __init__(self, sql: SqlStore, tracks_pending: bool) -> None:
        self.sql = sql
        self.tracks_pending = tracks_pending
        """Whether stored events mark their profiles pending (several workers write the
        store); else a receive-time cursor says what is evaluated."""

    # -- profiles -----------------------------------------------------------------------------
    def canonical(self, profile_ids: Iterable[str]) -> dict[str, str]:
        """Each id's surviving profile (itself unless merged away)."""
        ids = list(dict.fromkeys(profile_ids))
        with self.sql.reading() as tx:
            rows = tx.run(_CANONICAL, ids=tx.rows("ids", (("profile_id", "text"),), [ids]))
        return {str(p): str(c) for p, c in rows}

    def owners(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """The canonical profile holding each (kind, value) identifier, where one does."""
        wanted = list(dict.fromkeys(keys))
        columns: tuple[tuple[str, SqlType], ...] = (("kind", "text"), ("value", "text"))
        with self.sql.reading() as tx:
            relation = tx.rows("keys", columns, transposed(wanted, 2))
            rows = tx.run(_OWNERS, keys=relation)
        return {(str(k), str(v)): str(p) for k, v, p in rows}

    def histories(self, profile_ids: Sequence[str], events: Iterable[str]) -> list[HistoryRows]:
        """Events named in `events`, identify traits, identifiers and pending `version` of
        canonical profiles (merged-away ids folded in), read in one snapshot so a version
        belongs to exactly these events."""
        ids = list(dict.fromkeys(profile_ids))
        with self.sql.reading() as tx:
            among = tx.among("ids", ids)
            # Every id that folds into a wanted profile: itself and the ids merged into it.
            owner = {str(p): str(c) for p, c in tx.run(MERGED, ids=among)}
            owner.update((p, p) for p in ids)
            folded = tx.among("folded", list(owner))
            keys = tx.among("keys", sorted(set(events)))
            event_rows = tx.run(_EVENTS, folded=folded, keys=keys)
            trait_rows = tx.run(_TRAITS, ids=among)
            identity_rows = tx.run(_IDENTIFIERS, ids=among)
            marks = tx.run(MARKS, ids=among) if self.tracks_pending else []
        versions = {str(p): int(v) for p, v in marks}
        found = {p: HistoryRows(p, version=versions.get(p, 0)) for p in ids}
        for profile_id, message_id, key, ts, props in event_rows:
            found[owner[str(profile_id)]].events.append(
                (str(message_id), str(key), int(ts), as_json(props))
            )
        for profile_id, name, value in trait_rows:
            traits = found[str(profile_id)].traits
            traits[str(name)] = None if value is None else orjson.loads(value)
        for profile_id, kind, value in identity_rows:
            found[str(profile_id)].identifiers.setdefault(str(kind), []).append(str(value))
        return list(found.values())

    # -- recording ----------------------------------------------------------------------------
    def record_profiles(
        self,
        outcomes: Sequence[ProfileOutcome],
        scope: Sequence[tuple[str, str]],
        at_us: int,
        routes: Sequence[Route],
        cursor_us: int | None = None,
        exits_only: Sequence[str] = (),
    ) -> MembershipChanges:
        """Record the outcomes (see `sync.memberships.record_profiles`)."""
        return record_profiles(
            self.sql,
            outcomes,
            scope,
            at_us,
            routes,
            cursor_us,
            tracks_pending=self.tracks_pending,
            exits_only=exits_only,
        )

    def holding(self, profile_ids: Sequence[str], audiences: Sequence[str]) -> set[str]:
        """The canonical profiles among `profile_ids` that are, or have an id merged into them
        that is, a current member of one of `audiences`: one read for the whole round."""
        ids = list(dict.fromkeys(profile_ids))
        if not ids or not audiences:
            return set()
        with self.sql.reading() as tx:
            owner = {str(p): str(c) for p, c in tx.run(MERGED, ids=tx.among("ids", ids))}
            owner.update((p, p) for p in ids)
            rows = tx.run(
                _HOLDING,
                folded=tx.among("folded", list(owner)),
                audiences=tx.among("audiences", sorted(set(audiences))),
            )
        return {owner[str(r[0])] for r in rows}

    # -- timers -------------------------------------------------------------------------------
    def due_timers(self, now_us: int, limit: int = 10_000) -> list[tuple[str, int]]:
        """Lease the due timers no other worker holds; (profile, its earliest due µs),
        earliest first.

        The lease runs `TIMER_LEASE` past `now_us`; recording the profile replaces its timers
        (and so ends the lease), and a worker that dies first leaves the timer to be taken again.
        """
        now = at_most_last(now_us)
        if not self._read(_ANY_DUE, {"now": now}):  # most rounds find none due
            return []
        with self.sql.transaction() as tx:
            rows = tx.run(_LEASE_DUE, {"now": now, "until": now + TIMER_LEASE, "limit": limit})
        earliest: dict[str, int] = {}
        for profile_id, due in rows:
            key = str(profile_id)
            earliest[key] = min(int(due), earliest.get(key, int(due)))
        return sorted(earliest.items(), key=lambda item: (item[1], item[0]))

    def next_timer(self) -> int | None:
        """When the earliest timer no worker holds is due (µs), or None."""
        rows = self._read("SELECT epoch_us(min(due_at)) FROM timers WHERE leased_until IS NULL")
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    # -- what is left to evaluate -------------------------------------------------------------
    def cursor(self) -> int | None:
        """Receive time (µs) up to which every stored event has been evaluated; where pending
        marks are tracked, set once the first start's catch-up is done."""
        rows = self._read("SELECT value FROM realtime_state WHERE name = 'cursor'")
        return int(rows[0][0]) if rows else None

    def set_cursor(self, received_at_us: int) -> None:
        """Move the evaluation cursor forward (never back)."""
        with self.sql.transaction() as tx:
            tx.run(MOVE_CURSOR, {"cursor": received_at_us})

    def pending(self, marked_before_us: int, limit: int = 5_000) -> list[str]:
        """Profiles with stored events that no evaluation has recorded, marked before the
        instant, oldest first: left by a worker that died between storing and evaluating.
        A store with one writer follows its cursor instead and returns none."""
        return self._marked(marked_before_us, limit) if self.tracks_pending else []

    def _marked(self, before_us: int, limit: int | None) -> list[str]:
        template = _MARKED if limit is None else _MARKED + " LIMIT $limit"
        rows = self._read(template, {"before": at_most_last(before_us), "limit": limit})
        return [str(r[0]) for r in rows]

    def profiles_received_since(self, received_at_us: int, events: Iterable[str]) -> list[str]:
        """Canonical profiles with an identify, alias or listed track received at or after the
        instant. Where pending marks are tracked, after the first start (`received_at_us` > 0):
        every pending profile, whenever received."""
        if self.tracks_pending and received_at_us > 0:
            return self._marked(2**62, None)
        with self.sql.reading() as tx:
            keys = tx.among("keys", sorted(set(events)))
            rows = tx.run(_RECEIVED, {"since": at_most_last(received_at_us)}, keys=keys)
        return [str(r[0]) for r in rows]

    # -- scheduled audiences ------------------------------------------------------------------
    def audience_runs(self) -> dict[str, int]:
        """When each audience was last computed on schedule (µs)."""
        rows = self._read("SELECT audience, epoch_us(last_run_at) FROM audience_runs")
        return {str(a): int(t) for a, t in rows}

    def record_audience_runs(self, audiences: Sequence[str], at_us: int, run_id: int) -> None:
        """Note that `audiences` were computed at `at_us` by compute run `run_id`."""
        names = list(dict.fromkeys(audiences))
        with self.sql.transaction() as tx:
            runs = tx.rows("runs", (("audience", "text"),), [names])
            tx.run(_AUDIENCE_RUNS, {"at": at_most_last(at_us), "run": run_id}, runs=runs)

    def _read(self, template: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        with self.sql.reading() as tx:
            return tx.run(template, params)


def realtime_for(store: Store) -> RealtimeState:
    """The real-time state of `store`."""
    return RealtimeState(store.sql, store.tracks_pending)
