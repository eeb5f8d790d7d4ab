"""Store validated messages held as columns: dedupe, order, resolve once per identifier set.

Most events carry no person traits and no alias: the profile of such an event depends only on
its (userId, anonymousId) pair, so the identity graph resolves each distinct pair once, at its
first occurrence in event-time order, exactly as `IdentityGraph.resolve_all` does message by
message. Identify and alias calls and messages with `context.traits` are resolved one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cohortsync.config.models import IdentityConfig
from cohortsync.events.pipeline import IngestResult
from cohortsync.identity.graph import (
    IdentityGraph,
    extract_identifiers,
    limited_kinds,
    preload_keys,
    trait_identifier_kinds,
)
from cohortsync.store.base import AlreadyStoredError, ResolvedBatch, Store
from cohortsync.store.message_table import (
    EVENT_COLUMNS,
    EVENT_SCHEMA,
    TIME_COLUMNS,
    MessageTable,
    messages_table,
)
from cohortsync.store.records import IdentityChanges, Key, Message, Rejection

STAGED_SCHEMA = pa.schema(
    [pa.field("n", pa.int64())] + [f for f in EVENT_SCHEMA if f.name != "profile_id"]
)


@dataclass(frozen=True)
class ColumnarBatch:
    """Validated messages of one chunk of input, as columns, plus what needs Python."""

    events: pa.Table  # STAGED_SCHEMA: events without profile_id, `n` = position in the input
    one_by_one: dict[int, Message]  # messages whose resolution depends on more than their ids
    rejections: list[Rejection]

    @classmethod
    def of(
        cls, bulk: pa.Table, messages: Sequence[tuple[int, Message]], rejections: list[Rejection]
    ) -> ColumnarBatch:
        """Combine bulk-validated rows with messages validated one by one (n, message)."""
        tables = [_staged(bulk)]
        if messages:
            tables.append(python_rows(messages))
        one_by_one = {n: m for n, m in messages if _resolved_alone(m)}
        return cls(pa.concat_tables(tables), one_by_one, rejections)


def python_rows(messages: Sequence[tuple[int, Message]]) -> pa.Table:
    """Messages validated in Python as staged rows (STAGED_SCHEMA)."""
    table = messages_table([m for _, m in messages], [""] * len(messages))
    table = table.drop_columns(["profile_id"])
    return table.add_column(0, "n", pa.array([n for n, _ in messages], pa.int64()))


def store_columnar(store: Store, identity: IdentityConfig, batch: ColumnarBatch) -> IngestResult:
    """Resolve and durably store one batch in one transaction; known message ids are skipped."""
    valid = batch.events.num_rows
    table = _first_occurrences_in_time_order(batch.events)
    while True:
        try:
            stored = store.commit_batch(
                _resolve(identity, store, table, batch.one_by_one), batch.rejections
            )
            break
        except AlreadyStoredError as exc:
            known = pa.array(sorted(exc.message_ids), pa.string())
            table = table.filter(pc.invert(pc.is_in(table.column("message_id"), known)))
    return IngestResult(
        received=valid + len(batch.rejections),
        stored=stored,
        duplicates=valid - stored,
        quarantined=len(batch.rejections),
    )


def _staged(table: pa.Table) -> pa.Table:
    columns = []
    for field in STAGED_SCHEMA:
        column = table.column(field.name)
        if field.name in TIME_COLUMNS:
            column = column.cast(pa.int64()).cast(field.type)
        columns.append(column.cast(field.type))
    return pa.Table.from_arrays(columns, schema=STAGED_SCHEMA)


def _resolved_alone(message: Message) -> bool:
    """Whether resolution reads more than the ids (the rule of `IdentityGraph.resolve_all`)."""
    context = message.context
    return bool(
        message.previous_id is not None
        or message.type == "identify"
        or (context and context.get("traits"))
    )


def _first_occurrences_in_time_order(table: pa.Table) -> pa.Table:
    """Keep the first row of each message id; order by event time, ties by input position.

    A repeated id sorts at its last occurrence, as the per-message path orders them.
    """
    ids = table.column("message_id")
    position = table.column("n")
    if pc.count_distinct(ids).as_py() < table.num_rows:
        spans = (
            pa.table({"message_id": ids, "n": position})
            .group_by("message_id", use_threads=False)
            .aggregate([("n", "min"), ("n", "max")])
        )
        table = table.join(spans, "message_id")
        table = table.filter(pc.equal(table.column("n"), table.column("n_min")))
        position = table.column("n_max")
        table = table.drop_columns(["n_min", "n_max"])
    keys = pa.table({"t": table.column("timestamp"), "p": position})
    order = pc.sort_indices(keys, sort_keys=[("t", "ascending"), ("p", "ascending")])
    return table.take(order)


def _resolve(
    identity: IdentityConfig, store: Store, table: pa.Table, one_by_one: dict[int, Message]
) -> ResolvedBatch:
    """Resolve the batch's profiles; identifier pairs seen before in the batch are not redone."""
    steps, row_step = _steps(table, one_by_one)
    messages = _step_messages(table, steps, one_by_one)
    changes = IdentityChanges()
    kinds = trait_identifier_kinds(identity)
    keyed = [extract_identifiers(m, identity, changes, kinds) for m in messages]
    wanted: set[Key] = set()
    for message, keys in zip(messages, keyed, strict=True):
        wanted.update(preload_keys(message, keys))
    owners, profiles = store.load_identity_state(wanted, limited_kinds(identity))
    graph = IdentityGraph(identity, owners, profiles, changes)
    resolved = [graph.resolve(m, keys) for m, keys in zip(messages, keyed, strict=True)]
    profile_ids = pa.array(resolved, pa.string()).take(pa.array(row_step))
    events = table.drop_columns(["n"]).append_column("profile_id", profile_ids)
    events = events.select(list(EVENT_COLUMNS))
    return ResolvedBatch(
        MessageTable(events), profile_ids.to_pylist(), graph.changes, graph.profiles
    )


def _steps(table: pa.Table, one_by_one: dict[int, Message]) -> tuple[np.ndarray, np.ndarray]:
    """The rows to resolve, in order, and the step whose answer each row takes.

    A step is the first row of each (userId, anonymousId) pair, or a row resolved alone.
    """
    users = _codes(table.column("user_id"))
    anons = _codes(table.column("anonymous_id"))
    pair = (users + 1) * (int(anons.max(initial=0)) + 2) + anons + 1  # >= 0, one per pair
    if one_by_one:
        alone = pc.is_in(table.column("n"), pa.array(list(one_by_one), pa.int64()))
        mask = alone.to_numpy(zero_copy_only=False)
        pair = np.where(mask, -1 - np.arange(len(pair)), pair)  # a group of its own
    _, first, group = np.unique(pair, return_index=True, return_inverse=True)
    by_first = np.argsort(first)
    rank = np.empty_like(by_first)
    rank[by_first] = np.arange(len(by_first))
    return first[by_first], rank[group.reshape(-1)]


def _codes(column: pa.ChunkedArray) -> np.ndarray:
    """Small integers naming each distinct value of a string column; -1 for null."""
    indices = column.combine_chunks().dictionary_encode().indices
    return np.asarray(indices.fill_null(-1).to_numpy(zero_copy_only=False), np.int64)


def _step_messages(
    table: pa.Table, steps: np.ndarray, one_by_one: dict[int, Message]
) -> list[Message]:
    """The message each step resolves: the original for one-by-one rows, else its ids."""
    picked = table.take(pa.array(steps)).select(
        ["n", "message_id", "type", "source", "timestamp", "user_id", "anonymous_id"]
    )
    columns = {name: picked.column(name) for name in picked.column_names}
    times = columns["timestamp"].cast(pa.int64()).to_pylist()
    messages = []
    for number, message_id, kind, source, at, user, anon in zip(
        columns["n"].to_pylist(),
        columns["message_id"].to_pylist(),
        columns["type"].to_pylist(),
        columns["source"].to_pylist(),
        times,
        columns["user_id"].to_pylist(),
        columns["anonymous_id"].to_pylist(),
        strict=True,
    ):
        message = one_by_one.get(number)
        if message is None:
            message = Message(message_id, kind, source, at, at, at, user_id=user, anonymous_id=anon)
        messages.append(message)
    return messages
