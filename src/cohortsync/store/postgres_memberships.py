"""Membership history on Postgres: the set-based diff of computed members against current ones.

The same history as the DuckDB store's (`duckdb_memberships.py`): one row per stay, the current
members are the rows not exited. Each statement reports what it changed (`RETURNING`), so the
counts are what was written even when another writer recorded the same entry first.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
import pyarrow as pa

from cohortsync.moments import to_datetime
from cohortsync.store.base import HistoryAheadError, MembershipChanges, compute_run_row
from cohortsync.store.outbox import Route
from cohortsync.store.postgres_shared import PgConnections, advisory_lock, temp_table

REALTIME_RUN = 0
"""The run id of entries recorded by real-time evaluation."""
COMPUTED_COLUMNS = (
    ("kind", "TEXT"),
    ("name", "TEXT"),
    ("profile_id", "TEXT"),
    ("holdout", "BOOLEAN"),
)
"""The layout of `_computed`, the temp table `diff_memberships` reads the members from."""
_KEY_MATCH = (
    "memberships.kind = c.kind AND memberships.name = c.name "
    "AND memberships.profile_id = c.profile_id"
)


def record_compute(
    db: PgConnections,
    computed: pa.Table,
    at_us: int,
    started: float,
    routes: Sequence[Route],
    scope: Sequence[tuple[str, str]] | None,
) -> MembershipChanges:
    """One compute in one transaction: the diff, the outbox rows it needs, a compute_runs row.

    Two processes never record overlapping computes at once: each holds the compute lock.
    """
    at = to_datetime(at_us)
    names = computed.select(["kind", "name"]).group_by(["kind", "name"]).aggregate([])
    kinds = names.column("kind").to_pylist()
    with db.transaction() as cur:
        advisory_lock(cur, "cohortsync:compute")
        cur.execute("SELECT max(as_of) FROM compute_runs")
        row = cur.fetchone()
        if row is not None and row[0] is not None and row[0] > at:
            raise HistoryAheadError
        temp_table(cur, "_computed", COMPUTED_COLUMNS, computed_rows(computed))
        cur.execute("ANALYZE _computed")  # a temp table has no statistics until analysed
        within = ""
        if scope is not None:
            temp_table(cur, "_scope", (("kind", "TEXT"), ("name", "TEXT")), scope)
            within = "(kind, name) IN (SELECT kind, name FROM _scope)"
        changes = diff_memberships(cur, at, within=within)
        if routes:
            from cohortsync.store.postgres_outbox import plan_changes

            plan_changes(cur, routes, datetime.now(UTC))
        cur.execute(
            "INSERT INTO compute_runs VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            compute_run_row(changes, at, started, kinds),
        )
    return changes


def computed_rows(computed: pa.Table) -> Iterator[tuple[Any, ...]]:
    """The rows of a (kind, name, profile_id, holdout) table, for `temp_table`."""
    columns = [computed.column(c).to_pylist() for c, _ in COMPUTED_COLUMNS]
    return zip(*columns, strict=True)


def diff_memberships(
    cur: psycopg.Cursor[Any],
    at: datetime,
    run_id: int | None = None,
    within: str = "",
    params: Sequence[Any] = (),
) -> MembershipChanges:
    """Exit absent members, enter new ones, update holdout flags; count per name.

    The temp table `_computed` (kind, name, profile_id, holdout), made by the caller, holds who
    should be a member. `within` is an SQL condition over `memberships` (its `params` bound in
    order) limiting which current members may exit: the real-time path diffs a few profiles and
    names, a full compute diffs everything. Run id 0 (`REALTIME_RUN`) marks an entry recorded
    by real-time evaluation; None takes the next compute run id.
    """
    if run_id is None:
        cur.execute("SELECT nextval('compute_run_ids')")
        row = cur.fetchone()
        run = int(row[0]) if row else 1
    else:
        run = run_id
    limit = f" AND ({within})" if within else ""
    exited = _counted(
        cur,
        f"UPDATE memberships SET exited_at = %s WHERE exited_at IS NULL{limit} "
        f"AND NOT EXISTS (SELECT 1 FROM _computed c WHERE {_KEY_MATCH}) "
        "RETURNING kind, name",
        (at, *params),
    )
    cur.execute(
        "UPDATE memberships SET holdout = c.holdout FROM _computed c "
        f"WHERE memberships.exited_at IS NULL AND {_KEY_MATCH} "
        "AND memberships.holdout <> c.holdout"
    )
    # Another writer may have entered the same member since this diff began: the partial
    # unique index (one current row per member) keeps one row, and only ours are counted.
    entered = _counted(
        cur,
        "INSERT INTO memberships (kind, name, profile_id, entered_at, exited_at, holdout, run_id) "
        "SELECT c.kind, c.name, c.profile_id, %s, NULL, c.holdout, %s FROM _computed c "
        "WHERE NOT EXISTS (SELECT 1 FROM memberships WHERE memberships.exited_at IS NULL "
        f"AND {_KEY_MATCH}) "
        "ON CONFLICT (kind, name, profile_id) WHERE exited_at IS NULL DO NOTHING "
        "RETURNING kind, name",
        (at, run),
    )
    return MembershipChanges(run, entered, exited)


def _counted(
    cur: psycopg.Cursor[Any], statement: str, params: Sequence[Any]
) -> dict[tuple[str, str], int]:
    """Run a statement that returns (kind, name) per changed row; the count per name."""
    cur.execute(
        f"WITH changed AS ({statement}) "  # type: ignore[arg-type]  # our SQL, bound values
        "SELECT kind, name, count(*) FROM changed GROUP BY kind, name",
        params,
    )
    return {(str(k), str(n)): int(c) for k, n, c in cur.fetchall()}
