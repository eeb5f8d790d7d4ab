"""Membership history on DuckDB: the set-based diff of computed members against current ones."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import duckdb
import pyarrow as pa

from cohortsync.store.base import HistoryAheadError, MembershipChanges, compute_run_row
from cohortsync.store.duckdb_outbox import plan_changes
from cohortsync.store.duckdb_shared import Registered, Transaction
from cohortsync.store.outbox import Route

_TS = pa.timestamp("us", tz="UTC")


def record_compute(
    con: duckdb.DuckDBPyConnection,
    transaction: Transaction,
    computed: pa.Table,
    at_us: int,
    started: float,
    routes: Sequence[Route],
    scope: Sequence[tuple[str, str]] | None,
) -> MembershipChanges:
    """One compute in one transaction: the diff, the outbox rows it needs, a compute_runs row."""
    at = pa.scalar(at_us, _TS).as_py()
    names = computed.select(["kind", "name"]).group_by(["kind", "name"]).aggregate([])
    kinds = names.column("kind").to_pylist()
    scoped = pa.table(
        {
            "kind": pa.array([k for k, _ in scope or ()], pa.string()),
            "name": pa.array([n for _, n in scope or ()], pa.string()),
        }
    )
    within = "(kind, name) IN (SELECT (kind, name) FROM _scope)" if scope is not None else ""
    with Registered(con, _computed=computed, _scope=scoped), transaction() as tx:
        last = tx.execute("SELECT epoch_us(max(as_of)) FROM compute_runs").fetchall()
        if last and last[0][0] is not None and at_us < int(last[0][0]):
            raise HistoryAheadError
        changes = diff_memberships(tx, at, within=within)
        plan_changes(tx, routes, datetime.now(UTC))
        tx.execute(
            "INSERT INTO compute_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            compute_run_row(changes, at, started, kinds),
        )
    return changes


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
