"""Membership history on DuckDB: the set-based diff of one compute against current members."""

from __future__ import annotations

from datetime import datetime

import duckdb

from cohortsync.store.base import MembershipChanges


def diff_memberships(con: duckdb.DuckDBPyConnection, at: datetime) -> MembershipChanges:
    """Exit absent members, enter new ones, update holdout flags; count per name."""
    row = con.execute("SELECT coalesce(max(run_id), 0) + 1 FROM compute_runs").fetchone()
    run_id = int(row[0]) if row else 1
    key = "kind, name, profile_id"
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _exits AS SELECT {key} FROM memberships "
        f"ANTI JOIN _computed USING ({key}) WHERE exited_at IS NULL"
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _enters AS SELECT {key}, holdout FROM _computed "
        f"ANTI JOIN (SELECT {key} FROM memberships WHERE exited_at IS NULL) USING ({key})"
    )
    con.execute(
        "UPDATE memberships SET exited_at = ? FROM _exits x "
        "WHERE memberships.exited_at IS NULL AND memberships.kind = x.kind "
        "AND memberships.name = x.name AND memberships.profile_id = x.profile_id",
        [at],
    )
    con.execute(
        "UPDATE memberships SET holdout = c.holdout FROM _computed c "
        "WHERE memberships.exited_at IS NULL AND memberships.kind = c.kind "
        "AND memberships.name = c.name AND memberships.profile_id = c.profile_id "
        "AND memberships.holdout <> c.holdout"
    )
    con.execute(
        f"INSERT INTO memberships SELECT {key}, ?::TIMESTAMPTZ, NULL, holdout, ? FROM _enters",
        [at, run_id],
    )

    def counts(table: str) -> dict[tuple[str, str], int]:
        rows = con.execute(f"SELECT kind, name, count(*) FROM {table} GROUP BY ALL")
        return {(str(k), str(n)): int(c) for k, n, c in rows.fetchall()}

    entered, exited = counts("_enters"), counts("_exits")
    con.execute("DROP TABLE _exits")
    con.execute("DROP TABLE _enters")
    return MembershipChanges(run_id, entered, exited)
