"""The outbox on DuckDB: set-based planning, claims, resolutions; every write an Arrow batch."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import duckdb
import pyarrow as pa

from cohortsync.store.duckdb_shared import Registered, first_row
from cohortsync.store.outbox import (
    DRY_REMOVED,
    DRY_RUN,
    KEY,
    PlanCounts,
    Route,
    key_match,
)


def next_ids(con: duckdb.DuckDBPyConnection, name: str, count: int) -> int:
    """Reserve `count` ids of counter `name`; return the first (ids only ever grow)."""
    row = first_row(con.execute("SELECT value FROM counters WHERE name = ?", [name]).fetchall())
    start = (int(row[0]) if row else 0) + 1
    if count:
        con.execute("INSERT OR REPLACE INTO counters VALUES (?, ?)", [name, start + count - 1])
    return start


def _routes_table(routes: Sequence[Route]) -> pa.Table:
    return pa.table(
        {
            "destination": pa.array([r.destination for r in routes], pa.string()),
            "audience": pa.array([r.audience for r in routes], pa.string()),
            "include_holdout": pa.array([r.include_holdout for r in routes], pa.bool_()),
            "dry_run": pa.array([r.dry_run for r in routes], pa.bool_()),
        }
    )


def plan_changes(
    con: duckdb.DuckDBPyConnection,
    routes: Sequence[Route],
    now: datetime,
    profiles: Sequence[str] | None = None,
) -> PlanCounts:
    """Queue what brings each route to its desired state; call inside a transaction.

    With `profiles`, only those profiles are planned (the real-time path, one profile at a time).

    Base state = the in-flight change for a key if any, else what the destination acknowledged.
    Waiting rows that no longer match what is needed are dropped (an enter then exit before
    delivery coalesces to nothing); needed changes without a waiting row are added, removes
    first so a merged profile's old identifiers leave before its survivor's are added.
    """
    if not routes:
        return PlanCounts()
    only = pa.table({"profile_id": pa.array(list(profiles or ()), pa.string())})

    def scoped(alias: str) -> str:
        if profiles is None:
            return ""
        return f" AND {alias}.profile_id IN (SELECT profile_id FROM _profiles)"

    with Registered(con, _routes=_routes_table(routes), _profiles=only):
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE _desired AS
            SELECT r.destination, m.name AS audience, m.profile_id, m.holdout,
                   m.entered_at AS changed_at
            FROM memberships m JOIN _routes r ON r.audience = m.name
            WHERE m.kind = 'audience' AND m.exited_at IS NULL
              AND (r.include_holdout OR NOT m.holdout){scoped("m")};
            CREATE OR REPLACE TEMP TABLE _base AS
            WITH flight AS (
                SELECT o.* FROM outbox o SEMI JOIN _routes r USING (destination, audience)
                WHERE o.batch_id IS NOT NULL{scoped("o")}),
            acked AS (
                SELECT s.* FROM destination_state s
                JOIN _routes r USING (destination, audience)
                WHERE s.status <> CASE WHEN r.dry_run THEN '{DRY_REMOVED}' ELSE '{DRY_RUN}' END
                  {scoped("s")})
            SELECT coalesce(f.destination, s.destination) AS destination,
                   coalesce(f.audience, s.audience) AS audience,
                   coalesce(f.profile_id, s.profile_id) AS profile_id,
                   CASE WHEN f.change_id IS NOT NULL THEN f.op = 'add' ELSE true END AS present,
                   coalesce(f.holdout, s.holdout) AS holdout,
                   f.change_id IS NULL AND s.status = 'rejected' AS rejected
            FROM flight f FULL JOIN acked s ON {key_match("f", "s")};
            CREATE OR REPLACE TEMP TABLE _needed AS
            SELECT * FROM (
                SELECT d.destination, d.audience, d.profile_id, 'add' AS op, d.holdout,
                       d.changed_at
                FROM _desired d LEFT JOIN _base b USING ({KEY})
                WHERE b.profile_id IS NULL OR NOT b.present
                   OR (b.holdout <> d.holdout AND NOT b.rejected)
                UNION ALL
                SELECT b.destination, b.audience, b.profile_id, 'remove', b.holdout,
                       ?::TIMESTAMPTZ
                FROM _base b ANTI JOIN _desired d USING ({KEY})
                WHERE b.present AND NOT b.rejected
            ) n
            WHERE NOT EXISTS (
                SELECT 1 FROM dead_letters x
                WHERE x.kind = 'changes' AND x.retried_at IS NULL AND x.op = n.op
                  AND {key_match("x", "n")});
            """,
            [now],
        )
        con.execute(
            f"""DELETE FROM destination_state s
            WHERE s.status = 'rejected'
              AND EXISTS (SELECT 1 FROM _routes r
                          WHERE r.destination = s.destination AND r.audience = s.audience)
              AND NOT EXISTS (SELECT 1 FROM _desired d WHERE {key_match("d", "s")})
              AND NOT EXISTS (SELECT 1 FROM outbox o WHERE {key_match("o", "s")}){scoped("s")}"""
        )
        con.execute(  # a destination gone live holds nothing a dry run wrote
            f"""DELETE FROM destination_state s
            WHERE s.status = '{DRY_RUN}'
              AND EXISTS (SELECT 1 FROM _routes r WHERE NOT r.dry_run
                          AND r.destination = s.destination AND r.audience = s.audience)
              {scoped("s")}"""
        )
        con.execute(
            f"""DELETE FROM outbox o
            WHERE o.batch_id IS NULL
              AND EXISTS (SELECT 1 FROM _routes r
                          WHERE r.destination = o.destination AND r.audience = o.audience)
              AND NOT EXISTS (SELECT 1 FROM _needed n
                              WHERE {key_match("n", "o")} AND n.op = o.op
                                AND n.holdout = o.holdout){scoped("o")}"""
        )
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE _new AS
            SELECT n.* FROM _needed n
            ANTI JOIN (SELECT {KEY} FROM outbox WHERE batch_id IS NULL) w USING ({KEY})"""
        )
        counts = first_row(
            con.execute(
                "SELECT count(*) FILTER (op = 'add'), count(*) FILTER (op = 'remove') FROM _new"
            ).fetchall()
        )
        adds, removes = (int(counts[0]), int(counts[1])) if counts else (0, 0)
        start = next_ids(con, "change_id", adds + removes)
        con.execute(_PLANNED_IDENTIFIERS)
        con.execute(
            f"""INSERT INTO outbox
            SELECT ? - 1 + row_number() OVER (ORDER BY n.op DESC, n.{KEY.replace(", ", ", n.")}),
                   n.{KEY.replace(", ", ", n.")}, n.op, n.holdout, n.changed_at, ?::TIMESTAMPTZ,
                   NULL,
                   CASE WHEN n.op = 'remove' THEN coalesce(s.identifiers, i.identifiers)
                        ELSE i.identifiers END
            FROM _new n
            LEFT JOIN _new_ids i ON i.profile_id = n.profile_id
            LEFT JOIN destination_state s ON {key_match("s", "n")}""",
            [start, now],
        )
        for table in ("_desired", "_base", "_needed", "_new", "_new_ids"):
            con.execute(f"DROP TABLE {table}")
    return PlanCounts(adds=adds, removes=removes)


# Identifiers are fixed when a change is planned, in one set-based pass over the identity graph:
# a claim then reads them from the outbox row (a remove reuses what the add sent).
_PLANNED_IDENTIFIERS = """
    CREATE OR REPLACE TEMP TABLE _new_ids AS
    WITH owners AS (
        SELECT DISTINCT n.profile_id, coalesce(a.canonical_id, n.profile_id) AS owner
        FROM _new n LEFT JOIN profile_aliases a ON a.profile_id = n.profile_id),
    firsts AS (
        SELECT o.profile_id, x.kind, arg_min(x.value, (x.first_seen, x.value)) AS value
        FROM owners o JOIN identities x ON x.profile_id = o.owner GROUP BY ALL)
    SELECT profile_id, json_group_object(kind, value)::VARCHAR AS identifiers
    FROM firsts GROUP BY profile_id
"""
