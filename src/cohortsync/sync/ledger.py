"""The outbox's state machine, written once for both stores: claims, resolutions, retries,
dead letters, status.

A claim takes the oldest due batch, else forms a new one from waiting records: the oldest
waiting change picks the audience and operation, its kin (same audience and operation, no
change of the same profile in flight) join it, oldest first. A resolution records what the
destination answered — state for adds, delivery log, dead letters for refusals — and splits
the records it asked to retry into a batch of their own. Every step is one transaction of the
store (`SqlStore`); on Postgres several workers claim at once: a destination's claims are
serialised by a named lock, waiting rows a plan is rewriting are skipped, and a claimed batch
is held by its worker's connection until it settles.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Protocol

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
)
from cohortsync.store.sql import SqlStore, Tx, as_json, json_text
from cohortsync.sync import planner


class _HasSql(Protocol):
    sql: SqlStore


_LEDGERS: weakref.WeakKeyDictionary[SqlStore, Ledger] = weakref.WeakKeyDictionary()
_LEDGERS_LOCK = threading.Lock()


def ledger_for(store: _HasSql) -> Ledger:
    """The one `Ledger` of an open store (it remembers how far conversions were planned)."""
    with _LEDGERS_LOCK:
        found = _LEDGERS.get(store.sql)
        if found is None:
            found = _LEDGERS[store.sql] = Ledger(store.sql)
        return found


def _held_key(batch_id: str) -> str:
    """The name a worker holds while it delivers a batch."""
    return "batch:" + batch_id


def route_rows(tx: Tx, routes: Sequence[Route]) -> str:
    """The routes as the relation `routes` (destination, audience, include_holdout, dry_run)."""
    return tx.rows(
        "routes",
        [
            ("destination", "text"),
            ("audience", "text"),
            ("include_holdout", "boolean"),
            ("dry_run", "boolean"),
        ],
        [
            [r.destination for r in routes],
            [r.audience for r in routes],
            [r.include_holdout for r in routes],
            [r.dry_run for r in routes],
        ],
    )


def _id_rows(tx: Tx, name: str, ids: Sequence[int]) -> str:
    return tx.rows(name, [("record_id", "bigint")], [list(ids)])


# Changes a new batch may take: waiting, of the destination, of no key with a change in flight
# (a remove never overtakes its add). The keys in flight are few (the batches being delivered):
# read first and looked up by hash, whatever the table statistics say just after a large plan.
_CLAIMABLE = """FROM outbox o
    WHERE o.destination = $destination AND o.batch_id IS NULL
      AND ($audience::text IS NULL OR o.audience = $audience)
      AND NOT (o.audience || chr(31) || o.profile_id IN (SELECT k FROM {flight}))"""

_FLIGHT = (
    "SELECT audience || chr(31) || profile_id FROM outbox "
    "WHERE batch_id IS NOT NULL AND destination = $destination"
)

# Conversions a new batch may take: waiting, of the destination, of no profile with a
# conversion in flight (a later one never overtakes an earlier one that failed).
_CLAIMABLE_CONVERSIONS = """FROM conversion_outbox c
    WHERE c.destination = $destination AND c.batch_id IS NULL
      AND NOT EXISTS (SELECT 1 FROM conversion_outbox f WHERE f.batch_id IS NOT NULL
                      AND f.destination = c.destination AND f.profile_id = c.profile_id)"""

_NEW_BATCH = (
    "INSERT INTO sync_batches (batch_id, destination, audience, kind, op, records, created_at, "
    "attempts, first_attempt_at, next_attempt_at, last_error) "
    "VALUES ($batch, $destination, $audience, $kind, $op, $records, $now, 0, NULL, $now, NULL)"
)

_CHANGE_ROWS = (
    "SELECT change_id, profile_id, op, holdout, changed_at, identifiers, NULL "
    "FROM outbox WHERE change_id IN (SELECT record_id FROM {ids}) ORDER BY change_id"
)
_CONVERSION_ROWS = (
    'SELECT conversion_id, profile_id, name, false, "timestamp", identifiers, '
    "{json_object}('message_id', message_id, 'name', name, 'event', event, 'value', value, "
    "'currency', currency, 'properties', properties, 'context', context){json_text} "
    "FROM conversion_outbox WHERE conversion_id IN (SELECT record_id FROM {ids}) "
    "ORDER BY conversion_id"
)

# Identifiers of records planned without any (none known then), read at claim time: per kind,
# the one first seen (ties: the smallest value), read through merges.
_IDENTIFIERS = """
    SELECT f.record_id, {json_object_agg}(f.kind, f.value){json_text}
    FROM (
        SELECT DISTINCT ON (t.{id_col}, x.kind) t.{id_col} AS record_id, x.kind, x.value
        FROM {table} t
        LEFT JOIN profile_aliases a ON a.profile_id = t.profile_id
        JOIN identities x ON x.profile_id = coalesce(a.canonical_id, t.profile_id)
        WHERE t.{id_col} IN (SELECT record_id FROM {ids}) AND t.identifiers IS NULL
        ORDER BY t.{id_col}, x.kind, x.first_seen, x.value
    ) f
    GROUP BY f.record_id
"""


class Ledger(OutboxStore):
    """`OutboxStore` over a store's `SqlStore`; any number of workers may share a Postgres one."""

    def __init__(self, sql: SqlStore) -> None:
        self.sql = sql
        self._conversions = planner.ConversionCursor()

    # -- planning -------------------------------------------------------------------------

    def plan(self, routes: Sequence[Route], now: datetime) -> PlanCounts:
        with self.sql.transaction() as tx:
            return planner.plan_changes(tx, routes, now)

    def plan_conversions(self, routes: Sequence[ConversionRoute], now: datetime) -> PlanCounts:
        return self._conversions.plan(self.sql, routes, now)

    # -- claims ---------------------------------------------------------------------------

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
            with self.sql.transaction() as tx:
                tx.lock("claim:" + destination)
                held = tx.run(
                    "SELECT count(*) FROM sync_batches WHERE destination = $destination "
                    "AND attempts > 0 AND next_attempt_at > $now AND holds_destination",
                    {"destination": destination, "now": now},
                )
                if held[0][0]:
                    return None  # the destination said when (Retry-After) or is paused: wait
                claimed = self._due(tx, destination, kind, now, audience)
                if claimed is None and kind == CHANGES:
                    claimed = self._claim_changes(tx, destination, max_records, now, audience)
                elif claimed is None:
                    claimed = self._claim_conversions(tx, destination, max_records, now)
                return claimed
        except BaseException:
            if claimed is not None:
                self.sql.release(_held_key(claimed.batch_id))
            raise

    def _due(
        self, tx: Tx, destination: str, kind: str, now: datetime, audience: str | None
    ) -> ClaimedBatch | None:
        """The oldest batch whose retry time has come and that no live worker is delivering."""
        due = "next_attempt_at <= $now"
        rows = tx.run(
            f"SELECT batch_id FROM sync_batches WHERE destination = $destination "
            f"AND kind = $kind AND {due} AND ($audience::text IS NULL OR audience = $audience) "
            "ORDER BY created_at, batch_id",
            {"destination": destination, "kind": kind, "now": now, "audience": audience},
        )
        for (batch_id,) in rows:
            if not tx.hold(_held_key(str(batch_id))):
                continue
            # Resolved or deferred by its worker between the list and the lock?
            if tx.run(
                f"SELECT 1 FROM sync_batches WHERE batch_id = $batch AND {due}",
                {"batch": batch_id, "now": now},
            ):
                return self._load(tx, str(batch_id))
            self.sql.release(_held_key(str(batch_id)))
        return None

    def _flight(self, tx: Tx, destination: str) -> str:
        keys = [str(r[0]) for r in tx.run(_FLIGHT, {"destination": destination})]
        return tx.rows("flight", [("k", "text")], [keys])

    def _claim_changes(
        self, tx: Tx, destination: str, max_records: int, now: datetime, audience: str | None
    ) -> ClaimedBatch | None:
        """The oldest claimable change picks audience and operation; take its kin, oldest first."""
        flight = self._flight(tx, destination)
        params = {"destination": destination, "audience": audience}
        head = tx.run(
            f"SELECT o.audience, o.op {_CLAIMABLE} ORDER BY o.change_id LIMIT 1{{skip_locked}}",
            params,
            flight=flight,
        )
        if not head:
            return None
        audience_, op = str(head[0][0]), str(head[0][1])
        rows = tx.run(
            "SELECT o.change_id, o.profile_id, o.op, o.holdout, o.changed_at, o.identifiers, "
            f"NULL {_CLAIMABLE} AND o.audience = $head_audience AND o.op = $op "
            "ORDER BY o.change_id LIMIT $limit{skip_locked}",
            {**params, "head_audience": audience_, "op": op, "limit": max_records},
            flight=flight,
        )
        records = tuple(_record(row, {}) for row in rows)
        if not records:
            return None
        ids = [r.record_id for r in records]
        batch_id = stable_batch_id(CHANGES, destination, ids)
        tx.run(
            "UPDATE outbox SET batch_id = $batch WHERE change_id IN (SELECT record_id FROM {ids})",
            {"batch": batch_id},
            ids=_id_rows(tx, "ids", ids),
        )
        return self._new_batch(tx, destination, CHANGES, audience_, op, batch_id, records, now)

    def _claim_conversions(
        self, tx: Tx, destination: str, max_records: int, now: datetime
    ) -> ClaimedBatch | None:
        rows = tx.run(
            f"SELECT c.conversion_id {_CLAIMABLE_CONVERSIONS} ORDER BY c.conversion_id "
            "LIMIT $limit{skip_locked}",
            {"destination": destination, "limit": max_records},
        )
        ids = [int(row[0]) for row in rows]
        if not ids:
            return None
        records = self._records(tx, CONVERSIONS, ids)
        batch_id = stable_batch_id(CONVERSIONS, destination, ids)
        fixed = tx.rows(
            "fixed",
            [("record_id", "bigint"), ("identifiers", "text")],
            [[r.record_id for r in records], [json_text(r.identifiers) for r in records]],
        )
        tx.run(
            "UPDATE conversion_outbox SET batch_id = $batch, "
            "identifiers = fixed.identifiers::{json} FROM {fixed} "
            "WHERE conversion_outbox.conversion_id = fixed.record_id",
            {"batch": batch_id},
            fixed=fixed,
        )
        return self._new_batch(tx, destination, CONVERSIONS, None, None, batch_id, records, now)

    def _new_batch(
        self,
        tx: Tx,
        destination: str,
        kind: str,
        audience: str | None,
        op: str | None,
        batch_id: str,
        records: tuple[OutboxRecord, ...],
        now: datetime,
    ) -> ClaimedBatch:
        """Record a new batch, held by this worker until it settles."""
        tx.run(
            _NEW_BATCH,
            {
                "batch": batch_id,
                "destination": destination,
                "audience": audience,
                "kind": kind,
                "op": op,
                "records": len(records),
                "now": now,
            },
        )
        tx.hold(_held_key(batch_id))
        return ClaimedBatch(batch_id, destination, audience, kind, op, 0, None, records)

    def _records(self, tx: Tx, kind: str, ids: Sequence[int]) -> tuple[OutboxRecord, ...]:
        """Records of `ids` with their identifiers (fixed when planned; looked up if missing)."""
        relation = _id_rows(tx, "ids", ids)
        rows = tx.run(_CHANGE_ROWS if kind == CHANGES else _CONVERSION_ROWS, ids=relation)
        found: dict[int, object] = {}
        if any(row[5] is None for row in rows):
            table, id_col = record_table(kind)
            found = {
                int(r): j for r, j in tx.run(_IDENTIFIERS, ids=relation, table=table, id_col=id_col)
            }
        return tuple(_record(row, found) for row in rows)

    def _load(self, tx: Tx, batch_id: str) -> ClaimedBatch:
        rows = tx.run(
            "SELECT destination, audience, kind, op, attempts, first_attempt_at, "
            "backoff_attempts FROM sync_batches WHERE batch_id = $batch",
            {"batch": batch_id},
        )
        destination, audience, kind, op, attempts, first, backoff = rows[0]
        table, id_col = record_table(kind)
        ids = [
            int(r[0])
            for r in tx.run(
                f"SELECT {id_col} FROM {table} WHERE batch_id = $batch ORDER BY {id_col}",
                {"batch": batch_id},
            )
        ]
        records = self._records(tx, kind, ids)
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
        with self.sql.transaction() as tx:
            batches: list[ClaimedBatch] = []
            for audience_, op, ids in self._form(tx, destination, kind, max_records, audience):
                records = self._records(tx, kind, ids)
                batch_id = "dry-" + stable_batch_id(kind, destination, ids)
                batches.append(
                    ClaimedBatch(batch_id, destination, audience_, kind, op, 0, None, records)
                )
            return batches

    def _form(
        self, tx: Tx, destination: str, kind: str, max_records: int, audience: str | None
    ) -> list[tuple[str | None, str | None, list[int]]]:
        """Group claimable records into batches as claims would: (audience, op, ids)."""
        if kind == CONVERSIONS:
            rows = tx.run(
                f"SELECT c.conversion_id {_CLAIMABLE_CONVERSIONS} ORDER BY c.conversion_id",
                {"destination": destination},
            )
            ids = [int(r[0]) for r in rows]
            return [(None, None, ids[i : i + max_records]) for i in range(0, len(ids), max_records)]
        rows = tx.run(
            f"SELECT o.audience, o.op, o.change_id {_CLAIMABLE} ORDER BY o.change_id",
            {"destination": destination, "audience": audience},
            flight=self._flight(tx, destination),
        )
        groups: dict[tuple[str, str], list[int]] = {}
        for aud, op, change_id in rows:
            groups.setdefault((str(aud), str(op)), []).append(int(change_id))
        formed: list[tuple[str | None, str | None, list[int]]] = []
        for (aud, op), ids in sorted(groups.items(), key=lambda item: item[1][0]):
            formed += [(aud, op, ids[i : i + max_records]) for i in range(0, len(ids), max_records)]
        return formed

    # -- settling -------------------------------------------------------------------------

    @contextmanager
    def _settling(self, batch: ClaimedBatch) -> Iterator[Tx | None]:
        """A transaction over a held batch, its hold released once committed (or failed).

        Yields None when the batch is no longer there (another worker settled it after this
        one's hold lapsed with its connection): nothing is recorded twice.
        """
        try:
            with self.sql.transaction() as tx:
                there = tx.run(
                    "SELECT 1 FROM sync_batches WHERE batch_id = $batch{for_update}",
                    {"batch": batch.batch_id},
                )
                yield tx if there else None
        finally:
            self.sql.release(_held_key(batch.batch_id))

    def resolve(self, batch: ClaimedBatch, resolution: Resolution, now: datetime) -> None:
        with self._settling(batch) as tx:
            if tx is None:
                return
            if batch.kind == CHANGES:
                self._resolve_changes(tx, batch, resolution, now)
            else:
                self._resolve_conversions(tx, batch, resolution, now)
            rejected = sum(1 for r in batch.records if r.record_id in resolution.rejected)
            retried = sum(1 for r in batch.records if r.record_id in resolution.retry)
            tx.run(
                "INSERT INTO batch_results (batch_id, destination, audience, kind, op, records, "
                "acknowledged, rejected, attempts, resolved_at, stats) VALUES ($batch, "
                "$destination, $audience, $kind, $op, $records, $acknowledged, $rejected, "
                "$attempts, $now, $stats) "
                "ON CONFLICT (batch_id) DO UPDATE SET records = excluded.records, "
                "acknowledged = excluded.acknowledged, rejected = excluded.rejected, "
                "attempts = excluded.attempts, resolved_at = excluded.resolved_at, "
                "stats = excluded.stats",
                {
                    "batch": batch.batch_id,
                    "destination": batch.destination,
                    "audience": batch.audience,
                    "kind": batch.kind,
                    "op": batch.op,
                    "records": len(batch.records),
                    "acknowledged": len(batch.records) - rejected - retried,
                    "rejected": rejected,
                    "attempts": batch.attempts + 1,
                    "now": now,
                    "stats": json_text(resolution.stats),
                },
            )
            tx.run("DELETE FROM sync_batches WHERE batch_id = $batch", {"batch": batch.batch_id})
            if resolution.recovered_by is not None:
                _restart_backoff(tx, batch.destination, resolution.recovered_by)
            if resolution.retry:
                self._split_retries(tx, batch, resolution, now)

    def _split_retries(
        self, tx: Tx, batch: ClaimedBatch, resolution: Resolution, now: datetime
    ) -> None:
        """Records a destination asked to retry become a batch of their own, tried again at
        `retry_at`; the destination's other work goes on meanwhile."""
        table, id_col = record_table(batch.kind)
        rows = tx.run(
            f"SELECT {id_col} FROM {table} WHERE batch_id = $batch ORDER BY {id_col}",
            {"batch": batch.batch_id},
        )
        ids = [int(r[0]) for r in rows]
        if not ids:
            return
        retry_id = stable_batch_id(batch.kind, batch.destination, ids)
        row = retry_batch_row(batch, resolution, retry_id, len(ids), now)
        tx.run(
            f"UPDATE {table} SET batch_id = $retry WHERE batch_id = $batch",
            {"retry": retry_id, "batch": batch.batch_id},
        )
        names = [
            "batch",
            "destination",
            "audience",
            "kind",
            "op",
            "records",
            "created_at",
            "attempts",
            "first_attempt_at",
            "next_attempt_at",
            "last_error",
            "backoff_attempts",
        ]
        tx.run(
            "INSERT INTO sync_batches (batch_id, destination, audience, kind, op, records, "
            "created_at, attempts, first_attempt_at, next_attempt_at, last_error, "
            "backoff_attempts, holds_destination) VALUES ("
            + ", ".join(f"${n}" for n in names)
            + ", false)",
            dict(zip(names, row, strict=True)),
        )

    def _log(
        self, tx: Tx, batch: ClaimedBatch, resolution: Resolution, now: datetime
    ) -> list[OutboxRecord]:
        """Write delivery_log rows for resolved records; return those resolved."""
        done = [r for r in batch.records if r.record_id not in resolution.retry]
        log = tx.rows(
            "log",
            [
                ("record_id", "bigint"),
                ("profile_id", "text"),
                ("op", "text"),
                ("outcome", "text"),
                ("reason", "text"),
            ],
            [
                [r.record_id for r in done],
                [r.profile_id for r in done],
                [r.op for r in done],
                [resolution.outcome(r.record_id) for r in done],
                [resolution.rejected.get(r.record_id) for r in done],
            ],
        )
        tx.run(
            "INSERT INTO delivery_log (record_id, kind, batch_id, destination, audience, "
            "profile_id, op, outcome, reason, attempts, resolved_at) "
            "SELECT record_id, $kind, $batch, $destination, $audience, profile_id, op, outcome, "
            "reason, $attempts, $now FROM {log}",
            {
                "kind": batch.kind,
                "batch": batch.batch_id,
                "destination": batch.destination,
                "audience": batch.audience,
                "attempts": batch.attempts + 1,
                "now": now,
            },
            log=log,
        )
        return done

    def _resolve_changes(
        self, tx: Tx, batch: ClaimedBatch, resolution: Resolution, now: datetime
    ) -> None:
        retry = list(resolution.retry)
        retrying = _id_rows(tx, "retrying", retry)
        if retry:
            _release_retries(tx, batch, retrying)
        done = self._log(tx, batch, resolution, now)
        keep = [r for r in done if r.op == "add"]
        dry_removes = resolution.dry_run and batch.op == "remove"
        key = {
            "batch": batch.batch_id,
            "destination": batch.destination,
            "audience": batch.audience,
            "now": now,
            "dry_removes": dry_removes,
        }
        resolved = tx.rows("resolved", [("profile_id", "text")], [[r.profile_id for r in done]])
        if dry_removes:  # the destination still holds its members: a dry run wrote the removal
            tx.run(
                f"UPDATE destination_state SET status = '{DRY_REMOVED}', batch_id = $batch, "
                "updated_at = $now WHERE destination = $destination AND audience = $audience "
                f"AND status = '{MEMBER}' AND profile_id IN (SELECT profile_id FROM {{resolved}})",
                key,
                resolved=resolved,
            )
        tx.run(
            "DELETE FROM destination_state WHERE destination = $destination "
            "AND audience = $audience AND profile_id IN (SELECT profile_id FROM {resolved}) "
            f"AND NOT ($dry_removes AND status = '{DRY_REMOVED}')",
            key,
            resolved=resolved,
        )
        state = tx.rows(
            "state",
            [
                ("profile_id", "text"),
                ("status", "text"),
                ("holdout", "boolean"),
                ("identifiers", "text"),
                ("reason", "text"),
                ("change_id", "bigint"),
            ],
            [
                [r.profile_id for r in keep],
                [resolution.state(r.record_id) for r in keep],
                [r.holdout for r in keep],
                [json_text(r.identifiers) for r in keep],
                [resolution.rejected.get(r.record_id) for r in keep],
                [r.record_id for r in keep],
            ],
        )
        tx.run(
            "INSERT INTO destination_state (destination, audience, profile_id, status, "
            "holdout, identifiers, reason, change_id, batch_id, updated_at) "
            "SELECT $destination, $audience, profile_id, status, holdout, identifiers::{json}, "
            "reason, change_id, $batch, $now FROM {state}",
            key,
            state=state,
        )
        tx.run(
            "DELETE FROM outbox WHERE batch_id = $batch "
            "AND change_id NOT IN (SELECT record_id FROM {retrying})",
            key,
            retrying=retrying,
        )

    def _resolve_conversions(
        self, tx: Tx, batch: ClaimedBatch, resolution: Resolution, now: datetime
    ) -> None:
        done = self._log(tx, batch, resolution, now)
        rejected = [r for r in done if r.record_id in resolution.rejected]
        _dead(tx, batch, rejected, resolution.rejected, now)
        tx.run(
            "DELETE FROM conversion_outbox WHERE batch_id = $batch "
            "AND conversion_id NOT IN (SELECT record_id FROM {retrying})",
            {"batch": batch.batch_id},
            retrying=_id_rows(tx, "retrying", list(resolution.retry)),
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
        with self._settling(batch) as tx:
            if tx is None:
                return
            tx.run(
                "UPDATE sync_batches SET attempts = attempts + 1, "
                "first_attempt_at = coalesce(first_attempt_at, $now), "
                "next_attempt_at = $next, last_error = $error, holds_destination = $holds, "
                "backoff_attempts = coalesce($backoff::integer, backoff_attempts + 1) "
                "WHERE batch_id = $batch",
                {
                    "now": now,
                    "next": next_attempt,
                    "error": error,
                    "holds": holds_destination,
                    "backoff": backoff_attempts,
                    "batch": batch.batch_id,
                },
            )
            if recovered_by is not None:
                _restart_backoff(tx, batch.destination, recovered_by)

    def dead_letter(self, batch: ClaimedBatch, reason: str, now: datetime) -> None:
        with self._settling(batch) as tx:
            if tx is None:
                return
            _dead(tx, batch, batch.records, {}, now, reason)
            table, _ = record_table(batch.kind)
            tx.run(f"DELETE FROM {table} WHERE batch_id = $batch", {"batch": batch.batch_id})
            tx.run("DELETE FROM sync_batches WHERE batch_id = $batch", {"batch": batch.batch_id})

    def retry_dead(self, destination: str | None, audience: str | None, now: datetime) -> int:
        where = (
            "retried_at IS NULL AND ($destination::text IS NULL OR destination = $destination) "
            "AND ($audience::text IS NULL OR audience = $audience)"
        )
        params = {"destination": destination, "audience": audience, "now": now}
        with self.sql.transaction() as tx:
            # Conversions come back through the ledger: forget them there to queue them again,
            # and where their destinations' planning had reached, so it reads every event again.
            forgotten = [
                str(d)
                for (d,) in tx.run(
                    f"SELECT DISTINCT destination FROM dead_letters WHERE kind = 'conversions' "
                    f"AND {where}",
                    params,
                )
            ]
            self._conversions.forget(tx, forgotten)
            tx.run(
                "DELETE FROM conversion_ledger WHERE EXISTS (SELECT 1 FROM dead_letters d "
                "WHERE d.kind = 'conversions' AND d.retried_at IS NULL "
                "AND ($destination::text IS NULL OR d.destination = $destination) "
                "AND ($audience::text IS NULL OR d.audience = $audience) "
                "AND conversion_ledger.destination = d.destination "
                "AND conversion_ledger.conversion_id = d.record_id)",
                params,
            )
            return tx.changed(f"UPDATE dead_letters SET retried_at = $now WHERE {where}", params)

    # -- reading --------------------------------------------------------------------------

    def status(
        self,
        routes: Sequence[Route],
        conversion_destinations: Sequence[str],
        accepts: Mapping[tuple[str, str], Sequence[str]],
    ) -> list[RouteStatus]:
        found: list[RouteStatus] = []
        with self.sql.transaction() as tx:
            if routes:
                accepted = tx.rows(
                    "accepts",
                    [("destination", "text"), ("audience", "text"), ("kind", "text")],
                    [
                        [d for (d, _), ks in accepts.items() for _ in ks],
                        [a for (_, a), ks in accepts.items() for _ in ks],
                        [k for ks in accepts.values() for k in ks],
                    ],
                )
                rows = tx.run(_STATUS_SQL, routes=route_rows(tx, routes), accepts=accepted)
                found += [RouteStatus.from_row(row) for row in rows]
            for destination in conversion_destinations:
                row = tx.run(_CONVERSION_STATUS_SQL, {"destination": destination})[0]
                found.append(RouteStatus.from_row((destination, None, *row)))
        return found

    def log_run(self, run: SyncRunRecord) -> int:
        with self.sql.transaction() as tx:
            rows = tx.run(
                "INSERT INTO sync_runs (run_id, started_at, duration_ms, dry_run, destination, "
                "audience, planned, batches, acknowledged, rejected, retrying, dead_lettered) "
                "SELECT {run_id}, $started_at, $duration_ms, $dry_run, $destination, "
                "$audience, $planned, $batches, $acknowledged, $rejected, $retrying, "
                "$dead_lettered RETURNING run_id",
                {
                    "started_at": run.started_at,
                    "duration_ms": run.duration_ms,
                    "dry_run": run.dry_run,
                    "destination": run.destination,
                    "audience": run.audience,
                    "planned": run.planned,
                    "batches": run.batches,
                    "acknowledged": run.acknowledged,
                    "rejected": run.rejected,
                    "retrying": run.retrying,
                    "dead_lettered": run.dead_lettered,
                },
                run_id=tx.number("sync_run", "1"),
            )
            tx.numbered("sync_run", 1)
        return int(rows[0][0])

    def runs(self, limit: int = 10) -> list[SyncRunRecord]:
        with self.sql.transaction() as tx:
            rows = tx.run(
                "SELECT started_at, duration_ms, dry_run, destination, audience, planned, "
                "batches, acknowledged, rejected, retrying, dead_lettered FROM sync_runs "
                "ORDER BY run_id DESC LIMIT $limit",
                {"limit": limit},
            )
        return [SyncRunRecord(*row) for row in rows]

    def acknowledged(self, destination: str, audience: str) -> dict[str, bool]:
        with self.sql.transaction() as tx:
            rows = tx.run(
                "SELECT profile_id, holdout FROM destination_state WHERE destination = "
                "$destination AND audience = $audience AND status = 'member'",
                {"destination": destination, "audience": audience},
            )
        return {str(p): bool(h) for p, h in rows}


def _record(row: Sequence[object], found: Mapping[int, object]) -> OutboxRecord:
    record_id, profile_id, op, holdout, at, fixed, conversion = row
    identifiers = fixed if fixed is not None else found.get(int(str(record_id)))
    return OutboxRecord(
        int(str(record_id)),
        str(profile_id),
        str(op),
        bool(holdout),
        at,  # type: ignore[arg-type]
        as_json(identifiers),
        as_json(conversion),
    )


def _release_retries(tx: Tx, batch: ClaimedBatch, retrying: str) -> None:
    """A record to retry gives way to a newer waiting change of the same profile.

    The waiting rows are locked first (in id order, as a plan locks them), so a plan deciding
    about them finishes before, or starts after, this decision.
    """
    tx.run(
        f"""SELECT w.change_id FROM outbox w
        WHERE w.batch_id IS NULL AND EXISTS (
            SELECT 1 FROM outbox o WHERE o.batch_id = $batch
              AND o.change_id IN (SELECT record_id FROM {{retrying}}) AND {key_match("w", "o")})
        ORDER BY w.change_id{{for_update}}""",
        {"batch": batch.batch_id},
        retrying=retrying,
    )
    tx.run(
        f"""DELETE FROM outbox WHERE batch_id = $batch
        AND change_id IN (SELECT record_id FROM {{retrying}})
        AND EXISTS (SELECT 1 FROM outbox w
                    WHERE w.batch_id IS NULL AND {key_match("w", "outbox")})""",
        {"batch": batch.batch_id},
        retrying=retrying,
    )


def _dead(
    tx: Tx,
    batch: ClaimedBatch,
    records: Sequence[OutboxRecord],
    reasons: Mapping[int, str],
    now: datetime,
    default_reason: str = "",
) -> None:
    if not records:
        return
    dead = tx.rows(
        "dead",
        [("record_id", "bigint"), ("profile_id", "text"), ("op", "text"), ("reason", "text")],
        [
            [r.record_id for r in records],
            [r.profile_id for r in records],
            [r.op for r in records],
            [reasons.get(r.record_id, default_reason) for r in records],
        ],
    )
    tx.run(
        "INSERT INTO dead_letters (record_id, kind, destination, audience, profile_id, op, "
        "reason, attempts, first_attempt_at, dead_at, batch_id, retried_at) "
        "SELECT record_id, $kind, $destination, $audience, profile_id, op, reason, $attempts, "
        "$first, $now, $batch, NULL FROM {dead}",
        {
            "kind": batch.kind,
            "destination": batch.destination,
            "audience": batch.audience,
            "attempts": batch.attempts + 1,
            "first": batch.first_attempt_at or now,
            "now": now,
            "batch": batch.batch_id,
        },
        dead=dead,
    )


def _restart_backoff(tx: Tx, destination: str, by: datetime) -> None:
    """The destination answered, so it is up: its batches backing off start their backoff over
    and are tried again by `by` (those a server's word or a pause holds keep theirs).

    Rows another worker is settling right now are skipped, not waited for: two settlements
    restarting each other's batches would otherwise wait on each other.
    """
    tx.run(
        "UPDATE sync_batches SET backoff_attempts = 0, next_attempt_at = least(next_attempt_at, "
        "$by) WHERE batch_id IN (SELECT batch_id FROM sync_batches WHERE destination = "
        "$destination AND attempts > 0 AND NOT holds_destination{skip_locked})",
        {"by": by, "destination": destination},
    )


_STATUS_SQL = f"""
WITH route_list AS (SELECT * FROM {{routes}}),
desired AS (
    SELECT r.destination, r.audience, m.profile_id
    FROM route_list r JOIN memberships m ON m.kind = 'audience' AND m.name = r.audience
    WHERE m.exited_at IS NULL AND (r.include_holdout OR NOT m.holdout)),
matchable AS (
    SELECT d.destination, d.audience, count(DISTINCT d.profile_id) AS n
    FROM desired d LEFT JOIN profile_aliases a ON a.profile_id = d.profile_id
    JOIN identities x ON x.profile_id = coalesce(a.canonical_id, d.profile_id)
    WHERE NOT EXISTS (SELECT 1 FROM destination_state s
                      WHERE s.status = 'rejected' AND {key_match("s", "d")})
      AND EXISTS (SELECT 1 FROM {{accepts}} WHERE accepts.destination = d.destination
                  AND accepts.audience = d.audience AND accepts.kind = x.kind)
    GROUP BY d.destination, d.audience),
batches AS (
    SELECT destination, audience, sum(records) FILTER (WHERE attempts > 0) AS retrying,
           min(next_attempt_at) AS next_attempt,
           (array_agg(last_error ORDER BY next_attempt_at DESC)
               FILTER (WHERE last_error IS NOT NULL))[1] AS last_error
    FROM sync_batches WHERE kind = 'changes' GROUP BY destination, audience)
""" + STATUS_SELECT.format(routes="route_list")

_CONVERSION_STATUS_SQL = """
SELECT
    (SELECT count(*) FROM conversion_ledger WHERE destination = $destination),
    (SELECT count(*) FROM delivery_log WHERE kind = 'conversions'
        AND destination = $destination AND outcome = 'acknowledged'),
    (SELECT count(*) FROM conversion_outbox WHERE destination = $destination),
    (SELECT coalesce(sum(records), 0) FROM sync_batches WHERE kind = 'conversions'
        AND destination = $destination AND attempts > 0),
    (SELECT count(*) FROM delivery_log WHERE kind = 'conversions'
        AND destination = $destination AND outcome = 'rejected'),
    (SELECT count(*) FROM dead_letters WHERE kind = 'conversions'
        AND destination = $destination AND retried_at IS NULL AND batch_id NOT IN (
            SELECT batch_id FROM delivery_log WHERE kind = 'conversions'
            AND destination = $destination AND outcome = 'rejected')),
    0,
    (SELECT count(*) FROM delivery_log WHERE kind = 'conversions'
        AND destination = $destination AND outcome = 'dry_run'),
    (SELECT max(resolved_at) FROM delivery_log WHERE kind = 'conversions'
        AND destination = $destination),
    NULL::timestamptz, NULL::text
"""
