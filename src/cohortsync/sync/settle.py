"""Settling a claimed batch: what the destination answered, recorded in one transaction.

Adds leave their state (member, rejected, dry run); every resolved record a delivery-log row;
refused conversions a dead letter; records the destination asked to retry a batch of their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from cohortsync.store.outbox import (
    DRY_REMOVED,
    MEMBER,
    ClaimedBatch,
    OutboxRecord,
    Resolution,
    key_match,
    record_table,
    retry_batch_row,
    stable_batch_id,
)
from cohortsync.store.sql import Tx, json_text
from cohortsync.sync.claims import id_rows


def split_retries(tx: Tx, batch: ClaimedBatch, resolution: Resolution, now: datetime) -> None:
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


def log_delivery(
    tx: Tx, batch: ClaimedBatch, resolution: Resolution, now: datetime
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


def settle_changes(tx: Tx, batch: ClaimedBatch, resolution: Resolution, now: datetime) -> None:
    retry = list(resolution.retry)
    retrying = id_rows(tx, "retrying", retry)
    if retry:
        release_retries(tx, batch, retrying)
    done = log_delivery(tx, batch, resolution, now)
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


def settle_conversions(tx: Tx, batch: ClaimedBatch, resolution: Resolution, now: datetime) -> None:
    done = log_delivery(tx, batch, resolution, now)
    rejected = [r for r in done if r.record_id in resolution.rejected]
    dead(tx, batch, rejected, resolution.rejected, now)
    tx.run(
        "DELETE FROM conversion_outbox WHERE batch_id = $batch "
        "AND conversion_id NOT IN (SELECT record_id FROM {retrying})",
        {"batch": batch.batch_id},
        retrying=id_rows(tx, "retrying", list(resolution.retry)),
    )


def release_retries(tx: Tx, batch: ClaimedBatch, retrying: str) -> None:
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


def dead(
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


def restart_backoff(tx: Tx, destination: str, by: datetime) -> None:
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


def settle_answered(
    tx: Tx, answered: Sequence[tuple[ClaimedBatch, Resolution]], now: datetime
) -> None:
    """Several batches of changes answered whole (nothing to retry, no dry-run removal),
    recorded in one statement per table whatever their number: what delivery costs the store
    per batch is then a share of a transaction, not two of them."""
    done = [(b, res, r) for b, res in answered for r in b.records]
    log = tx.rows(
        "log",
        [
            ("record_id", "bigint"),
            ("batch_id", "text"),
            ("destination", "text"),
            ("audience", "text"),
            ("profile_id", "text"),
            ("op", "text"),
            ("outcome", "text"),
            ("reason", "text"),
            ("attempts", "bigint"),
            ("status", "text"),
            ("holdout", "boolean"),
        ],
        [
            [r.record_id for _, _, r in done],
            [b.batch_id for b, _, _ in done],
            [b.destination for b, _, _ in done],
            [b.audience for b, _, _ in done],
            [r.profile_id for _, _, r in done],
            [r.op for _, _, r in done],
            [res.outcome(r.record_id) for _, res, r in done],
            [res.rejected.get(r.record_id) for _, res, r in done],
            [b.attempts + 1 for b, _, _ in done],
            [res.state(r.record_id) for _, res, r in done],
            [r.holdout for _, _, r in done],
        ],
    )
    statements = (
        "INSERT INTO delivery_log (record_id, kind, batch_id, destination, audience, "
        "profile_id, op, outcome, reason, attempts, resolved_at) SELECT record_id, 'changes', "
        "batch_id, destination, audience, profile_id, op, outcome, reason, attempts, $now "
        "FROM {log}",
        "DELETE FROM destination_state WHERE EXISTS (SELECT 1 FROM {log} "
        f"WHERE {key_match('log', 'destination_state')})",
        # what an add sent is what its outbox row holds (fixed at planning)
        "INSERT INTO destination_state (destination, audience, profile_id, status, holdout, "
        "identifiers, reason, change_id, batch_id, updated_at) SELECT log.destination, "
        "log.audience, log.profile_id, log.status, log.holdout, "
        "coalesce(o.identifiers, '{{}}'::{json}), log.reason, log.record_id, log.batch_id, $now "
        "FROM {log} JOIN outbox o ON o.change_id = log.record_id WHERE log.op = 'add'",
        "DELETE FROM outbox WHERE change_id IN (SELECT record_id FROM {log})",
    )
    for statement in statements:
        tx.run(statement, {"now": now}, log=log)
    results = [
        (b, res, sum(1 for r in b.records if r.record_id in res.rejected)) for b, res in answered
    ]
    tx.run(
        "INSERT INTO batch_results (batch_id, destination, audience, kind, op, records, "
        "acknowledged, rejected, attempts, resolved_at, stats) SELECT batch_id, destination, "
        "audience, 'changes', op, records, records - rejected, rejected, attempts, $now, "
        "stats::{json} FROM {results} ON CONFLICT (batch_id) DO UPDATE SET "
        "records = excluded.records, acknowledged = excluded.acknowledged, "
        "rejected = excluded.rejected, attempts = excluded.attempts, "
        "resolved_at = excluded.resolved_at, stats = excluded.stats",
        {"now": now},
        results=tx.rows(
            "results",
            [
                ("batch_id", "text"),
                ("destination", "text"),
                ("audience", "text"),
                ("op", "text"),
                ("records", "bigint"),
                ("rejected", "bigint"),
                ("attempts", "bigint"),
                ("stats", "text"),
            ],
            [
                [b.batch_id for b, _, _ in results],
                [b.destination for b, _, _ in results],
                [b.audience for b, _, _ in results],
                [b.op for b, _, _ in results],
                [len(b.records) for b, _, _ in results],
                [n for _, _, n in results],
                [b.attempts + 1 for b, _, _ in results],
                [json_text(res.stats) for _, res, _ in results],
            ],
        ),
    )
    tx.run(
        "DELETE FROM sync_batches WHERE batch_id IN (SELECT batch_id FROM {gone})",
        gone=tx.rows("gone", [("batch_id", "text")], [[b.batch_id for b, _ in answered]]),
    )
