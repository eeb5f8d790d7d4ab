"""The outbox on Postgres: set-based planning, claims with SKIP LOCKED, resolutions.

Several processes plan and deliver at once. Planning one profile takes that profile's advisory
lock (and a shared lock a whole-project plan takes exclusively), then locks the waiting rows it
may rewrite, so a claim never moves a row a plan is deciding about. Claims of one destination
are serialised by a transaction-scoped advisory lock; a claimed batch is held by the claiming
connection's session lock until it is resolved, deferred or dead-lettered, so no other worker is
handed it meanwhile, and a worker that dies releases it at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import orjson
import psycopg

from cohortsync.store.outbox import (
    CHANGES,
    CONVERSIONS,
    DRY_REMOVED,
    MEMBER,
    STATUS_SELECT,
    ClaimedBatch,
    ConversionRoute,
    OutboxRecord,
    OutboxStore,
    PlanCounts,
    Resolution,
    Route,
    RouteStatus,
    SyncRunRecord,
    key_match,
    record_table,
    retry_batch_row,
    stable_batch_id,
    whole_log_due,
)
from cohortsync.store.postgres_shared import PgConnections, PgView, advisory_lock, lock_key

PLAN_MEMORY = "64MB"
"""work_mem of a whole-project plan (its sorts stay in memory up to about a million changes)."""

PLAN_ALL = "plan:*"
"""The advisory key a whole-project plan holds exclusively and a per-profile plan shares."""


def _scoped(alias: str, profiles: Sequence[str] | None) -> str:
    """An SQL condition limiting `alias` to the planned profiles (the `profiles` parameter)."""
    return "" if profiles is None else f" AND {alias}.profile_id = ANY(%(profiles)s::text[])"


_ROUTES = """routes AS (
    SELECT * FROM unnest(%(destinations)s::text[], %(audiences)s::text[], %(holdouts)s::bool[],
                         %(dry_runs)s::bool[])
        AS r(destination, audience, include_holdout, dry_run))"""

# Lock the waiting rows a plan may delete or keep: a claim (SKIP LOCKED) leaves them alone, and
# a claim already under way finishes first (the row then is in flight when the plan reads).
_LOCK_WAITING = """
WITH {routes}
SELECT o.change_id FROM outbox o
WHERE o.batch_id IS NULL
  AND EXISTS (SELECT 1 FROM routes r
              WHERE r.destination = o.destination AND r.audience = o.audience){scope_o}
FOR UPDATE OF o
"""

# One statement: every part reads the same snapshot (the one DuckDB's steps see in turn, since
# each step only removes rows the later ones ignore).
_PLAN = """
WITH {routes},
desired AS (
    SELECT r.destination, m.name AS audience, m.profile_id, m.holdout,
           m.entered_at AS changed_at
    FROM memberships m JOIN routes r ON r.audience = m.name
    WHERE m.kind = 'audience' AND m.exited_at IS NULL
      AND (r.include_holdout OR NOT m.holdout){scope_m}),
flight AS (
    SELECT o.* FROM outbox o
    WHERE o.batch_id IS NOT NULL
      AND EXISTS (SELECT 1 FROM routes r
                  WHERE r.destination = o.destination AND r.audience = o.audience){scope_o}),
acked AS (
    SELECT s.* FROM destination_state s
    JOIN routes r ON r.destination = s.destination AND r.audience = s.audience
    WHERE s.status <> CASE WHEN r.dry_run THEN 'dry_removed' ELSE 'dry_run' END{scope_s}),
base AS (
    SELECT coalesce(f.destination, s.destination) AS destination,
           coalesce(f.audience, s.audience) AS audience,
           coalesce(f.profile_id, s.profile_id) AS profile_id,
           CASE WHEN f.change_id IS NOT NULL THEN f.op = 'add' ELSE true END AS present,
           coalesce(f.holdout, s.holdout) AS holdout,
           f.change_id IS NULL AND s.status = 'rejected' AS rejected
    FROM flight f FULL JOIN acked s ON {match_fs}),
needed AS (
    SELECT * FROM (
        SELECT d.destination, d.audience, d.profile_id, 'add' AS op, d.holdout, d.changed_at
        FROM desired d LEFT JOIN base b ON {match_db}
        WHERE b.profile_id IS NULL OR NOT b.present
           OR (b.holdout <> d.holdout AND NOT b.rejected)
        UNION ALL
        SELECT b.destination, b.audience, b.profile_id, 'remove', b.holdout,
               %(now)s::timestamptz
        FROM base b
        WHERE b.present AND NOT b.rejected
          AND NOT EXISTS (SELECT 1 FROM desired d WHERE {match_db})
    ) n
    WHERE NOT EXISTS (
        SELECT 1 FROM dead_letters x
        WHERE x.kind = 'changes' AND x.retried_at IS NULL AND x.op = n.op AND {match_xn})),
forget_rejected AS (
    DELETE FROM destination_state s
    WHERE s.status = 'rejected'
      AND EXISTS (SELECT 1 FROM routes r
                  WHERE r.destination = s.destination AND r.audience = s.audience)
      AND NOT EXISTS (SELECT 1 FROM desired d WHERE {match_ds})
      AND NOT EXISTS (SELECT 1 FROM outbox o WHERE {match_os}){scope_s}
    RETURNING 1),
forget_dry_run AS (
    DELETE FROM destination_state s
    WHERE s.status = 'dry_run'
      AND EXISTS (SELECT 1 FROM routes r WHERE NOT r.dry_run
                  AND r.destination = s.destination AND r.audience = s.audience){scope_s}
    RETURNING 1),
stale AS (
    DELETE FROM outbox o
    WHERE o.batch_id IS NULL
      AND EXISTS (SELECT 1 FROM routes r
                  WHERE r.destination = o.destination AND r.audience = o.audience)
      AND NOT EXISTS (SELECT 1 FROM needed n
                      WHERE {match_no} AND n.op = o.op AND n.holdout = o.holdout){scope_o}
    RETURNING 1),
fresh AS (
    SELECT n.* FROM needed n
    WHERE NOT EXISTS (SELECT 1 FROM outbox w
                      WHERE w.batch_id IS NULL AND {match_wn}
                        AND w.op = n.op AND w.holdout = n.holdout)),
{identifiers},
queued AS (
    INSERT INTO outbox (change_id, destination, audience, profile_id, op, holdout, changed_at,
                        planned_at, batch_id, identifiers)
    SELECT nextval('change_ids'), n.destination, n.audience, n.profile_id, n.op, n.holdout,
           n.changed_at, %(now)s::timestamptz, NULL,
           CASE WHEN n.op = 'remove' THEN coalesce(s.identifiers, i.identifiers)
                ELSE i.identifiers END
    FROM fresh n
    LEFT JOIN planned_ids i ON i.profile_id = n.profile_id
    LEFT JOIN destination_state s ON {match_sn}
    ORDER BY n.op DESC, n.destination, n.audience, n.profile_id
    RETURNING op)
SELECT count(*) FILTER (WHERE op = 'add'), count(*) FILTER (WHERE op = 'remove')
FROM queued
"""

# Identifiers are fixed when a change is planned, in one set-based pass over the identity graph:
# per kind, the one first seen (ties: the smallest value), read through merges. A claim then
# takes them from the outbox row, and a remove reuses what the destination acknowledged.
_PLANNED_IDENTIFIERS = """planned_ids AS (
    SELECT f.profile_id, jsonb_object_agg(f.kind, f.value) AS identifiers
    FROM (
        SELECT DISTINCT ON (p.profile_id, x.kind) p.profile_id, x.kind, x.value
        FROM (SELECT DISTINCT profile_id FROM fresh) p
        LEFT JOIN profile_aliases a ON a.profile_id = p.profile_id
        JOIN identities x ON x.profile_id = coalesce(a.canonical_id, p.profile_id)
        ORDER BY p.profile_id, x.kind, x.first_seen, x.value
    ) f
    GROUP BY f.profile_id)"""


def _plan_sql(template: str, profiles: Sequence[str] | None) -> str:
    pairs = {
        f"match_{a}{b}": key_match(a, b)
        for a, b in ("fs", "db", "xn", "ds", "os", "no", "wn", "sn")
    }
    return template.format(
        routes=_ROUTES,
        identifiers=_PLANNED_IDENTIFIERS,
        scope_m=_scoped("m", profiles),
        scope_o=_scoped("o", profiles),
        scope_s=_scoped("s", profiles),
        **pairs,
    )


def _route_params(routes: Sequence[Route]) -> dict[str, Any]:
    return {
        "destinations": [r.destination for r in routes],
        "audiences": [r.audience for r in routes],
        "holdouts": [r.include_holdout for r in routes],
        "dry_runs": [r.dry_run for r in routes],
    }


def _lock_plan(cur: psycopg.Cursor[Any], profiles: Sequence[str] | None) -> None:
    """A whole plan excludes every other plan; per-profile plans exclude each other per profile."""
    if profiles is None:
        advisory_lock(cur, PLAN_ALL)
        return
    cur.execute(f"SELECT pg_advisory_xact_lock_shared({lock_key()})", (PLAN_ALL,))
    advisory_lock(cur, *("plan:" + p for p in profiles))


@contextmanager
def _set_based(cur: psycopg.Cursor[Any], wanted: bool) -> Iterator[None]:
    """A whole-project plan joins every member with every acknowledged row: hash joins in
    memory, never nested loops (statistics taken before a large plan or delivery would make
    the planner expect a few rows and loop over hundreds of thousands). Restored after."""
    if not wanted:
        yield
        return
    cur.execute(
        "SELECT current_setting('work_mem'), current_setting('enable_nestloop'), "
        "set_config('work_mem', %s, true), set_config('enable_nestloop', 'off', true)",
        (PLAN_MEMORY,),
    )
    row = cur.fetchone()
    yield
    if row is not None:
        cur.execute(
            "SELECT set_config('work_mem', %s, true), set_config('enable_nestloop', %s, true)",
            (row[0], row[1]),
        )


def plan_changes(
    cur: psycopg.Cursor[Any],
    routes: Sequence[Route],
    now: datetime,
    profiles: Sequence[str] | None = None,
) -> PlanCounts:
    """Queue what brings each route to its desired state; call inside the caller's transaction.

    With `profiles`, only those profiles are planned (the real-time path). Base state = the
    in-flight change for a key if any, else what the destination acknowledged. Waiting rows that
    no longer match what is needed are dropped (an enter then exit before delivery coalesces to
    nothing); needed changes without a waiting row are added, removes first so a merged
    profile's old identifiers leave before its survivor's are added.
    """
    if not routes or (profiles is not None and not profiles):
        return PlanCounts()
    _lock_plan(cur, profiles)
    params: dict[str, Any] = {**_route_params(routes), "now": now}
    if profiles is not None:
        params["profiles"] = list(profiles)
    cur.execute(_plan_sql(_LOCK_WAITING, profiles), params)
    with _set_based(cur, profiles is None):
        cur.execute(_plan_sql(_PLAN, profiles), params)
        row = cur.fetchone()
    adds, removes = (int(row[0]), int(row[1])) if row else (0, 0)
    if adds + removes >= ANALYZE_AFTER:
        cur.execute("ANALYZE outbox")
    return PlanCounts(adds=adds, removes=removes)


def _held_key(batch_id: str) -> str:
    """The session advisory key a worker holds while it delivers a batch."""
    return "batch:" + batch_id


_HOLD = """
WITH k AS (SELECT {key} AS h)
SELECT CASE
    WHEN EXISTS (SELECT 1 FROM pg_locks l, k
                 WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid() AND l.granted
                   AND l.objsubid = 1 AND l.classid::bigint = (k.h >> 32) & 4294967295
                   AND l.objid::bigint = k.h & 4294967295) THEN true
    ELSE pg_try_advisory_lock(k.h) END
FROM k
""".format(key=lock_key("%(key)s"))

_UNLOCK = f"SELECT pg_advisory_unlock({lock_key()})"

_NEW_BATCH = (
    "INSERT INTO sync_batches (batch_id, destination, audience, kind, op, records, created_at, "
    "attempts, first_attempt_at, next_attempt_at, last_error) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, 0, NULL, %s, NULL)"
)

# Identifiers of records planned without any (none known then), read at claim time.
_IDENTIFIERS = """
    SELECT f.record_id, jsonb_object_agg(f.kind, f.value)
    FROM (
        SELECT DISTINCT ON (t.{id_col}, x.kind) t.{id_col} AS record_id, x.kind, x.value
        FROM {table} t
        LEFT JOIN profile_aliases a ON a.profile_id = t.profile_id
        JOIN identities x ON x.profile_id = coalesce(a.canonical_id, t.profile_id)
        WHERE t.{id_col} = ANY(%s::bigint[]) AND t.identifiers IS NULL
        ORDER BY t.{id_col}, x.kind, x.first_seen, x.value
    ) f
    GROUP BY f.record_id
"""

_CHANGE_ROWS = (
    "SELECT change_id, profile_id, op, holdout, changed_at, identifiers, NULL::jsonb "
    "FROM outbox WHERE change_id = ANY(%s::bigint[]) ORDER BY change_id"
)
_CONVERSION_ROWS = (
    'SELECT conversion_id, profile_id, name, false, "timestamp", identifiers, '
    "jsonb_build_object('message_id', message_id, 'name', name, 'event', event, "
    "'value', value, 'currency', currency, 'properties', properties, 'context', context) "
    "FROM conversion_outbox WHERE conversion_id = ANY(%s::bigint[]) ORDER BY conversion_id"
)

# Changes a new batch may take: waiting, of the destination, of no key with a change in flight
# (a remove never overtakes its add). The keys in flight are few (the batches being delivered)
# and passed as an array: a hashed lookup per row, whatever the table statistics say just after
# a large plan. Rows a plan is rewriting are locked, and skipped.
_CLAIMABLE = """FROM outbox o
    WHERE o.destination = %(destination)s AND o.batch_id IS NULL
      AND (%(audience)s::text IS NULL OR o.audience = %(audience)s)
      AND NOT (o.audience || chr(31) || o.profile_id = ANY(%(flight)s::text[]))"""

# Conversions a new batch may take: waiting, of the destination, of no profile with a
# conversion in flight (a later one never overtakes an earlier one that failed).
_CLAIMABLE_CONVERSIONS = """FROM conversion_outbox c
    WHERE c.destination = %s AND c.batch_id IS NULL
      AND NOT EXISTS (SELECT 1 FROM conversion_outbox f WHERE f.batch_id IS NOT NULL
                      AND f.destination = c.destination AND f.profile_id = c.profile_id)"""

_FLIGHT = (
    "SELECT audience || chr(31) || profile_id FROM outbox "
    "WHERE batch_id IS NOT NULL AND destination = %s"
)

ANALYZE_AFTER = 5_000
"""A plan queuing this many changes refreshes the outbox's statistics before it commits, so
the next plan (maybe seconds later) is not planned for an empty table."""

_NUMBER = r"^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]{1,3})?\s*$"
"""A value property that reads as a number (anything else is no value, as TRY_CAST gives)."""

# Conversions not in the ledger yet, read from the events written by transactions at or above
# `written_from` (NULL: every event); the cursors of the routes then move to this statement's
# snapshot xmin. Transactions at or above it may be read again next time: the ledger skips them.
_CONVERSIONS_LOCK = "conversions:"
_PLAN_CONVERSIONS = """
WITH rules AS (
    SELECT * FROM unnest(%(destination)s::text[], %(event)s::text[], %(name)s::text[],
                         %(value)s::text[], %(currency)s::text[])
        AS r(destination, event, name, value_property, currency)),
matched AS (
    SELECT r.destination, e.message_id, r.name, e.event, e."timestamp",
           coalesce(a.canonical_id, e.profile_id) AS profile_id,
           e.properties #>> string_to_array(r.value_property, '.') AS value_text,
           coalesce(e.properties ->> 'currency', r.currency) AS currency,
           e.properties, e.context
    FROM events e JOIN rules r ON e.type = 'track' AND e.event_key = r.event
    LEFT JOIN profile_aliases a ON a.profile_id = e.profile_id
    WHERE NOT EXISTS (SELECT 1 FROM conversion_ledger l
                      WHERE l.destination = r.destination AND l.message_id = e.message_id)
      {written}),
cursors AS (
    INSERT INTO conversion_cursors (destination, event, planned_below)
    SELECT DISTINCT destination, event, pg_snapshot_xmin(pg_current_snapshot()) FROM rules
    ON CONFLICT (destination, event) DO UPDATE SET planned_below = excluded.planned_below),
queued AS (
    INSERT INTO conversion_outbox (conversion_id, destination, message_id, name, event,
        "timestamp", profile_id, value, currency, properties, context, planned_at, batch_id,
        identifiers)
    SELECT nextval('conversion_ids'), destination, message_id, name, event, "timestamp",
           profile_id,
           CASE WHEN value_text ~ %(number)s THEN value_text::double precision END,
           upper(currency), properties, context, %(now)s::timestamptz, NULL, NULL
    FROM matched
    ORDER BY "timestamp", destination, message_id
    RETURNING destination, message_id, conversion_id),
ledger AS (
    INSERT INTO conversion_ledger (destination, message_id, conversion_id)
    SELECT destination, message_id, conversion_id FROM queued
    RETURNING 1)
SELECT count(*) FROM ledger
"""
_WRITTEN_FROM = "AND e.written_by >= %(written_from)s::xid8"


def _record(row: Sequence[Any], found: Mapping[int, Any]) -> OutboxRecord:
    record_id, profile_id, op, holdout, at, fixed, conversion = row
    identifiers = fixed if fixed is not None else found.get(int(record_id), {})
    return OutboxRecord(
        int(record_id),
        str(profile_id),
        str(op),
        bool(holdout),
        at,
        dict(identifiers or {}),
        dict(conversion or {}),
    )


def _json(value: Mapping[str, Any]) -> str:
    return orjson.dumps(dict(value)).decode()


class PostgresOutbox(PgView, OutboxStore):
    """The sync state in Postgres; any number of delivery workers claim from it at once.

    Conversions are planned from the events written since the last planning: each event
    records the transaction that wrote it, and each (destination, event) the snapshot xmin its
    last planning saw (`conversion_cursors`), shared by every process. A retry of dead
    conversions clears its destinations' cursors; each process also reads the whole log on
    its first planning and every ten minutes after (`whole_log_due`).
    """

    def __init__(self, db: PgConnections) -> None:
        super().__init__(db)
        self._full_at: datetime | None = None

    def plan(self, routes: Sequence[Route], now: datetime) -> PlanCounts:
        with self._db.transaction() as cur:
            return plan_changes(cur, routes, now)

    def plan_conversions(self, routes: Sequence[ConversionRoute], now: datetime) -> PlanCounts:
        if not routes:
            return PlanCounts()
        with self._db.transaction() as cur:
            # Two processes planning at once: the second waits, then sees the first's ledger.
            advisory_lock(cur, *(_CONVERSIONS_LOCK + r.destination for r in routes))
            # Read from the lowest cursor of the routes; a route never planned reads everything.
            cur.execute(
                "SELECT min(c.planned_below), bool_and(c.planned_below IS NOT NULL) "
                "FROM unnest(%s::text[], %s::text[]) r(destination, event) "
                "LEFT JOIN conversion_cursors c USING (destination, event)",
                ([r.destination for r in routes], [r.event for r in routes]),
            )
            lowest, all_planned = cur.fetchone() or (None, False)
            full = whole_log_due(self._full_at, now)
            written_from = None if full or not all_planned else lowest
            sql = _PLAN_CONVERSIONS.format(written="" if written_from is None else _WRITTEN_FROM)
            cur.execute(
                sql.encode(),
                {
                    "destination": [r.destination for r in routes],
                    "event": [r.event for r in routes],
                    "name": [r.name for r in routes],
                    "value": [r.value_property for r in routes],
                    "currency": [r.currency for r in routes],
                    "number": _NUMBER,
                    "now": now,
                    "written_from": written_from,
                },
            )
            row = cur.fetchone()
        if full:
            self._full_at = now
        return PlanCounts(conversions=int(row[0]) if row else 0)

    def claim(
        self,
        destination: str,
        kind: str,
        max_records: int,
        now: datetime,
        audience: str | None = None,
    ) -> ClaimedBatch | None:
        claimed: ClaimedBatch | None = None
        try:
            with self._db.transaction() as cur:
                advisory_lock(cur, "claim:" + destination)
                if self._held(cur, destination, now):
                    return None  # the destination said when (Retry-After) or is paused: wait
                claimed = self._due(cur, destination, kind, now, audience)
                if claimed is not None:
                    return claimed
                if kind == CHANGES:
                    claimed = self._claim_changes(cur, destination, max_records, now, audience)
                else:
                    claimed = self._claim_conversions(cur, destination, max_records, now)
                return claimed
        except BaseException:
            if claimed is not None:
                self._release(claimed.batch_id)
            raise

    def _hold(self, cur: psycopg.Cursor[Any], batch_id: str) -> bool:
        """Take the session lock of a batch; False when another worker delivers it now.

        A connection that holds it already keeps one hold (never stacks a second one that a
        single release would leave behind).
        """
        cur.execute(_HOLD, {"key": _held_key(batch_id)})
        row = cur.fetchone()
        return bool(row and row[0])

    def _release(self, batch_id: str) -> None:
        """Let other workers take the batch again (after its new state is committed)."""
        self._db.query(_UNLOCK, (_held_key(batch_id),))

    def _due(
        self,
        cur: psycopg.Cursor[Any],
        destination: str,
        kind: str,
        now: datetime,
        audience: str | None,
    ) -> ClaimedBatch | None:
        """The oldest batch whose retry time has come and that no live worker is delivering."""
        due = "next_attempt_at <= %(now)s"
        cur.execute(
            f"SELECT batch_id FROM sync_batches WHERE destination = %(destination)s "
            f"AND kind = %(kind)s AND {due} "
            "AND (%(audience)s::text IS NULL OR audience = %(audience)s) "
            "ORDER BY created_at, batch_id",
            {"destination": destination, "kind": kind, "now": now, "audience": audience},
        )
        for (batch_id,) in cur.fetchall():
            if not self._hold(cur, str(batch_id)):
                continue
            # Resolved or deferred by its worker between the list and the lock?
            cur.execute(
                f"SELECT 1 FROM sync_batches WHERE batch_id = %(batch)s AND {due}",
                {"batch": batch_id, "now": now},
            )
            if cur.fetchone() is not None:
                return self._load(cur, str(batch_id))
            cur.execute(_UNLOCK, (_held_key(batch_id),))
        return None

    def _held(self, cur: psycopg.Cursor[Any], destination: str, now: datetime) -> bool:
        """Whether a failed batch holding the whole destination waits for its retry time."""
        cur.execute(
            "SELECT EXISTS (SELECT 1 FROM sync_batches WHERE destination = %s AND attempts > 0 "
            "AND next_attempt_at > %s AND holds_destination)",
            (destination, now),
        )
        row = cur.fetchone()
        return bool(row and row[0])

    def _claimable(
        self, cur: psycopg.Cursor[Any], destination: str, audience: str | None
    ) -> dict[str, Any]:
        """The parameters of `_CLAIMABLE`: the destination, audience and keys in flight."""
        cur.execute(_FLIGHT, (destination,))
        flight = [str(row[0]) for row in cur.fetchall()]
        return {"destination": destination, "audience": audience, "flight": flight}

    def _claim_changes(
        self,
        cur: psycopg.Cursor[Any],
        destination: str,
        max_records: int,
        now: datetime,
        audience: str | None,
    ) -> ClaimedBatch | None:
        """The oldest claimable change picks audience and operation; take its kin, oldest first."""
        params = self._claimable(cur, destination, audience)
        cur.execute(
            f"SELECT o.audience, o.op {_CLAIMABLE} ORDER BY o.change_id LIMIT 1 "
            "FOR UPDATE OF o SKIP LOCKED",
            params,
        )
        head = cur.fetchone()
        if head is None:
            return None
        audience_, op = str(head[0]), str(head[1])
        cur.execute(
            "SELECT o.change_id, o.profile_id, o.op, o.holdout, o.changed_at, o.identifiers, "
            f"NULL::jsonb {_CLAIMABLE} AND o.audience = %(head_audience)s AND o.op = %(op)s "
            "ORDER BY o.change_id LIMIT %(limit)s FOR UPDATE OF o SKIP LOCKED",
            {**params, "head_audience": audience_, "op": op, "limit": max_records},
        )
        records = tuple(_record(row, {}) for row in cur.fetchall())
        if not records:
            return None
        ids = [r.record_id for r in records]
        batch_id = stable_batch_id(CHANGES, destination, ids)
        cur.execute(
            "UPDATE outbox SET batch_id = %s WHERE change_id = ANY(%s::bigint[])", (batch_id, ids)
        )
        return self._new_batch(cur, destination, CHANGES, audience_, op, batch_id, records, now)

    def _claim_conversions(
        self, cur: psycopg.Cursor[Any], destination: str, max_records: int, now: datetime
    ) -> ClaimedBatch | None:
        cur.execute(
            f"SELECT c.conversion_id {_CLAIMABLE_CONVERSIONS} ORDER BY c.conversion_id "
            "LIMIT %s FOR UPDATE OF c SKIP LOCKED",
            (destination, max_records),
        )
        ids = [int(row[0]) for row in cur.fetchall()]
        if not ids:
            return None
        records = self._records(cur, CONVERSIONS, ids)
        batch_id = stable_batch_id(CONVERSIONS, destination, ids)
        cur.execute(
            "UPDATE conversion_outbox c SET batch_id = %s, identifiers = f.identifiers::jsonb "
            "FROM unnest(%s::bigint[], %s::text[]) AS f(record_id, identifiers) "
            "WHERE c.conversion_id = f.record_id",
            (batch_id, ids, [_json(r.identifiers) for r in records]),
        )
        return self._new_batch(cur, destination, CONVERSIONS, None, None, batch_id, records, now)

    def _new_batch(
        self,
        cur: psycopg.Cursor[Any],
        destination: str,
        kind: str,
        audience: str | None,
        op: str | None,
        batch_id: str,
        records: tuple[OutboxRecord, ...],
        now: datetime,
    ) -> ClaimedBatch:
        """Record a new batch, held by this worker until it settles."""
        cur.execute(_NEW_BATCH, (batch_id, destination, audience, kind, op, len(records), now, now))
        self._hold(cur, batch_id)
        return ClaimedBatch(batch_id, destination, audience, kind, op, 0, None, records)

    def _records(
        self, cur: psycopg.Cursor[Any], kind: str, ids: Sequence[int]
    ) -> tuple[OutboxRecord, ...]:
        """Records of `ids` with their identifiers (fixed when planned; looked up if missing)."""
        cur.execute(_CHANGE_ROWS if kind == CHANGES else _CONVERSION_ROWS, (list(ids),))
        rows = cur.fetchall()
        found: dict[int, Any] = {}
        if any(row[5] is None for row in rows):
            table, id_col = record_table(kind)
            cur.execute(
                _IDENTIFIERS.format(table=table, id_col=id_col),
                (list(ids),),
            )
            found = {int(r): j for r, j in cur.fetchall()}
        return tuple(_record(row, found) for row in rows)

    def _load(self, cur: psycopg.Cursor[Any], batch_id: str) -> ClaimedBatch:
        cur.execute(
            "SELECT destination, audience, kind, op, attempts, first_attempt_at, "
            "backoff_attempts FROM sync_batches WHERE batch_id = %s",
            (batch_id,),
        )
        row = cur.fetchone()
        assert row is not None
        destination, audience, kind, op, attempts, first, backoff = row
        table, id_col = record_table(kind)
        cur.execute(
            f"SELECT {id_col} FROM {table} WHERE batch_id = %s ORDER BY {id_col}",
            (batch_id,),
        )
        ids = [int(r[0]) for r in cur.fetchall()]
        records = self._records(cur, kind, ids)
        return ClaimedBatch(
            batch_id,
            destination,
            audience,
            kind,
            op,
            int(attempts),
            first,
            records,
            int(backoff or 0),
        )

    def peek(
        self, destination: str, kind: str, max_records: int, audience: str | None = None
    ) -> list[ClaimedBatch]:
        with self._db.transaction() as cur:
            batches: list[ClaimedBatch] = []
            for audience_, op, ids in self._form(cur, destination, kind, max_records, audience):
                records = self._records(cur, kind, ids)
                batch_id = "dry-" + stable_batch_id(kind, destination, ids)
                batches.append(
                    ClaimedBatch(batch_id, destination, audience_, kind, op, 0, None, records)
                )
            return batches

    def _form(
        self,
        cur: psycopg.Cursor[Any],
        destination: str,
        kind: str,
        max_records: int,
        audience: str | None,
    ) -> list[tuple[str | None, str | None, list[int]]]:
        """Group claimable records into batches: (audience, op, ids), oldest first."""
        if kind == CONVERSIONS:
            cur.execute(
                f"SELECT c.conversion_id {_CLAIMABLE_CONVERSIONS} ORDER BY c.conversion_id",
                (destination,),
            )
            ids = [int(r[0]) for r in cur.fetchall()]
            return [(None, None, ids[i : i + max_records]) for i in range(0, len(ids), max_records)]
        cur.execute(
            f"SELECT o.audience, o.op, o.change_id {_CLAIMABLE} ORDER BY o.change_id",
            self._claimable(cur, destination, audience),
        )
        groups: dict[tuple[str, str], list[int]] = {}
        for aud, op, change_id in cur.fetchall():
            groups.setdefault((str(aud), str(op)), []).append(int(change_id))
        formed: list[tuple[str | None, str | None, list[int]]] = []
        for (aud, op), ids in sorted(groups.items(), key=lambda item: item[1][0]):
            formed += [(aud, op, ids[i : i + max_records]) for i in range(0, len(ids), max_records)]
        return formed

    @contextmanager
    def _settling(self, batch: ClaimedBatch) -> Iterator[psycopg.Cursor[Any] | None]:
        """A transaction over a held batch, its hold released once committed (or failed).

        Yields None when the batch is no longer there (another worker settled it after this
        one's hold lapsed with its connection): nothing is recorded twice.
        """
        try:
            with self._db.transaction() as cur:
                cur.execute(
                    "SELECT 1 FROM sync_batches WHERE batch_id = %s FOR UPDATE",
                    (batch.batch_id,),
                )
                yield cur if cur.fetchone() is not None else None
        finally:
            self._release(batch.batch_id)

    def resolve(self, batch: ClaimedBatch, resolution: Resolution, now: datetime) -> None:
        with self._settling(batch) as cur:
            if cur is None:
                return
            if batch.kind == CHANGES:
                self._resolve_changes(cur, batch, resolution, now)
            else:
                self._resolve_conversions(cur, batch, resolution, now)
            rejected = sum(1 for r in batch.records if r.record_id in resolution.rejected)
            retried = sum(1 for r in batch.records if r.record_id in resolution.retry)
            cur.execute(
                "INSERT INTO batch_results VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (batch_id) DO UPDATE SET records = excluded.records, "
                "acknowledged = excluded.acknowledged, rejected = excluded.rejected, "
                "attempts = excluded.attempts, resolved_at = excluded.resolved_at, "
                "stats = excluded.stats",
                (
                    batch.batch_id,
                    batch.destination,
                    batch.audience,
                    batch.kind,
                    batch.op,
                    len(batch.records),
                    len(batch.records) - rejected - retried,
                    rejected,
                    batch.attempts + 1,
                    now,
                    _json(resolution.stats),
                ),
            )
            cur.execute("DELETE FROM sync_batches WHERE batch_id = %s", (batch.batch_id,))
            if resolution.recovered_by is not None:
                _restart_backoff(cur, batch.destination, resolution.recovered_by)
            if resolution.retry:
                self._split_retries(cur, batch, resolution, now)

    def _split_retries(
        self,
        cur: psycopg.Cursor[Any],
        batch: ClaimedBatch,
        resolution: Resolution,
        now: datetime,
    ) -> None:
        """Records a destination asked to retry become a batch of their own, tried again at
        `retry_at`; the destination's other work goes on meanwhile."""
        table, id_col = record_table(batch.kind)
        cur.execute(
            f"SELECT {id_col} FROM {table} WHERE batch_id = %s ORDER BY {id_col}",
            (batch.batch_id,),
        )
        ids = [int(r[0]) for r in cur.fetchall()]
        if not ids:
            return
        retry_id = stable_batch_id(batch.kind, batch.destination, ids)
        cur.execute(
            f"UPDATE {table} SET batch_id = %s WHERE batch_id = %s",
            (retry_id, batch.batch_id),
        )
        cur.execute(
            "INSERT INTO sync_batches (batch_id, destination, audience, kind, op, records, "
            "created_at, attempts, first_attempt_at, next_attempt_at, last_error, "
            "backoff_attempts, holds_destination) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, false)",
            retry_batch_row(batch, resolution, retry_id, len(ids), now),
        )

    def _log(
        self,
        cur: psycopg.Cursor[Any],
        batch: ClaimedBatch,
        resolution: Resolution,
        now: datetime,
    ) -> list[OutboxRecord]:
        """Write delivery_log rows for resolved records; return those resolved."""
        done = [r for r in batch.records if r.record_id not in resolution.retry]
        cur.execute(
            "INSERT INTO delivery_log (record_id, kind, batch_id, destination, audience, "
            "profile_id, op, outcome, reason, attempts, resolved_at) "
            "SELECT record_id, %s, %s, %s, %s, profile_id, op, outcome, reason, %s, %s "
            "FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[]) "
            "AS l(record_id, profile_id, op, outcome, reason)",
            (
                batch.kind,
                batch.batch_id,
                batch.destination,
                batch.audience,
                batch.attempts + 1,
                now,
                [r.record_id for r in done],
                [r.profile_id for r in done],
                [r.op for r in done],
                [resolution.outcome(r.record_id) for r in done],
                [resolution.rejected.get(r.record_id) for r in done],
            ),
        )
        return done

    def _resolve_changes(
        self,
        cur: psycopg.Cursor[Any],
        batch: ClaimedBatch,
        resolution: Resolution,
        now: datetime,
    ) -> None:
        retry = list(resolution.retry)
        if retry:
            self._release_retries(cur, batch, retry)
        done = self._log(cur, batch, resolution, now)
        keep = [r for r in done if r.op == "add"]
        dry_removes = resolution.dry_run and batch.op == "remove"
        if dry_removes:  # the destination still holds its members: a dry run wrote the removal
            cur.execute(
                f"UPDATE destination_state SET status = '{DRY_REMOVED}', batch_id = %s, "
                "updated_at = %s WHERE destination = %s AND audience = %s "
                f"AND status = '{MEMBER}' AND profile_id = ANY(%s::text[])",
                (
                    batch.batch_id,
                    now,
                    batch.destination,
                    batch.audience,
                    [r.profile_id for r in done],
                ),
                prepare=False,
            )
        cur.execute(
            "DELETE FROM destination_state WHERE destination = %s AND audience = %s "
            f"AND profile_id = ANY(%s::text[]) AND NOT (%s AND status = '{DRY_REMOVED}')",
            (batch.destination, batch.audience, [r.profile_id for r in done], dry_removes),
            prepare=False,  # a generic plan would test each row against the array in turn
        )
        cur.execute(
            "INSERT INTO destination_state (destination, audience, profile_id, status, "
            "holdout, identifiers, reason, change_id, batch_id, updated_at) "
            "SELECT %s, %s, profile_id, status, holdout, identifiers::jsonb, reason, change_id, "
            "%s, %s FROM unnest(%s::text[], %s::text[], %s::bool[], %s::text[], %s::text[], "
            "%s::bigint[]) AS s(profile_id, status, holdout, identifiers, reason, change_id)",
            (
                batch.destination,
                batch.audience,
                batch.batch_id,
                now,
                [r.profile_id for r in keep],
                [resolution.state(r.record_id) for r in keep],
                [r.holdout for r in keep],
                [_json(r.identifiers) for r in keep],
                [resolution.rejected.get(r.record_id) for r in keep],
                [r.record_id for r in keep],
            ),
        )
        cur.execute(
            "DELETE FROM outbox WHERE batch_id = %s AND NOT change_id = ANY(%s::bigint[])",
            (batch.batch_id, retry),
        )

    def _release_retries(
        self, cur: psycopg.Cursor[Any], batch: ClaimedBatch, retry: Sequence[int]
    ) -> None:
        """A record to retry gives way to a newer waiting change of the same profile.

        The waiting rows are locked first (in id order, as a plan locks them), so a plan
        deciding about them finishes before, or starts after, this decision.
        """
        cur.execute(
            f"""SELECT w.change_id FROM outbox w JOIN outbox o ON {key_match("w", "o")}
            WHERE w.batch_id IS NULL AND o.batch_id = %s AND o.change_id = ANY(%s::bigint[])
            ORDER BY w.change_id FOR UPDATE OF w""",
            (batch.batch_id, list(retry)),
        )
        cur.execute(
            f"""DELETE FROM outbox o WHERE o.batch_id = %s AND o.change_id = ANY(%s::bigint[])
            AND EXISTS (SELECT 1 FROM outbox w
                        WHERE w.batch_id IS NULL AND {key_match("w", "o")})""",
            (batch.batch_id, list(retry)),
        )

    def _resolve_conversions(
        self,
        cur: psycopg.Cursor[Any],
        batch: ClaimedBatch,
        resolution: Resolution,
        now: datetime,
    ) -> None:
        done = self._log(cur, batch, resolution, now)
        rejected = [r for r in done if r.record_id in resolution.rejected]
        self._dead(cur, batch, rejected, resolution.rejected, now)
        cur.execute(
            "DELETE FROM conversion_outbox WHERE batch_id = %s "
            "AND NOT conversion_id = ANY(%s::bigint[])",
            (batch.batch_id, list(resolution.retry)),
        )

    def _dead(
        self,
        cur: psycopg.Cursor[Any],
        batch: ClaimedBatch,
        records: Sequence[OutboxRecord],
        reasons: Mapping[int, str],
        now: datetime,
        default_reason: str = "",
    ) -> None:
        if not records:
            return
        cur.execute(
            "INSERT INTO dead_letters (record_id, kind, destination, audience, profile_id, op, "
            "reason, attempts, first_attempt_at, dead_at, batch_id, retried_at) "
            "SELECT record_id, %s, %s, %s, profile_id, op, reason, %s, %s, %s, %s, NULL "
            "FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[]) "
            "AS d(record_id, profile_id, op, reason)",
            (
                batch.kind,
                batch.destination,
                batch.audience,
                batch.attempts + 1,
                batch.first_attempt_at or now,
                now,
                batch.batch_id,
                [r.record_id for r in records],
                [r.profile_id for r in records],
                [r.op for r in records],
                [reasons.get(r.record_id, default_reason) for r in records],
            ),
        )

    def defer(
        self,
        batch: ClaimedBatch,
        error: str,
        next_attempt: datetime,
        now: datetime,
        *,
        holds_destination: bool = True,
        backoff_attempts: int | None = None,
        recovered_by: datetime | None = None,
    ) -> None:
        with self._settling(batch) as cur:
            if cur is None:
                return
            cur.execute(
                "UPDATE sync_batches SET attempts = attempts + 1, "
                "first_attempt_at = coalesce(first_attempt_at, %s), "
                "next_attempt_at = %s, last_error = %s, holds_destination = %s, "
                "backoff_attempts = coalesce(%s::integer, backoff_attempts + 1) "
                "WHERE batch_id = %s",
                (now, next_attempt, error, holds_destination, backoff_attempts, batch.batch_id),
            )
            if recovered_by is not None:
                _restart_backoff(cur, batch.destination, recovered_by)

    def dead_letter(self, batch: ClaimedBatch, reason: str, now: datetime) -> None:
        with self._settling(batch) as cur:
            if cur is None:
                return
            self._dead(cur, batch, batch.records, {}, now, reason)
            table, _ = record_table(batch.kind)
            cur.execute(
                f"DELETE FROM {table} WHERE batch_id = %s",
                (batch.batch_id,),
            )
            cur.execute("DELETE FROM sync_batches WHERE batch_id = %s", (batch.batch_id,))

    def retry_dead(self, destination: str | None, audience: str | None, now: datetime) -> int:
        where = (
            "retried_at IS NULL "
            "AND (%(destination)s::text IS NULL OR destination = %(destination)s) "
            "AND (%(audience)s::text IS NULL OR audience = %(audience)s)"
        )
        params: dict[str, Any] = {"destination": destination, "audience": audience, "now": now}
        with self._db.transaction() as cur:
            # Conversions come back through the ledger: forget them there to queue them again,
            # and their destinations' cursors, so the next planning reads every event again.
            # Under the planners' locks: a planning in flight must not restore a cursor.
            cur.execute(
                "SELECT DISTINCT destination FROM dead_letters "
                f"WHERE kind = 'conversions' AND {where}",
                params,
            )
            forgotten = [str(d) for (d,) in cur.fetchall()]
            advisory_lock(cur, *(_CONVERSIONS_LOCK + d for d in forgotten))
            cur.execute(
                "DELETE FROM conversion_cursors WHERE destination = ANY(%(forgotten)s::text[])",
                {"forgotten": forgotten},
            )
            cur.execute(
                "DELETE FROM conversion_ledger l USING dead_letters d "
                "WHERE d.kind = 'conversions' AND d.retried_at IS NULL "
                "AND (%(destination)s::text IS NULL OR d.destination = %(destination)s) "
                "AND (%(audience)s::text IS NULL OR d.audience = %(audience)s) "
                "AND l.destination = d.destination AND l.conversion_id = d.record_id",
                params,
            )
            cur.execute(
                f"UPDATE dead_letters SET retried_at = %(now)s WHERE {where}",
                params,
            )
            return cur.rowcount

    def status(
        self,
        routes: Sequence[Route],
        conversion_destinations: Sequence[str],
        accepts: Mapping[tuple[str, str], Sequence[str]],
    ) -> list[RouteStatus]:
        found: list[RouteStatus] = []
        with self._db.transaction() as cur:
            if routes:
                cur.execute(
                    _STATUS_SQL,
                    {
                        **_route_params(routes),
                        "accept_destinations": [d for (d, _), ks in accepts.items() for _ in ks],
                        "accept_audiences": [a for (_, a), ks in accepts.items() for _ in ks],
                        "accept_kinds": [k for ks in accepts.values() for k in ks],
                    },
                )
                found += [RouteStatus.from_row(row) for row in cur.fetchall()]
            for destination in conversion_destinations:
                cur.execute(_CONVERSION_STATUS_SQL, {"destination": destination})
                row = cur.fetchone()
                assert row is not None
                found.append(RouteStatus.from_row((destination, None, *row)))
        return found

    def log_run(self, run: SyncRunRecord) -> int:
        with self._db.transaction() as cur:
            cur.execute(
                "INSERT INTO sync_runs VALUES (nextval('sync_run_ids'), %s, %s, %s, %s, %s, %s, "
                "%s, %s, %s, %s, %s) RETURNING run_id",
                (
                    run.started_at,
                    run.duration_ms,
                    run.dry_run,
                    run.destination,
                    run.audience,
                    run.planned,
                    run.batches,
                    run.acknowledged,
                    run.rejected,
                    run.retrying,
                    run.dead_lettered,
                ),
            )
            row = cur.fetchone()
        assert row is not None
        return int(row[0])

    def runs(self, limit: int = 10) -> list[SyncRunRecord]:
        rows = self._db.query(
            "SELECT started_at, duration_ms, dry_run, destination, audience, planned, "
            "batches, acknowledged, rejected, retrying, dead_lettered FROM sync_runs "
            "ORDER BY run_id DESC LIMIT %s",
            (limit,),
        )
        return [SyncRunRecord(*row) for row in rows]

    def acknowledged(self, destination: str, audience: str) -> dict[str, bool]:
        rows = self._db.query(
            "SELECT profile_id, holdout FROM destination_state WHERE destination = %s "
            "AND audience = %s AND status = 'member'",
            (destination, audience),
        )
        return {str(p): bool(h) for p, h in rows}


_STATUS_SQL = f"""
WITH {_ROUTES},
accepts AS (
    SELECT * FROM unnest(%(accept_destinations)s::text[], %(accept_audiences)s::text[],
                         %(accept_kinds)s::text[])
        AS k(destination, audience, kind)),
desired AS (
    SELECT r.destination, r.audience, m.profile_id
    FROM routes r JOIN memberships m ON m.kind = 'audience' AND m.name = r.audience
    WHERE m.exited_at IS NULL AND (r.include_holdout OR NOT m.holdout)),
matchable AS (
    SELECT d.destination, d.audience, count(DISTINCT d.profile_id) AS n
    FROM desired d LEFT JOIN profile_aliases a ON a.profile_id = d.profile_id
    JOIN identities x ON x.profile_id = coalesce(a.canonical_id, d.profile_id)
    JOIN accepts k ON k.destination = d.destination AND k.audience = d.audience
        AND k.kind = x.kind
    WHERE NOT EXISTS (SELECT 1 FROM destination_state s
                      WHERE s.status = 'rejected' AND {key_match("s", "d")})
    GROUP BY d.destination, d.audience),
batches AS (
    SELECT destination, audience, sum(records) FILTER (WHERE attempts > 0) AS retrying,
           min(next_attempt_at) AS next_attempt,
           (array_agg(last_error ORDER BY next_attempt_at DESC)
               FILTER (WHERE last_error IS NOT NULL))[1] AS last_error
    FROM sync_batches WHERE kind = 'changes' GROUP BY destination, audience)
""" + STATUS_SELECT.format(routes="routes")

_CONVERSION_STATUS_SQL = """
SELECT
    (SELECT count(*) FROM conversion_ledger WHERE destination = %(destination)s),
    (SELECT count(*) FROM delivery_log WHERE kind = 'conversions'
        AND destination = %(destination)s AND outcome = 'acknowledged'),
    (SELECT count(*) FROM conversion_outbox WHERE destination = %(destination)s),
    (SELECT coalesce(sum(records), 0) FROM sync_batches WHERE kind = 'conversions'
        AND destination = %(destination)s AND attempts > 0),
    (SELECT count(*) FROM delivery_log WHERE kind = 'conversions'
        AND destination = %(destination)s AND outcome = 'rejected'),
    (SELECT count(*) FROM dead_letters WHERE kind = 'conversions'
        AND destination = %(destination)s AND retried_at IS NULL AND batch_id NOT IN (
            SELECT batch_id FROM delivery_log WHERE kind = 'conversions'
            AND destination = %(destination)s AND outcome = 'rejected')),
    0,
    (SELECT count(*) FROM delivery_log WHERE kind = 'conversions'
        AND destination = %(destination)s AND outcome = 'dry_run'),
    (SELECT max(resolved_at) FROM delivery_log WHERE kind = 'conversions'
        AND destination = %(destination)s),
    NULL::timestamptz, NULL::text
"""


def _restart_backoff(cur: psycopg.Cursor[Any], destination: str, by: datetime) -> None:
    """The destination answered, so it is up: its batches backing off start their backoff over
    and are tried again by `by` (those a server's word or a pause holds keep theirs).

    Rows another worker is settling right now are skipped, not waited for: two settlements
    restarting each other's batches would otherwise wait on each other.
    """
    cur.execute(
        "UPDATE sync_batches SET backoff_attempts = 0, "
        "next_attempt_at = least(next_attempt_at, %(by)s) "
        "WHERE batch_id IN (SELECT batch_id FROM sync_batches WHERE destination = %(destination)s "
        "AND attempts > 0 AND NOT holds_destination FOR UPDATE SKIP LOCKED)",
        {"by": by, "destination": destination},
    )
