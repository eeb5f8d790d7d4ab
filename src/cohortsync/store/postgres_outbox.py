"""The outbox on Postgres: set-based planning, claims with SKIP LOCKED, resolutions.

Several processes plan and deliver at once. Planning one profile takes that profile's advisory
lock (and a shared lock a whole-project plan takes exclusively), then locks the waiting rows it
may rewrite, so a claim never moves a row a plan is deciding about. Claims of one destination
are serialised by a transaction-scoped advisory lock; a claimed batch is held by the claiming
connection's session lock until it is resolved, deferred or dead-lettered, so no other worker is
handed it meanwhile, and a worker that dies releases it at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg

from cohortsync.store.outbox import (
    PlanCounts,
    Route,
    key_match,
)
from cohortsync.store.postgres_shared import advisory_lock, lock_key

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


ANALYZE_AFTER = 5_000
"""A plan queuing this many changes refreshes the outbox's statistics before it commits, so
the next plan (maybe seconds later) is not planned for an empty table."""
