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
from datetime import datetime, timedelta
from typing import Protocol

import orjson

from cohortsync.store.outbox import (
    CHANGES,
    STATUS_SELECT,
    AudienceSizeRow,
    ClaimedBatch,
    ConversionRoute,
    OutboxStore,
    PlanCounts,
    Resolution,
    Route,
    RouteStatus,
    SyncRunRecord,
    key_match,
    record_table,
    stable_batch_id,
)
from cohortsync.store.sql import SqlStore, Tx, as_json, json_text
from cohortsync.sync import claims, planner, settle


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
                if _held(tx, destination, now):
                    return None
                claimed = claims.due_batch(self.sql, tx, destination, kind, now, audience)
                if claimed is None and kind == CHANGES:
                    claimed = claims.claim_changes(tx, destination, max_records, now, audience)
                elif claimed is None:
                    claimed = claims.claim_conversions(tx, destination, max_records, now)
                return claimed
        except BaseException:
            if claimed is not None:
                self.sql.release(claims.held_key(claimed.batch_id))
            raise

    def peek(
        self, destination: str, kind: str, max_records: int, audience: str | None = None
    ) -> list[ClaimedBatch]:
        with self.sql.transaction() as tx:
            batches: list[ClaimedBatch] = []
            for audience_, op, ids in claims.form_batches(
                tx, destination, kind, max_records, audience
            ):
                records = claims.read_records(tx, kind, ids)
                batch_id = "dry-" + stable_batch_id(kind, destination, ids)
                batches.append(
                    ClaimedBatch(batch_id, destination, audience_, kind, op, 0, None, records)
                )
            return batches

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
            self.sql.release(claims.held_key(batch.batch_id))

    def resolve(self, batch: ClaimedBatch, resolution: Resolution, now: datetime) -> None:
        with self._settling(batch) as tx:
            if tx is not None:
                _settle_one(tx, batch, resolution, now)

    def claim_ahead(
        self,
        destination: str,
        max_records: int,
        now: datetime,
        audience: str | None = None,
        batches: int = 1,
    ) -> list[ClaimedBatch]:
        """Up to `batches` batches of changes in one transaction: a due one alone if any (a
        retry goes first), else new ones formed as successive claims would form them."""
        claimed: list[ClaimedBatch] = []
        try:
            with self.sql.transaction() as tx:
                tx.lock("claim:" + destination)
                if _held(tx, destination, now):
                    return []
                due = claims.due_batch(self.sql, tx, destination, CHANGES, now, audience)
                if due is not None:
                    claimed = [due]
                elif batches == 1:
                    one = claims.claim_changes(tx, destination, max_records, now, audience)
                    claimed = [] if one is None else [one]
                else:
                    claimed = claims.claim_changes_ahead(
                        tx, destination, max_records, now, audience, batches
                    )
                return claimed
        except BaseException:
            self.release(claimed)
            raise

    def release(self, batches: Sequence[ClaimedBatch]) -> None:
        """Give back claimed batches unsent: they stay due, for the next claim to take."""
        for batch in batches:
            self.sql.release(claims.held_key(batch.batch_id))

    def resolve_many(
        self, answered: Sequence[tuple[ClaimedBatch, Resolution]], now: datetime
    ) -> None:
        """Record several answers in one transaction (those of batches still there)."""
        if not answered:
            return
        try:
            with self.sql.transaction() as tx:
                there = {
                    str(row[0])
                    for row in tx.run(
                        "SELECT batch_id FROM sync_batches "
                        "WHERE batch_id IN (SELECT batch_id FROM {mine}) ORDER BY batch_id"
                        "{for_update}",
                        mine=tx.rows(
                            "mine", [("batch_id", "text")], [[b.batch_id for b, _ in answered]]
                        ),
                    )
                }
                present = [(b, r) for b, r in answered if b.batch_id in there]
                whole = [
                    (b, r)
                    for b, r in present
                    if b.kind == CHANGES and not r.retry and not (r.dry_run and b.op == "remove")
                ]
                if whole:
                    settle.settle_answered(tx, whole, now)
                recovered: dict[str, datetime] = {}
                for batch, resolution in present:
                    if resolution.recovered_by is not None:
                        at = recovered.get(batch.destination, resolution.recovered_by)
                        recovered[batch.destination] = min(at, resolution.recovered_by)
                for destination, by in sorted(recovered.items()):  # before retries split off
                    settle.restart_backoff(tx, destination, by)
                settled = {b.batch_id for b, _ in whole}
                for batch, resolution in present:
                    if batch.batch_id not in settled:
                        _settle_one(tx, batch, resolution, now, restart=False)
        finally:
            self.release([b for b, _ in answered])

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
                settle.restart_backoff(tx, batch.destination, recovered_by)

    def dead_letter(self, batch: ClaimedBatch, reason: str, now: datetime) -> None:
        with self._settling(batch) as tx:
            if tx is None:
                return
            settle.dead(tx, batch, batch.records, {}, now, reason)
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

    def add_batch_stats(
        self, stats: Mapping[str, Mapping[str, int]], now: datetime | None = None
    ) -> None:
        with self.sql.transaction() as tx:
            routes: dict[tuple[str, str], _Diagnosed] = {}
            for batch_id, figures in stats.items():
                rows = tx.run(
                    "SELECT stats, destination, audience FROM batch_results "
                    "WHERE batch_id = $batch",
                    {"batch": batch_id},
                )
                if not rows:
                    continue
                raw, destination, audience = rows[0]
                held = _stats_of(raw)
                held.update(figures)
                tx.run(
                    "UPDATE batch_results SET stats = $stats WHERE batch_id = $batch",
                    {"stats": json_text(held), "batch": batch_id},
                )
                if audience is not None:
                    routes.setdefault((str(destination), str(audience)), _Diagnosed()).add(figures)
            for (destination, audience), found in sorted(routes.items()):
                tx.run(
                    _DIAGNOSED_SQL,
                    {
                        "destination": destination,
                        "audience": audience,
                        "low": found.low,
                        "high": found.high,
                        "errors": found.errors,
                        "now": now,
                    },
                )

    def sizes_due(
        self, destination: str, every: float, now: datetime, audience: str | None = None
    ) -> list[str]:
        with self.sql.transaction() as tx:
            rows = tx.run(
                _SIZES_DUE_SQL,
                {
                    "destination": destination,
                    "audience": audience,
                    "since": now - timedelta(seconds=every),
                },
            )
        return [str(a) for (a,) in rows]

    def record_sizes(
        self, destination: str, sizes: Sequence[AudienceSizeRow], now: datetime
    ) -> None:
        if not sizes:
            return
        with self.sql.transaction() as tx:
            read = tx.rows(
                "sizes",
                [("audience", "text"), ("low", "bigint"), ("high", "bigint"), ("op", "text")],
                [[row[i] for row in sizes] for i in range(4)],
            )
            tx.run(_SIZES_SQL, {"destination": destination, "now": now}, sizes=read)

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
                rows = tx.run(_STATUS_SQL, routes=planner.route_rows(tx, routes), accepts=accepted)
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

    def held(self, destination: str, audience: str) -> list[tuple[str, dict[str, str]]]:
        with self.sql.transaction() as tx:
            rows = tx.run(
                "SELECT profile_id, identifiers FROM destination_state WHERE destination = "
                "$destination AND audience = $audience AND status = 'member' AND NOT holdout "
                "ORDER BY profile_id",
                {"destination": destination, "audience": audience},
            )
        return [(str(p), {str(k): str(v) for k, v in as_json(i).items()}) for p, i in rows]


class _Diagnosed:
    """What diagnostics just said of one route's uploads: the bucket of the last one that has
    one, and the error records of those processed (None: none was)."""

    def __init__(self) -> None:
        self.low: int | None = None
        self.high: int | None = None
        self.errors: int | None = None

    def add(self, figures: Mapping[str, int]) -> None:
        """Take one batch's figures."""
        if "match_rate_low" in figures and "match_rate_high" in figures:
            self.low, self.high = figures["match_rate_low"], figures["match_rate_high"]
        if "records_processed" in figures or "error_records" in figures:
            self.errors = (self.errors or 0) + int(figures.get("error_records", 0))


def _stats_of(raw: object) -> dict[str, int]:
    """A batch result's stats as held (JSON text on DuckDB, parsed on Postgres)."""
    if isinstance(raw, str | bytes):
        raw = orjson.loads(raw)
    if not isinstance(raw, dict):
        return {}
    return {str(k): v for k, v in raw.items() if isinstance(v, int)}


def _held(tx: Tx, destination: str, now: datetime) -> bool:
    """Whether a failed batch holding the whole destination waits for its retry time (the
    destination said when, Retry-After, or is paused)."""
    rows = tx.run(
        "SELECT count(*) FROM sync_batches WHERE destination = $destination "
        "AND attempts > 0 AND next_attempt_at > $now AND holds_destination",
        {"destination": destination, "now": now},
    )
    return bool(rows[0][0])


def _settle_one(
    tx: Tx, batch: ClaimedBatch, resolution: Resolution, now: datetime, restart: bool = True
) -> None:
    """Record one batch's answer (`restart`: and start its destination's backoff over)."""
    if batch.kind == CHANGES:
        settle.settle_changes(tx, batch, resolution, now)
    else:
        settle.settle_conversions(tx, batch, resolution, now)
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
    if restart and resolution.recovered_by is not None:
        settle.restart_backoff(tx, batch.destination, resolution.recovered_by)
    if resolution.retry:
        settle.split_retries(tx, batch, resolution, now)


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
    FROM sync_batches WHERE kind = 'changes' GROUP BY destination, audience),
invalid AS (
    SELECT x.destination, x.audience, x.resolved_at,
           CAST(x.stats ->> 'num_invalid_entries' AS BIGINT) AS entries
    FROM batch_results x JOIN route_list r
        ON r.destination = x.destination AND r.audience = x.audience
    WHERE x.kind = 'changes'),
reported AS (
    SELECT destination, audience, sum(entries) AS invalid,
           max(resolved_at) FILTER (WHERE entries IS NOT NULL) AS invalid_at
    FROM invalid GROUP BY destination, audience)
""" + STATUS_SELECT.format(routes="route_list")

_DIAGNOSED_SQL = """
INSERT INTO platform_reports (destination, audience, match_rate_low, match_rate_high,
                              error_records, diagnosed_at)
VALUES ($destination, $audience, $low, $high, $errors, $now)
ON CONFLICT (destination, audience) DO UPDATE SET
    match_rate_low = coalesce(excluded.match_rate_low, platform_reports.match_rate_low),
    match_rate_high = coalesce(excluded.match_rate_high, platform_reports.match_rate_high),
    error_records = CASE WHEN excluded.error_records IS NULL THEN platform_reports.error_records
        ELSE coalesce(platform_reports.error_records, 0) + excluded.error_records END,
    diagnosed_at = excluded.diagnosed_at
"""
"""Diagnostics of a route's uploads came in: the latest bucket, the error records added."""


_SIZES_DUE_SQL = """
SELECT DISTINCT b.audience FROM batch_results b
LEFT JOIN platform_reports p ON p.destination = b.destination AND p.audience = b.audience
WHERE b.destination = $destination AND b.kind = 'changes' AND b.audience IS NOT NULL
  AND ($audience::text IS NULL OR b.audience = $audience)
  AND (p.sized_at IS NULL OR p.sized_at <= $since)
ORDER BY b.audience
"""

_SIZES_SQL = """
INSERT INTO platform_reports (destination, audience, size_low, size_high, operation_status,
                              sized_at)
SELECT CAST($destination AS TEXT), audience, low, high, op, CAST($now AS TIMESTAMPTZ) FROM {sizes}
ON CONFLICT (destination, audience) DO UPDATE SET size_low = excluded.size_low,
    size_high = excluded.size_high, operation_status = excluded.operation_status,
    sized_at = excluded.sized_at
"""

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
