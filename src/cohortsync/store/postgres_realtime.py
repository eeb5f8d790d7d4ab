"""The real-time side of the Postgres store: histories, per-profile records, leased timers.

Several workers evaluate at once, so three things differ from the DuckDB store, which has one
writer and a receive-time cursor:

- What is not yet evaluated is kept in `realtime_pending`, marked by the transaction that stores
  a relevant event. A history is read with its profile's mark `version` in one snapshot, and an
  outcome is recorded only if the mark has not moved since (else the profile stays pending and
  is evaluated again from its newer history). This needs a mark's version never to repeat for
  a profile, even once the mark was cleared and made again. The first start evaluates every
  profile with a real-time event; later starts evaluate the pending ones (no cursor).
- One profile's outcome is recorded under a transaction-scoped advisory lock on its id (and on
  the ids merged into it), so two workers never interleave their diffs of one profile.
- A due timer is leased for `TIMER_LEASE` when taken, so two workers do not fire it both; if the
  worker dies before recording, the timer is taken again once the lease has run out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
from psycopg.types.json import set_json_loads

from cohortsync.moments import to_datetime, to_micros
from cohortsync.store.base import MembershipChanges
from cohortsync.store.outbox import Route
from cohortsync.store.postgres_memberships import COMPUTED_COLUMNS, REALTIME_RUN, diff_memberships
from cohortsync.store.postgres_outbox import plan_changes
from cohortsync.store.postgres_shared import PgConnections, PgView, advisory_lock, temp_table
from cohortsync.store.realtime import HistoryRows, ProfileOutcome, RealtimeStore
from cohortsync.store.records import RealtimeInterest

TIMER_LEASE = timedelta(seconds=30)
"""How long a taken timer is hidden from other workers before it may be taken again."""
LOCK_PREFIX = "realtime:"
"""Advisory lock key of one profile's recording: `realtime:<profile_id>`."""
_CURSOR = "cursor"
_LAST_US = to_micros(datetime(9999, 12, 31, tzinfo=UTC))


def _at(us: int) -> datetime:
    """The instant `us` µs after the epoch (an instant past year 9999 is read as then)."""
    return to_datetime(min(us, _LAST_US))


def _us(sql: str) -> str:
    """SQL for a timestamp expression as microseconds since the epoch (exact: numeric)."""
    return f"(extract(epoch from {sql}) * 1000000)::bigint"


_EVENT_US = _us('"timestamp"')
# The recorded profiles' timers replaced (a lease ends with its row) and their marks cleared
# where still the version evaluated, in one statement.
_TIMERS_AND_MARKS = """
WITH fresh AS (
    SELECT * FROM unnest(%(profiles)s::text[], %(segments)s::text[], %(due)s::timestamptz[])
        AS f(profile_id, segment, due_at)),
gone AS (
    DELETE FROM timers t WHERE t.profile_id = ANY(%(everyone)s::text[])
    AND NOT EXISTS (SELECT 1 FROM fresh f
                    WHERE f.profile_id = t.profile_id AND f.segment = t.segment)),
cleared AS (
    DELETE FROM realtime_pending p
    USING unnest(%(marked)s::text[], %(versions)s::bigint[]) AS k(profile_id, version)
    WHERE p.profile_id = k.profile_id AND (k.version IS NULL OR p.version = k.version))
INSERT INTO timers (profile_id, segment, due_at) SELECT * FROM fresh
ON CONFLICT (profile_id, segment) DO UPDATE SET due_at = excluded.due_at, leased_until = NULL
"""
_MARKS = "SELECT profile_id, version FROM realtime_pending WHERE profile_id = ANY(%s::text[])"


class PostgresRealtime(PgView, RealtimeStore):
    """Per-profile evaluation state in Postgres, safe with several workers evaluating at once."""

    tracks_pending = True

    def __init__(self, db: PgConnections) -> None:
        super().__init__(db)
        self.interest: RealtimeInterest | None = None
        """Stored messages that mark their profile pending (None: every message)."""

    def watch(self, interest: RealtimeInterest) -> None:
        self.interest = interest

    # -- profiles -----------------------------------------------------------------------------
    def canonical(self, profile_ids: Iterable[str]) -> dict[str, str]:
        ids = list(dict.fromkeys(profile_ids))
        rows = self._db.query(
            "SELECT p.id, coalesce(a.canonical_id, p.id) FROM unnest(%s::text[]) p(id) "
            "LEFT JOIN profile_aliases a ON a.profile_id = p.id",
            (ids,),
        )
        return {str(p): str(c) for p, c in rows}

    def owners(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        wanted = list(dict.fromkeys(keys))
        rows = self._db.query(
            "SELECT k.kind, k.value, coalesce(a.canonical_id, x.profile_id) "
            "FROM unnest(%s::text[], %s::text[]) k(kind, value) "
            "JOIN identities x ON x.kind = k.kind AND x.value = k.value "
            "LEFT JOIN profile_aliases a ON a.profile_id = x.profile_id",
            ([k for k, _ in wanted], [v for _, v in wanted]),
        )
        return {(str(k), str(v)): str(p) for k, v, p in rows}

    def histories(self, profile_ids: Sequence[str], events: Iterable[str]) -> list[HistoryRows]:
        """Events, traits, identifiers and pending `version` of each profile, one snapshot.

        Read in one REPEATABLE READ transaction, so the version belongs to exactly these events:
        an event stored later bumps the version and `record_profiles` then records nothing.
        """
        ids = list(dict.fromkeys(profile_ids))
        with self._db.transaction() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            set_json_loads(orjson.loads, cur)  # several times faster than json.loads
            cur.execute(
                "SELECT profile_id, canonical_id FROM profile_aliases "
                "WHERE canonical_id = ANY(%s::text[])",
                (ids,),
            )
            owner = {str(p): str(c) for p, c in cur.fetchall()}
            owner.update((p, p) for p in ids)
            cur.execute(
                f"SELECT profile_id, message_id, event_key, {_EVENT_US}, properties FROM events "
                "WHERE profile_id = ANY(%s::text[]) AND event_key = ANY(%s::text[])",
                (list(owner), sorted(set(events))),
            )
            event_rows = cur.fetchall()
            cur.execute(
                "SELECT profile_id, name, value FROM profile_traits "
                "WHERE profile_id = ANY(%s::text[])",
                (ids,),
            )
            trait_rows = cur.fetchall()
            cur.execute(
                "SELECT profile_id, kind, value FROM identities WHERE profile_id = ANY(%s::text[])",
                (ids,),
            )
            identity_rows = cur.fetchall()
            cur.execute(
                _MARKS,
                (ids,),
            )
            versions = {str(p): int(v) for p, v in cur.fetchall()}
        found = {p: HistoryRows(p, version=versions.get(p, 0)) for p in ids}
        for profile_id, message_id, key, ts, props in event_rows:
            found[owner[str(profile_id)]].events.append(
                (str(message_id), str(key), int(ts), props or {})
            )
        for profile_id, name, value in trait_rows:
            found[str(profile_id)].traits[str(name)] = value
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
    ) -> MembershipChanges:
        """Record the outcomes still current, under advisory locks on their profiles.

        An outcome whose `version` is no longer the profile's pending mark (0: none) was
        evaluated from a history that misses a newer event: nothing is recorded for that
        profile and it stays pending. `cursor_us` is not needed here: the pending marks say
        what is left to evaluate.
        """
        ids = list(dict.fromkeys(o.profile_id for o in outcomes))
        if not ids:
            return MembershipChanges(REALTIME_RUN, {}, {})
        with self._db.transaction() as cur:
            cur.execute(
                "SELECT profile_id, canonical_id FROM profile_aliases "
                "WHERE canonical_id = ANY(%s::text[])",
                (ids,),
            )
            merged = [(str(p), str(c)) for p, c in cur.fetchall()]
            advisory_lock(cur, *(LOCK_PREFIX + p for p in [*ids, *(p for p, _ in merged)]))
            cur.execute(
                _MARKS,
                (ids,),
            )
            marks = {str(p): int(v) for p, v in cur.fetchall()}
            kept = [o for o in outcomes if marks.get(o.profile_id, 0) == o.version]
            if not kept:
                return MembershipChanges(REALTIME_RUN, {}, {})
            return _record(cur, kept, merged, scope, _at(at_us), routes)

    # -- timers -------------------------------------------------------------------------------
    def due_timers(self, now_us: int, limit: int = 10_000) -> list[tuple[str, int]]:
        """Lease the due timers no other worker holds; (profile, its earliest due µs).

        The lease runs `TIMER_LEASE` past `now_us`; recording the profile replaces its timers
        (and so ends the lease), and a worker that dies first leaves the timer to be taken again.
        """
        now = _at(now_us)
        with self._db.transaction() as cur:
            cur.execute(
                "WITH due AS (SELECT profile_id, segment FROM timers "
                "WHERE due_at <= %(now)s AND (leased_until IS NULL OR leased_until < %(now)s) "
                "ORDER BY due_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
                "UPDATE timers t SET leased_until = %(until)s FROM due "
                "WHERE t.profile_id = due.profile_id AND t.segment = due.segment "
                f"RETURNING t.profile_id, {_us('t.due_at')}",
                {"now": now, "until": now + TIMER_LEASE, "limit": limit},
            )
            rows = cur.fetchall()
        earliest: dict[str, int] = {}
        for profile_id, due in rows:
            key = str(profile_id)
            earliest[key] = min(int(due), earliest.get(key, int(due)))
        return sorted(earliest.items(), key=lambda item: (item[1], item[0]))

    def next_timer(self) -> int | None:
        rows = self._db.query(f"SELECT {_us('min(due_at)')} FROM timers WHERE leased_until IS NULL")
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    # -- what is left to evaluate -------------------------------------------------------------
    def pending(self, marked_before_us: int, limit: int = 5_000) -> list[str]:
        """Canonical profiles with a pending mark older than the instant, oldest first."""
        return self._marked(marked_before_us, limit)

    def _marked(self, before_us: int, limit: int | None) -> list[str]:
        rows = self._db.query(
            "SELECT coalesce(a.canonical_id, p.profile_id) AS id FROM realtime_pending p "
            "LEFT JOIN profile_aliases a ON a.profile_id = p.profile_id "
            "WHERE p.marked_at < %s GROUP BY 1 ORDER BY min(p.marked_at), 1 LIMIT %s",
            (_at(before_us), limit),
        )
        return [str(r[0]) for r in rows]

    def cursor(self) -> int | None:
        """Set once the first start's catch-up is done (no receive-time cursor on Postgres)."""
        rows = self._db.query("SELECT value FROM realtime_state WHERE name = %s", (_CURSOR,))
        return int(rows[0][0]) if rows else None

    def set_cursor(self, received_at_us: int) -> None:
        with self._db.transaction() as cur:
            cur.execute(
                "INSERT INTO realtime_state VALUES (%s, %s) ON CONFLICT (name) "
                "DO UPDATE SET value = greatest(realtime_state.value, excluded.value)",
                (_CURSOR, received_at_us),
            )

    def profiles_received_since(self, received_at_us: int, events: Iterable[str]) -> list[str]:
        """On a first start (`received_at_us` 0): every canonical profile with an identify,
        alias or listed track. Otherwise every pending profile, whenever received: Postgres
        tracks what is unevaluated instead of following a receive-time cursor."""
        if received_at_us > 0:
            return self._marked(_LAST_US, None)  # every one: LIMIT NULL is no limit
        rows = self._db.query(
            "SELECT DISTINCT canonical_profile_id FROM profile_events "
            "WHERE type IN ('identify', 'alias') OR event_key = ANY(%s::text[])",
            (sorted(set(events)),),
        )
        return [str(r[0]) for r in rows]

    # -- scheduled audiences ------------------------------------------------------------------
    def audience_runs(self) -> dict[str, int]:
        rows = self._db.query(f"SELECT audience, {_us('last_run_at')} FROM audience_runs")
        return {str(a): int(t) for a, t in rows}

    def record_audience_runs(self, audiences: Sequence[str], at_us: int, run_id: int) -> None:
        with self._db.transaction() as cur:
            cur.execute(
                "INSERT INTO audience_runs SELECT a, %s, %s FROM unnest(%s::text[]) a "
                "ON CONFLICT (audience) DO UPDATE "
                "SET last_run_at = excluded.last_run_at, run_id = excluded.run_id",
                (_at(at_us), run_id, list(dict.fromkeys(audiences))),
            )


def _record(
    cur: psycopg.Cursor[Any],
    kept: Sequence[ProfileOutcome],
    merged: Sequence[tuple[str, str]],
    scope: Sequence[tuple[str, str]],
    at: datetime,
    routes: Sequence[Route],
) -> MembershipChanges:
    """Diff, outbox, timers and pending marks of outcomes still current; inside the lock."""
    evaluated = {o.profile_id for o in kept}
    aliases = [p for p, c in merged if c in evaluated]
    everyone = sorted(evaluated | set(aliases))
    wanted = {
        (kind, name, o.profile_id): holdout
        for o in kept
        for (kind, name), holdout in o.members.items()
    }
    if _unchanged(cur, wanted, everyone, scope):
        changes = MembershipChanges(REALTIME_RUN, {}, {})
    else:
        temp_table(cur, "_computed", COMPUTED_COLUMNS, ((*k, h) for k, h in wanted.items()))
        changes = diff_memberships(
            cur,
            at,
            REALTIME_RUN,
            "profile_id = ANY(%s::text[]) "
            "AND (kind, name) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
            (everyone, [k for k, _ in scope], [n for _, n in scope]),
        )
    plan_changes(cur, routes, datetime.now(UTC), profiles=everyone)
    timers = [(o.profile_id, s, _at(t)) for o in kept for s, t in o.timers.items()]
    cur.execute(
        _TIMERS_AND_MARKS,
        {
            "everyone": everyone,
            "profiles": [t[0] for t in timers],
            "segments": [t[1] for t in timers],
            "due": [t[2] for t in timers],
            # Ids merged into a recorded profile had their events folded into its history:
            # their marks (left from before the merge, which marked the survivor) go too.
            "marked": [o.profile_id for o in kept] + aliases,
            "versions": [o.version for o in kept] + [None] * len(aliases),
        },
    )
    return changes


def _unchanged(
    cur: psycopg.Cursor[Any],
    wanted: dict[tuple[str, str, str], bool],
    everyone: Sequence[str],
    scope: Sequence[tuple[str, str]],
) -> bool:
    """Whether the current memberships of `everyone` are already `wanted` (most evaluations
    change nothing; the diff and its temp table are then skipped)."""
    cur.execute(
        "SELECT kind, name, profile_id, holdout FROM memberships "
        "WHERE exited_at IS NULL AND profile_id = ANY(%s::text[])",
        (list(everyone),),
    )
    names = set(scope)
    held = {(str(k), str(n), str(p)): bool(h) for k, n, p, h in cur.fetchall()}
    return wanted == {key: h for key, h in held.items() if key[:2] in names or key in wanted}
