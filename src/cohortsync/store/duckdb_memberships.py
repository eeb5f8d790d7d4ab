"""Membership history on DuckDB: the set-based diff of computed members against current ones."""

from __future__ import annotations

from datetime import datetime

import duckdb

from cohortsync.store.base import MembershipChanges


def next_run_id(con: duckdb.DuckDBPyConnection) -> int:
    """The id of the next compute run."""
    rows = con.execute("SELECT coalesce(max(run_id), 0) + 1 FROM compute_runs").fetchall()
    return int(rows[0][0]) if rows else 1


def diff_memberships(
    con: duckdb.DuckDBPyConnection,
    at: datetime,
    run_id: int | None = None,
    within: str = "",
) -> MembershipChanges:
    """Exit absent members, enter new ones, update holdout flags; count per name.

    `_computed` (kind, name, profile_id, holdout) holds who should be a member. `within` is
    an SQL condition over `memberships` limiting which current members may exit (the real-time
    path diffs a few profiles and names; a full compute diffs everything). Run id 0 marks an
    entry recorded by real-time evaluation.
    """
    run = next_run_id(con) if run_id is None else run_id
    key = "kind, name, profile_id"
    limit = f" AND ({within})" if within else ""
    current = f"SELECT {key} FROM memberships WHERE exited_at IS NULL{limit}"
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _exits AS SELECT {key} FROM ({current}) "
        f"ANTI JOIN _computed USING ({key})"
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
        [at, run],
    )

    def counts(table: str) -> dict[tuple[str, str], int]:
        rows = con.execute(f"SELECT kind, name, count(*) FROM {table} GROUP BY ALL")
        return {(str(k), str(n)): int(c) for k, n, c in rows.fetchall()}

    entered, exited = counts("_enters"), counts("_exits")
    con.execute("DROP TABLE _exits")
    con.execute("DROP TABLE _enters")
    return MembershipChanges(run, entered, exited)
