"""Claims: the batch a delivery worker takes next, and what a dry run would send.

A claim takes the oldest due batch, else forms a new one from waiting records: the oldest
waiting change picks the audience and operation, its kin (same audience and operation, no
change of the same profile in flight) join it, oldest first. On Postgres several workers claim
at once: waiting rows a plan is rewriting are skipped, and a claimed batch is held by its
worker's connection until it settles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from cohortsync.store.outbox import (
    CHANGES,
    CONVERSIONS,
    ClaimedBatch,
    OutboxRecord,
    record_table,
    stable_batch_id,
)
from cohortsync.store.sql import SqlStore, Tx, as_json, json_text


def held_key(batch_id: str) -> str:
    """The name a worker holds while it delivers a batch."""
    return "batch:" + batch_id


def id_rows(tx: Tx, name: str, ids: Sequence[int]) -> str:
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


def record(row: Sequence[Any], found: Mapping[int, object]) -> OutboxRecord:
    """An outbox row as a record; `found` holds identifiers looked up for rows without."""
    record_id, profile_id, op, holdout, at, fixed, conversion = row
    identifiers = fixed if fixed is not None else found.get(record_id)
    return OutboxRecord(
        record_id,
        profile_id,
        op,
        holdout,
        at,
        as_json(identifiers),
        as_json(conversion) if conversion is not None else {},
    )


def due_batch(
    sql: SqlStore, tx: Tx, destination: str, kind: str, now: datetime, audience: str | None
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
        if not tx.hold(held_key(str(batch_id))):
            continue
        # Resolved or deferred by its worker between the list and the lock?
        if tx.run(
            f"SELECT 1 FROM sync_batches WHERE batch_id = $batch AND {due}",
            {"batch": batch_id, "now": now},
        ):
            return load_batch(tx, str(batch_id))
        sql.release(held_key(str(batch_id)))
    return None


def flight_keys(tx: Tx, destination: str) -> str:
    keys = [str(r[0]) for r in tx.run(_FLIGHT, {"destination": destination})]
    return tx.rows("flight", [("k", "text")], [keys])


def claim_changes(
    tx: Tx, destination: str, max_records: int, now: datetime, audience: str | None
) -> ClaimedBatch | None:
    """The oldest claimable change picks audience and operation; take its kin, oldest first."""
    flight = flight_keys(tx, destination)
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
    records = tuple(record(row, {}) for row in rows)
    if not records:
        return None
    ids = [r.record_id for r in records]
    batch_id = stable_batch_id(CHANGES, destination, ids)
    tx.run(
        "UPDATE outbox SET batch_id = $batch WHERE change_id IN (SELECT record_id FROM {ids})",
        {"batch": batch_id},
        ids=id_rows(tx, "ids", ids),
    )
    return new_batch(tx, destination, CHANGES, audience_, op, batch_id, records, now)


def claim_conversions(
    tx: Tx, destination: str, max_records: int, now: datetime
) -> ClaimedBatch | None:
    rows = tx.run(
        f"SELECT c.conversion_id {_CLAIMABLE_CONVERSIONS} ORDER BY c.conversion_id "
        "LIMIT $limit{skip_locked}",
        {"destination": destination, "limit": max_records},
    )
    ids = [int(row[0]) for row in rows]
    if not ids:
        return None
    records = read_records(tx, CONVERSIONS, ids)
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
    return new_batch(tx, destination, CONVERSIONS, None, None, batch_id, records, now)


def new_batch(
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
    tx.hold(held_key(batch_id))
    return ClaimedBatch(batch_id, destination, audience, kind, op, 0, None, records)


def read_records(tx: Tx, kind: str, ids: Sequence[int]) -> tuple[OutboxRecord, ...]:
    """Records of `ids` with their identifiers (fixed when planned; looked up if missing)."""
    relation = id_rows(tx, "ids", ids)
    rows = tx.run(_CHANGE_ROWS if kind == CHANGES else _CONVERSION_ROWS, ids=relation)
    found: dict[int, object] = {}
    if any(row[5] is None for row in rows):
        table, id_col = record_table(kind)
        found = {
            int(r): j for r, j in tx.run(_IDENTIFIERS, ids=relation, table=table, id_col=id_col)
        }
    return tuple(record(row, found) for row in rows)


def load_batch(tx: Tx, batch_id: str) -> ClaimedBatch:
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
    records = read_records(tx, kind, ids)
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


def form_batches(
    tx: Tx, destination: str, kind: str, max_records: int, audience: str | None
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
        flight=flight_keys(tx, destination),
    )
    groups: dict[tuple[str, str], list[int]] = {}
    for aud, op, change_id in rows:
        groups.setdefault((str(aud), str(op)), []).append(int(change_id))
    formed: list[tuple[str | None, str | None, list[int]]] = []
    for (aud, op), ids in sorted(groups.items(), key=lambda item: item[1][0]):
        formed += [(aud, op, ids[i : i + max_records]) for i in range(0, len(ids), max_records)]
    return formed


def claim_changes_ahead(
    tx: Tx, destination: str, max_records: int, now: datetime, audience: str | None, batches: int
) -> list[ClaimedBatch]:
    """Up to `batches` batches at once, formed as that many claims in turn would form them
    from the oldest claimable changes (one scan, one update, one insert, whatever their
    number). The waiting rows hold at most one change per profile and route, so no two of
    them touch the same profile."""
    flight = flight_keys(tx, destination)
    rows = tx.run(
        "SELECT o.change_id, o.profile_id, o.op, o.holdout, o.changed_at, o.identifiers, "
        f"NULL, o.audience {_CLAIMABLE} ORDER BY o.change_id LIMIT $limit{{skip_locked}}",
        {"destination": destination, "audience": audience, "limit": max_records * batches},
        flight=flight,
    )
    groups: dict[tuple[str, str], list[OutboxRecord]] = {}
    for row in rows:
        groups.setdefault((str(row[7]), str(row[2])), []).append(record(row[:7], {}))
    chunks = [
        (aud, op, found[i : i + max_records])
        for (aud, op), found in groups.items()
        for i in range(0, len(found), max_records)
    ]
    chunks = sorted(chunks, key=lambda chunk: chunk[2][0].record_id)[:batches]
    claimed = [
        ClaimedBatch(
            stable_batch_id(CHANGES, destination, [r.record_id for r in records]),
            destination,
            aud,
            CHANGES,
            op,
            0,
            None,
            tuple(records),
        )
        for aud, op, records in chunks
    ]
    if not claimed:
        return []
    taken = [(b.batch_id, r.record_id) for b in claimed for r in b.records]
    tx.run(
        "UPDATE outbox SET batch_id = taken.batch_id FROM {taken} "
        "WHERE outbox.change_id = taken.record_id",
        taken=tx.rows(
            "taken",
            [("batch_id", "text"), ("record_id", "bigint")],
            [[t[0] for t in taken], [t[1] for t in taken]],
        ),
    )
    tx.run(
        "INSERT INTO sync_batches (batch_id, destination, audience, kind, op, records, "
        "created_at, attempts, first_attempt_at, next_attempt_at, last_error) "
        "SELECT batch_id, $destination, audience, 'changes', op, records, $now, 0, NULL, $now, "
        "NULL FROM {formed}",
        {"destination": destination, "now": now},
        formed=tx.rows(
            "formed",
            [("batch_id", "text"), ("audience", "text"), ("op", "text"), ("records", "bigint")],
            [
                [b.batch_id for b in claimed],
                [b.audience for b in claimed],
                [b.op for b in claimed],
                [len(b.records) for b in claimed],
            ],
        ),
    )
    for batch in claimed:
        tx.hold(held_key(batch.batch_id))
    return claimed
