"""The outbox on DuckDB: set-based planning, claims, resolutions; every write an Arrow batch."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import duckdb
import orjson
import pyarrow as pa

from cohortsync.store.duckdb_shared import ConnectionView, Registered, Transaction, first_row
from cohortsync.store.outbox import (
    CHANGES,
    CONVERSIONS,
    DRY_REMOVED,
    DRY_RUN,
    KEY,
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


_NEW_BATCH = (
    "INSERT INTO sync_batches (batch_id, destination, audience, kind, op, records, created_at, "
    "attempts, first_attempt_at, next_attempt_at, last_error) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, 0, NULL, ?, NULL)"
)


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

_IDENTIFIERS = """
    WITH owners AS (
        SELECT c.record_id, coalesce(a.canonical_id, c.profile_id) AS owner
        FROM _claim c LEFT JOIN profile_aliases a ON a.profile_id = c.profile_id),
    firsts AS (
        SELECT o.record_id, x.kind, arg_min(x.value, (x.first_seen, x.value)) AS value
        FROM owners o JOIN identities x ON x.profile_id = o.owner GROUP BY ALL)
    SELECT record_id, json_group_object(kind, value)::VARCHAR FROM firsts GROUP BY record_id
"""


@dataclass(frozen=True)
class _Planned:
    """How far conversions were planned: every event up to row `through` of `events`."""

    routes: tuple[ConversionRoute, ...]
    through: int
    full_at: datetime


class DuckDBOutbox(ConnectionView, OutboxStore):
    """`OutboxStore` over the store's DuckDB connection, sharing its lock and transactions.

    Conversions are planned from the events stored since the last planning, not from every
    event: `events` is append-only and written by this process alone, so its row numbers grow
    in commit order. The first planning in a process, another set of routes, a retry of dead
    conversions (which forgets them in the ledger) and every ten minutes (`whole_log_due`) read
    all events.
    """

    def __init__(
        self, con: duckdb.DuckDBPyConnection, lock: threading.RLock, transaction: Transaction
    ) -> None:
        super().__init__(con, lock, transaction)
        self._planned: _Planned | None = None

    def plan(self, routes: Sequence[Route], now: datetime) -> PlanCounts:
        with self._transaction() as con:
            return plan_changes(con, routes, now)

    def plan_conversions(self, routes: Sequence[ConversionRoute], now: datetime) -> PlanCounts:
        if not routes:
            return PlanCounts()
        table = pa.table(
            {
                "destination": [r.destination for r in routes],
                "event": [r.event for r in routes],
                "name": [r.name for r in routes],
                "value_path": [
                    f"$.{r.value_property}" if r.value_property else None for r in routes
                ],
                "currency": pa.array([r.currency for r in routes], pa.string()),
            }
        )
        with self._lock:  # the cursor is read and moved by one planning at a time
            planned, key = self._planned, tuple(routes)
            full_at = None if planned is None or planned.routes != key else planned.full_at
            full = whole_log_due(full_at, now)
            after = -1 if full or planned is None else planned.through
            # Events stored since the last planning cannot be in the ledger yet (their message ids
            # are new to the store), so only a planning of the whole log checks it; its primary key
            # would refuse a second conversion of an event anyway.
            unplanned = (
                "ANTI JOIN conversion_ledger l "
                "ON l.destination = r.destination AND l.message_id = e.message_id"
                if after < 0
                else ""
            )
            with self._transaction() as con, Registered(con, _rules=table):
                row = first_row(con.execute("SELECT max(rowid) FROM events").fetchall())
                through = -1 if row is None or row[0] is None else int(row[0])
                con.execute(
                    f"""CREATE OR REPLACE TEMP TABLE _conv AS
                    SELECT r.destination, e.message_id, r.name, e.event, e."timestamp",
                           coalesce(a.canonical_id, e.profile_id) AS profile_id,
                           TRY_CAST(json_extract_string(e.properties, r.value_path) AS DOUBLE)
                               AS value,
                           coalesce(json_extract_string(e.properties, '$.currency'), r.currency)
                               AS currency,
                           e.properties, e.context
                    FROM events e LEFT JOIN profile_aliases a ON a.profile_id = e.profile_id
                    JOIN _rules r ON e.type = 'track' AND e.event_key = r.event
                    {unplanned}
                    WHERE e.rowid > ?""",
                    [after],
                )
                row = first_row(con.execute("SELECT count(*) FROM _conv").fetchall())
                count = int(row[0]) if row else 0
                start = next_ids(con, "conversion_id", count)
                con.execute(
                    """CREATE OR REPLACE TEMP TABLE _conv_ids AS
                    SELECT ? - 1 + row_number() OVER (ORDER BY "timestamp", destination, message_id)
                           AS conversion_id, * FROM _conv""",
                    [start],
                )
                con.execute(
                    """INSERT INTO conversion_outbox
                    SELECT conversion_id, destination, message_id, name, event, "timestamp",
                           profile_id, value, upper(currency), properties, context,
                           ?::TIMESTAMPTZ, NULL, NULL
                    FROM _conv_ids""",
                    [now],
                )
                con.execute(
                    "INSERT INTO conversion_ledger "
                    "SELECT destination, message_id, conversion_id FROM _conv_ids"
                )
                con.execute("DROP TABLE _conv")
                con.execute("DROP TABLE _conv_ids")
            full_at = now if full or full_at is None else full_at
            self._planned = _Planned(key, through, full_at)  # only once the plan has committed
        return PlanCounts(conversions=count)

    def claim(
        self,
        destination: str,
        kind: str,
        max_records: int,
        now: datetime,
        audience: str | None = None,
    ) -> ClaimedBatch | None:
        with self._transaction() as con:
            held = con.execute(
                "SELECT count(*) FROM sync_batches WHERE destination = ? AND attempts > 0 "
                "AND next_attempt_at > ? AND holds_destination",
                [destination, now],
            ).fetchall()
            if held[0][0]:
                return None  # the destination said when (Retry-After) or is paused: wait
            due = first_row(
                con.execute(
                    "SELECT batch_id FROM sync_batches WHERE destination = ? AND kind = ? "
                    "AND next_attempt_at <= ? AND (?::VARCHAR IS NULL OR audience = ?) "
                    "ORDER BY created_at, batch_id LIMIT 1",
                    [destination, kind, now, audience, audience],
                ).fetchall()
            )
            if due:
                return self._load(con, str(due[0]))
            if kind == CHANGES:
                return self._claim_changes(con, destination, max_records, now, audience)
            batches = self._form(con, destination, kind, max_records, audience, 1)
            if not batches:
                return None
            audience_, op, ids = batches[0]
            return self._claim(con, destination, kind, audience_, op, ids, now)

    def _claim_changes(
        self,
        con: duckdb.DuckDBPyConnection,
        destination: str,
        max_records: int,
        now: datetime,
        audience: str | None,
    ) -> ClaimedBatch | None:
        """One scan: the oldest claimable change picks audience and operation; take its kin."""
        rows = con.execute(
            f"""WITH claimable AS (
                SELECT o.change_id, o.audience, o.op, o.profile_id, o.holdout, o.changed_at,
                       o.identifiers
                FROM outbox o
                WHERE o.destination = ? AND o.batch_id IS NULL
                  AND (?::VARCHAR IS NULL OR o.audience = ?)
                  AND NOT EXISTS (SELECT 1 FROM outbox f
                                  WHERE f.batch_id IS NOT NULL AND {key_match("f", "o")})),
            head AS (SELECT audience, op FROM claimable ORDER BY change_id LIMIT 1)
            SELECT c.* FROM claimable c SEMI JOIN head USING (audience, op)
            ORDER BY c.change_id LIMIT ?""",
            [destination, audience, audience, max_records],
        ).fetchall()
        if not rows:
            return None
        audience_, op = str(rows[0][1]), str(rows[0][2])
        records = tuple(
            OutboxRecord(
                int(change_id),
                str(profile_id),
                str(op_),
                bool(holdout),
                at,
                orjson.loads(identifiers) if identifiers else {},
            )
            for change_id, _, op_, profile_id, holdout, at, identifiers in rows
        )
        ids = [r.record_id for r in records]
        batch_id = stable_batch_id(CHANGES, destination, ids)
        with Registered(con, _ids=pa.table({"record_id": pa.array(ids, pa.int64())})):
            con.execute(
                "UPDATE outbox SET batch_id = ? WHERE change_id IN (SELECT record_id FROM _ids)",
                [batch_id],
            )
        con.execute(
            _NEW_BATCH,
            [batch_id, destination, audience_, CHANGES, op, len(records), now, now],
        )
        return ClaimedBatch(batch_id, destination, audience_, CHANGES, op, 0, None, records)

    def peek(
        self, destination: str, kind: str, max_records: int, audience: str | None = None
    ) -> list[ClaimedBatch]:
        with self._lock:
            formed = self._form(self._con, destination, kind, max_records, audience, None)
            batches: list[ClaimedBatch] = []
            for audience_, op, ids in formed:
                records = self._records_with_identifiers(self._con, kind, ids, op, destination)
                batch_id = "dry-" + stable_batch_id(kind, destination, ids)
                batches.append(
                    ClaimedBatch(batch_id, destination, audience_, kind, op, 0, None, records)
                )
            return batches

    def _form(
        self,
        con: duckdb.DuckDBPyConnection,
        destination: str,
        kind: str,
        max_records: int,
        audience: str | None,
        limit: int | None,
    ) -> list[tuple[str | None, str | None, list[int]]]:
        """Group claimable records into batches: (audience, op, ids), oldest first."""
        if kind == CONVERSIONS:  # none of a profile with a conversion in flight
            rows = con.execute(
                "SELECT c.conversion_id FROM conversion_outbox c "
                "WHERE c.destination = ? AND c.batch_id IS NULL "
                "AND NOT EXISTS (SELECT 1 FROM conversion_outbox f WHERE f.batch_id IS NOT NULL "
                "AND f.destination = c.destination AND f.profile_id = c.profile_id) "
                "ORDER BY c.conversion_id LIMIT ?",
                [destination, None if limit is None else limit * max_records],
            ).fetchall()
            ids = [int(r[0]) for r in rows]
            chunks = [ids[i : i + max_records] for i in range(0, len(ids), max_records)]
            return [(None, None, chunk) for chunk in chunks[:limit]]
        claimable = f"""FROM outbox o
            WHERE o.destination = ? AND o.batch_id IS NULL
              AND (?::VARCHAR IS NULL OR o.audience = ?)
              AND NOT EXISTS (SELECT 1 FROM outbox f
                              WHERE f.batch_id IS NOT NULL AND {key_match("f", "o")})"""
        params = [destination, audience, audience]
        if limit == 1:  # a claim: the oldest change decides the audience and operation
            head = first_row(
                con.execute(
                    f"SELECT o.audience, o.op {claimable} ORDER BY o.change_id LIMIT 1", params
                ).fetchall()
            )
            if head is None:
                return []
            rows = con.execute(
                f"SELECT o.change_id {claimable} AND o.audience = ? AND o.op = ? "
                "ORDER BY o.change_id LIMIT ?",
                [*params, head[0], head[1], max_records],
            ).fetchall()
            return [(str(head[0]), str(head[1]), [int(r[0]) for r in rows])]
        grouped = con.execute(
            f"SELECT o.audience, o.op, o.change_id {claimable} ORDER BY o.change_id", params
        ).fetchall()
        groups: dict[tuple[str, str], list[int]] = {}
        for aud, op, change_id in grouped:
            groups.setdefault((str(aud), str(op)), []).append(int(change_id))
        formed: list[tuple[str | None, str | None, list[int]]] = []
        for (aud, op), ids in sorted(groups.items(), key=lambda item: item[1][0]):
            formed += [(aud, op, ids[i : i + max_records]) for i in range(0, len(ids), max_records)]
            if limit is not None and len(formed) >= limit:
                return formed[:limit]
        return formed

    def _records_with_identifiers(
        self,
        con: duckdb.DuckDBPyConnection,
        kind: str,
        ids: Sequence[int],
        op: str | None,
        destination: str,
    ) -> tuple[OutboxRecord, ...]:
        """Records of `ids` with their identifiers (fixed when planned; looked up if missing)."""
        claim = pa.table({"record_id": pa.array(list(ids), pa.int64())})
        table, id_col = record_table(kind)
        with Registered(con, _ids=claim):
            if kind == CHANGES:
                rows = con.execute(
                    "SELECT change_id, profile_id, op, holdout, changed_at, identifiers, NULL "
                    "FROM outbox SEMI JOIN _ids i ON i.record_id = change_id ORDER BY change_id"
                ).fetchall()
            else:
                rows = con.execute(
                    'SELECT conversion_id, profile_id, name, false, "timestamp", identifiers, '
                    "json_object('message_id', message_id, 'name', name, 'event', event, "
                    "'value', value, 'currency', currency, 'properties', properties, "
                    "'context', context)::VARCHAR "
                    "FROM conversion_outbox SEMI JOIN _ids i ON i.record_id = conversion_id "
                    "ORDER BY conversion_id"
                ).fetchall()
            current: dict[int, str] = {}
            if any(row[5] is None for row in rows):
                con.execute(
                    f"CREATE OR REPLACE TEMP TABLE _claim AS SELECT t.{id_col} AS record_id, "
                    f"t.profile_id FROM {table} t SEMI JOIN _ids i ON i.record_id = t.{id_col} "
                    "WHERE t.identifiers IS NULL"
                )
                current = {int(r): str(j) for r, j in con.execute(_IDENTIFIERS).fetchall()}
                con.execute("DROP TABLE _claim")
        records = []
        for record_id, profile_id, op_, holdout, at, fixed, conversion in rows:
            chosen = fixed or current.get(int(record_id)) or "{}"
            records.append(
                OutboxRecord(
                    int(record_id),
                    str(profile_id),
                    str(op_),
                    bool(holdout),
                    at,
                    orjson.loads(chosen),
                    orjson.loads(conversion) if conversion else {},
                )
            )
        return tuple(records)

    def _claim(
        self,
        con: duckdb.DuckDBPyConnection,
        destination: str,
        kind: str,
        audience: str | None,
        op: str | None,
        ids: list[int],
        now: datetime,
    ) -> ClaimedBatch:
        records = self._records_with_identifiers(con, kind, ids, op, destination)
        batch_id = stable_batch_id(kind, destination, ids)
        table, id_col = record_table(kind)
        fixed = pa.table(
            {
                "record_id": pa.array([r.record_id for r in records], pa.int64()),
                "identifiers": pa.array(
                    [orjson.dumps(dict(r.identifiers)).decode() for r in records], pa.string()
                ),
            }
        )
        with Registered(con, _fixed=fixed):
            con.execute(
                f"UPDATE {table} SET batch_id = ?, identifiers = f.identifiers FROM _fixed f "
                f"WHERE {table}.{id_col} = f.record_id",
                [batch_id],
            )
        con.execute(
            _NEW_BATCH,
            [batch_id, destination, audience, kind, op, len(records), now, now],
        )
        return ClaimedBatch(batch_id, destination, audience, kind, op, 0, None, records)

    def _load(self, con: duckdb.DuckDBPyConnection, batch_id: str) -> ClaimedBatch:
        row = first_row(
            con.execute(
                "SELECT destination, audience, kind, op, attempts, first_attempt_at, "
                "backoff_attempts FROM sync_batches WHERE batch_id = ?",
                [batch_id],
            ).fetchall()
        )
        assert row is not None
        destination, audience, kind, op, attempts, first, backoff = row
        table, id_col = record_table(kind)
        ids = [
            int(r[0])
            for r in con.execute(
                f"SELECT {id_col} FROM {table} WHERE batch_id = ? ORDER BY {id_col}", [batch_id]
            ).fetchall()
        ]
        records = self._records_with_identifiers(con, kind, ids, op, destination)
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

    def resolve(self, batch: ClaimedBatch, resolution: Resolution, now: datetime) -> None:
        with self._transaction() as con:
            if batch.kind == CHANGES:
                self._resolve_changes(con, batch, resolution, now)
            else:
                self._resolve_conversions(con, batch, resolution, now)
            rejected = sum(1 for r in batch.records if r.record_id in resolution.rejected)
            retried = sum(1 for r in batch.records if r.record_id in resolution.retry)
            con.execute(
                "INSERT OR REPLACE INTO batch_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
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
                    orjson.dumps(dict(resolution.stats)).decode(),
                ],
            )
            con.execute("DELETE FROM sync_batches WHERE batch_id = ?", [batch.batch_id])
            if resolution.recovered_by is not None:
                self._restart_backoff(con, batch.destination, resolution.recovered_by)
            if resolution.retry:
                self._split_retries(con, batch, resolution, now)

    def _restart_backoff(
        self, con: duckdb.DuckDBPyConnection, destination: str, by: datetime
    ) -> None:
        """The destination answered, so it is up: its batches backing off start their backoff
        over and are tried again by `by` (those a server's word or a pause holds keep theirs)."""
        con.execute(
            "UPDATE sync_batches SET backoff_attempts = 0, "
            "next_attempt_at = least(next_attempt_at, ?) "
            "WHERE destination = ? AND attempts > 0 AND NOT holds_destination",
            [by, destination],
        )

    def _split_retries(
        self,
        con: duckdb.DuckDBPyConnection,
        batch: ClaimedBatch,
        resolution: Resolution,
        now: datetime,
    ) -> None:
        """Records a destination asked to retry become a batch of their own, tried again at
        `retry_at`; the destination's other work goes on meanwhile."""
        table, id_col = record_table(batch.kind)
        rows = con.execute(
            f"SELECT {id_col} FROM {table} WHERE batch_id = ? ORDER BY {id_col}",
            [batch.batch_id],
        ).fetchall()
        ids = [int(r[0]) for r in rows]
        if not ids:
            return
        retry_id = stable_batch_id(batch.kind, batch.destination, ids)
        con.execute(
            f"UPDATE {table} SET batch_id = ? WHERE batch_id = ?", [retry_id, batch.batch_id]
        )
        con.execute(
            "INSERT INTO sync_batches (batch_id, destination, audience, kind, op, records, "
            "created_at, attempts, first_attempt_at, next_attempt_at, last_error, "
            "backoff_attempts, holds_destination) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, false)",
            retry_batch_row(batch, resolution, retry_id, len(ids), now),
        )

    def _log(
        self,
        con: duckdb.DuckDBPyConnection,
        batch: ClaimedBatch,
        resolution: Resolution,
        now: datetime,
    ) -> list[OutboxRecord]:
        """Write delivery_log rows for resolved records; return those resolved."""
        done = [r for r in batch.records if r.record_id not in resolution.retry]
        log = pa.table(
            {
                "record_id": pa.array([r.record_id for r in done], pa.int64()),
                "outcome": [resolution.outcome(r.record_id) for r in done],
                "reason": pa.array(
                    [resolution.rejected.get(r.record_id) for r in done], pa.string()
                ),
                "profile_id": [r.profile_id for r in done],
                "op": [r.op for r in done],
            }
        )
        with Registered(con, _log=log):
            con.execute(
                "INSERT INTO delivery_log SELECT record_id, ?, ?, ?, ?, profile_id, op, outcome, "
                "reason, ?, ?::TIMESTAMPTZ FROM _log",
                [
                    batch.kind,
                    batch.batch_id,
                    batch.destination,
                    batch.audience,
                    batch.attempts + 1,
                    now,
                ],
            )
        return done

    def _resolve_changes(
        self,
        con: duckdb.DuckDBPyConnection,
        batch: ClaimedBatch,
        resolution: Resolution,
        now: datetime,
    ) -> None:
        done = self._log(con, batch, resolution, now)
        keep = [r for r in done if r.op == "add"]
        state = pa.table(
            {
                "profile_id": pa.array([r.profile_id for r in keep], pa.string()),
                "status": pa.array([resolution.state(r.record_id) for r in keep], pa.string()),
                "holdout": pa.array([r.holdout for r in keep], pa.bool_()),
                "identifiers": pa.array(
                    [orjson.dumps(dict(r.identifiers)).decode() for r in keep], pa.string()
                ),
                "reason": pa.array(
                    [resolution.rejected.get(r.record_id) for r in keep], pa.string()
                ),
                "change_id": pa.array([r.record_id for r in keep], pa.int64()),
            }
        )
        ids = pa.table({"profile_id": pa.array([r.profile_id for r in done], pa.string())})
        retry = pa.table({"record_id": pa.array(list(resolution.retry), pa.int64())})
        with Registered(con, _state=state, _done=ids, _retry=retry):
            if resolution.dry_run and batch.op == "remove":
                # The destination still holds its members: only a dry run wrote their removal.
                con.execute(
                    f"UPDATE destination_state SET status = '{DRY_REMOVED}', batch_id = ?, "
                    "updated_at = ? WHERE destination = ? AND audience = ? "
                    f"AND status = '{MEMBER}' AND profile_id IN (SELECT profile_id FROM _done)",
                    [batch.batch_id, now, batch.destination, batch.audience],
                )
            con.execute(
                "DELETE FROM destination_state s WHERE s.destination = ? AND s.audience = ? "
                "AND s.profile_id IN (SELECT profile_id FROM _done) "
                f"AND NOT (? AND s.status = '{DRY_REMOVED}')",
                [batch.destination, batch.audience, resolution.dry_run and batch.op == "remove"],
            )
            con.execute(
                "INSERT INTO destination_state SELECT ?, ?, profile_id, status, holdout, "
                "identifiers, reason, change_id, ?, ?::TIMESTAMPTZ FROM _state",
                [batch.destination, batch.audience, batch.batch_id, now],
            )
            if resolution.retry:
                self._release_retries(con, batch)
            con.execute(
                "DELETE FROM outbox WHERE batch_id = ? "
                "AND change_id NOT IN (SELECT record_id FROM _retry)",
                [batch.batch_id],
            )

    def _release_retries(self, con: duckdb.DuckDBPyConnection, batch: ClaimedBatch) -> None:
        """A record to retry gives way to a newer waiting change of the same profile."""
        con.execute(
            f"""DELETE FROM outbox o WHERE o.batch_id = ?
            AND o.change_id IN (SELECT record_id FROM _retry)
            AND EXISTS (SELECT 1 FROM outbox w
                        WHERE w.batch_id IS NULL AND {key_match("w", "o")})""",
            [batch.batch_id],
        )

    def _resolve_conversions(
        self,
        con: duckdb.DuckDBPyConnection,
        batch: ClaimedBatch,
        resolution: Resolution,
        now: datetime,
    ) -> None:
        done = self._log(con, batch, resolution, now)
        rejected = [r for r in done if r.record_id in resolution.rejected]
        self._dead(con, batch, rejected, resolution.rejected, now)
        retry = pa.table({"record_id": pa.array(list(resolution.retry), pa.int64())})
        with Registered(con, _retry=retry):
            con.execute(
                "DELETE FROM conversion_outbox WHERE batch_id = ? "
                "AND conversion_id NOT IN (SELECT record_id FROM _retry)",
                [batch.batch_id],
            )

    def _dead(
        self,
        con: duckdb.DuckDBPyConnection,
        batch: ClaimedBatch,
        records: Sequence[OutboxRecord],
        reasons: Mapping[int, str],
        now: datetime,
        default_reason: str = "",
    ) -> None:
        if not records:
            return
        dead = pa.table(
            {
                "record_id": pa.array([r.record_id for r in records], pa.int64()),
                "profile_id": [r.profile_id for r in records],
                "op": [r.op for r in records],
                "reason": [reasons.get(r.record_id, default_reason) for r in records],
            }
        )
        with Registered(con, _dead=dead):
            con.execute(
                "INSERT INTO dead_letters SELECT record_id, ?, ?, ?, profile_id, op, reason, ?, "
                "?::TIMESTAMPTZ, ?::TIMESTAMPTZ, ?, NULL FROM _dead",
                [
                    batch.kind,
                    batch.destination,
                    batch.audience,
                    batch.attempts + 1,
                    batch.first_attempt_at or now,
                    now,
                    batch.batch_id,
                ],
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
        with self._transaction() as con:
            con.execute(
                "UPDATE sync_batches SET attempts = attempts + 1, "
                "first_attempt_at = coalesce(first_attempt_at, ?::TIMESTAMPTZ), "
                "next_attempt_at = ?, last_error = ?, holds_destination = ?, "
                "backoff_attempts = coalesce(?::INTEGER, backoff_attempts + 1) WHERE batch_id = ?",
                [now, next_attempt, error, holds_destination, backoff_attempts, batch.batch_id],
            )
            if recovered_by is not None:
                self._restart_backoff(con, batch.destination, recovered_by)

    def dead_letter(self, batch: ClaimedBatch, reason: str, now: datetime) -> None:
        with self._transaction() as con:
            self._dead(con, batch, batch.records, {}, now, reason)
            table, _ = record_table(batch.kind)
            con.execute(f"DELETE FROM {table} WHERE batch_id = ?", [batch.batch_id])
            con.execute("DELETE FROM sync_batches WHERE batch_id = ?", [batch.batch_id])

    def retry_dead(self, destination: str | None, audience: str | None, now: datetime) -> int:
        with self._transaction() as con:
            where = (
                "retried_at IS NULL AND (?::VARCHAR IS NULL OR destination = ?) "
                "AND (?::VARCHAR IS NULL OR audience = ?)"
            )
            params = [destination, destination, audience, audience]
            row = first_row(
                con.execute(f"SELECT count(*) FROM dead_letters WHERE {where}", params).fetchall()
            )
            # Conversions come back through the ledger: forget them there to queue them again
            # (and read every event at the next planning, to find theirs).
            self._planned = None
            con.execute(
                "DELETE FROM conversion_ledger l USING dead_letters d "
                "WHERE d.kind = 'conversions' AND d.retried_at IS NULL "
                "AND (?::VARCHAR IS NULL OR d.destination = ?) "
                "AND (?::VARCHAR IS NULL OR d.audience = ?) "
                "AND l.destination = d.destination AND l.conversion_id = d.record_id",
                params,
            )
            con.execute(f"UPDATE dead_letters SET retried_at = ? WHERE {where}", [now, *params])
        return int(row[0]) if row else 0

    def status(
        self,
        routes: Sequence[Route],
        conversion_destinations: Sequence[str],
        accepts: Mapping[tuple[str, str], Sequence[str]],
    ) -> list[RouteStatus]:
        accepted = pa.table(
            {
                "destination": pa.array(
                    [d for (d, _), ks in accepts.items() for _ in ks], pa.string()
                ),
                "audience": pa.array(
                    [a for (_, a), ks in accepts.items() for _ in ks], pa.string()
                ),
                "kind": pa.array([k for ks in accepts.values() for k in ks], pa.string()),
            }
        )
        found: list[RouteStatus] = []
        with (
            self._lock,
            Registered(self._con, _routes=_routes_table(routes), _accepts=accepted) as con,
        ):
            rows = con.execute(_STATUS_SQL).fetchall() if routes else []
            found += [RouteStatus.from_row(row) for row in rows]
            for destination in conversion_destinations:
                row = first_row(con.execute(_CONVERSION_STATUS_SQL, [destination] * 9).fetchall())
                assert row is not None
                found.append(RouteStatus.from_row((destination, None, *row)))
        return found

    def log_run(self, run: SyncRunRecord) -> int:
        with self._transaction() as con:
            run_id = next_ids(con, "sync_run", 1)
            con.execute(
                "INSERT INTO sync_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    run_id,
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
                ],
            )
        return run_id

    def runs(self, limit: int = 10) -> list[SyncRunRecord]:
        with self._lock:
            rows = self._con.execute(
                "SELECT started_at, duration_ms, dry_run, destination, audience, planned, "
                "batches, acknowledged, rejected, retrying, dead_lettered FROM sync_runs "
                "ORDER BY run_id DESC LIMIT ?",
                [limit],
            ).fetchall()
        return [SyncRunRecord(*row) for row in rows]

    def acknowledged(self, destination: str, audience: str) -> dict[str, bool]:
        with self._lock:
            rows = self._con.execute(
                "SELECT profile_id, holdout FROM destination_state WHERE destination = ? "
                "AND audience = ? AND status = 'member'",
                [destination, audience],
            ).fetchall()
        return {str(p): bool(h) for p, h in rows}


_STATUS_SQL = f"""
WITH desired AS (
    SELECT r.destination, r.audience, m.profile_id
    FROM _routes r JOIN memberships m ON m.kind = 'audience' AND m.name = r.audience
    WHERE m.exited_at IS NULL AND (r.include_holdout OR NOT m.holdout)),
matchable AS (
    SELECT d.destination, d.audience, count(DISTINCT d.profile_id) AS n
    FROM desired d LEFT JOIN profile_aliases a ON a.profile_id = d.profile_id
    JOIN identities x ON x.profile_id = coalesce(a.canonical_id, d.profile_id)
    JOIN _accepts k ON k.destination = d.destination AND k.audience = d.audience
        AND k.kind = x.kind
    WHERE NOT EXISTS (SELECT 1 FROM destination_state s
                      WHERE s.status = 'rejected' AND {key_match("s", "d")})
    GROUP BY ALL),
batches AS (
    SELECT destination, audience, sum(records) FILTER (attempts > 0) AS retrying,
           min(next_attempt_at) AS next_attempt, arg_max(last_error, next_attempt_at)
               FILTER (last_error IS NOT NULL) AS last_error
    FROM sync_batches WHERE kind = 'changes' GROUP BY ALL)
""" + STATUS_SELECT.format(routes="_routes")

_CONVERSION_STATUS_SQL = """
SELECT
    (SELECT count(*) FROM conversion_ledger WHERE destination = ?),
    (SELECT count(*) FROM delivery_log WHERE kind = 'conversions' AND destination = ?
        AND outcome = 'acknowledged'),
    (SELECT count(*) FROM conversion_outbox WHERE destination = ?),
    (SELECT coalesce(sum(records), 0) FROM sync_batches WHERE kind = 'conversions'
        AND destination = ? AND attempts > 0),
    (SELECT count(*) FROM delivery_log WHERE kind = 'conversions' AND destination = ?
        AND outcome = 'rejected'),
    (SELECT count(*) FROM dead_letters WHERE kind = 'conversions' AND destination = ?
        AND retried_at IS NULL AND batch_id NOT IN (
            SELECT batch_id FROM delivery_log WHERE kind = 'conversions' AND destination = ?
            AND outcome = 'rejected')),
    0,
    (SELECT count(*) FROM delivery_log WHERE kind = 'conversions' AND destination = ?
        AND outcome = 'dry_run'),
    (SELECT max(resolved_at) FROM delivery_log WHERE kind = 'conversions'
        AND destination = ?),
    NULL, NULL
"""
