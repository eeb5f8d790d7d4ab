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
from cohortsync.store.base import (
    STALE_RETRIES,
    AlreadyStoredError,
    ResolvedBatch,
    StaleIdentityError,
    Store,
)
from cohortsync.store.message_table import EVENT_SCHEMA, MessageTable, messages_table
from cohortsync.store.records import (
    IdentifierRejection,
    IdentityChanges,
    Key,
    Message,
    Rejection,
)

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
        cls,
        messages: Sequence[tuple[int, Message]],
        rejections: list[Rejection],
        bulk: pa.Table | None = None,
    ) -> ColumnarBatch:
        """Messages validated one by one, as (position, message), plus rows validated in bulk."""
        tables = [] if bulk is None else [_staged(bulk)]
        if messages or not tables:
            tables.append(python_rows(messages))
        one_by_one = {n: m for n, m in messages if _resolved_alone(m)}
        return cls(pa.concat_tables(tables), one_by_one, rejections)


def python_rows(messages: Sequence[tuple[int, Message]]) -> pa.Table:
    """Messages validated in Python as staged rows (STAGED_SCHEMA)."""
    table = messages_table([m for _, m in messages], [""] * len(messages))
    table = table.drop_columns(["profile_id"])
    return table.add_column(0, "n", pa.array([n for n, _ in messages], pa.int64()))


@dataclass(frozen=True)
class PreparedBatch:
    """A batch in resolution order with each resolution step's message and identifiers.

    Everything here depends on the batch alone, so it is built while the previous batch is
    being stored; storing then only runs the identity graph and the transaction.
    """

    table: pa.Table  # the first occurrence of each message id, in input order
    order: np.ndarray  # rows of `table` in resolution order
    steps: list[Message]  # the message each resolution step reads
    keyed: list[list[Key]]  # the identifiers of each step's message
    row_step: pa.Array  # for each row, the step whose profile it takes
    identifier_rejections: list[IdentifierRejection]
    source: ColumnarBatch

    @classmethod
    def of(cls, batch: ColumnarBatch, identity: IdentityConfig) -> PreparedBatch:
        """Dedupe, order and plan the resolution of a validated batch."""
        table, order = _first_occurrences(batch.events)
        return cls._plan(table, order, batch, identity)

    @classmethod
    def _plan(
        cls, table: pa.Table, order: np.ndarray, batch: ColumnarBatch, identity: IdentityConfig
    ) -> PreparedBatch:
        steps, row_step = _steps(table, order, batch.one_by_one)
        messages = _step_messages(table, steps, batch.one_by_one)
        changes = IdentityChanges()
        kinds = trait_identifier_kinds(identity)
        keyed = [extract_identifiers(m, identity, changes, kinds) for m in messages]
        return cls(table, order, messages, keyed, int64s(row_step), changes.rejections, batch)

    def without(self, message_ids: set[str], identity: IdentityConfig) -> PreparedBatch:
        """The batch planned again without messages the store already holds."""
        known = pa.array(sorted(message_ids), pa.string())
        keep = pc.invert(pc.is_in(self.table.column("message_id"), known))
        mask = np.asarray(keep.to_numpy(zero_copy_only=False), bool)
        renumbered = np.cumsum(mask) - 1
        order = renumbered[self.order[mask[self.order]]]
        return self._plan(self.table.filter(keep), order, self.source, identity)


def store_prepared(store: Store, identity: IdentityConfig, batch: PreparedBatch) -> IngestResult:
    """Store a prepared batch in one transaction, planning it again if some ids were known."""
    valid = batch.source.events.num_rows
    rejections = batch.source.rejections
    stale = 0
    while True:
        try:
            stored = store.commit_batch(_resolve(identity, store, batch), rejections)
            break
        except AlreadyStoredError as exc:
            batch = batch.without(exc.message_ids, identity)
        except StaleIdentityError:  # another writer changed identities it was resolved against
            stale += 1
            if stale > STALE_RETRIES:
                raise
    return IngestResult(
        received=valid + len(rejections),
        stored=stored,
        duplicates=valid - stored,
        quarantined=len(rejections),
    )


def _staged(table: pa.Table) -> pa.Table:
    """Rows validated in bulk in the staged layout (times arrive as microseconds)."""
    columns = [table.column(field.name).cast(field.type) for field in STAGED_SCHEMA]
    return pa.Table.from_arrays(columns, schema=STAGED_SCHEMA)


def _resolved_alone(message: Message) -> bool:
    """Whether resolution reads more than the ids (the rule of `IdentityGraph.resolve_all`)."""
    context = message.context
    return bool(
        message.previous_id is not None
        or message.type == "identify"
        or (context and context.get("traits"))
    )


def _first_occurrences(table: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """Keep the first row of each message id, in input order; and the resolution order.

    Resolution goes by event time, ties by input position, a repeated id sorting at its last
    occurrence, as the per-message path orders them. Rows are not moved: a batch is about one
    DuckDB row group, so sorting it would not cluster the events table any better.
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
    return table, np.asarray(order.to_numpy(), np.int64)


def _resolve(identity: IdentityConfig, store: Store, batch: PreparedBatch) -> ResolvedBatch:
    """Run the identity graph over the batch's steps; every row takes its step's profile."""
    wanted: set[Key] = set()
    for message, keys in zip(batch.steps, batch.keyed, strict=True):
        wanted.update(preload_keys(message, keys))
    owners, profiles = store.load_identity_state(wanted, limited_kinds(identity))
    changes = IdentityChanges(rejections=list(batch.identifier_rejections))
    graph = IdentityGraph(identity, owners, profiles, changes)
    resolved = [graph.resolve(m, keys) for m, keys in zip(batch.steps, batch.keyed, strict=True)]
    profile_ids = pa.array(resolved, pa.string()).take(batch.row_step)
    events = batch.table.drop_columns(["n"]).append_column("profile_id", profile_ids)
    table = MessageTable(events)
    return ResolvedBatch(table, table.profile_ids, graph.changes, graph.profiles)


def _steps(
    table: pa.Table, order: np.ndarray, one_by_one: dict[int, Message]
) -> tuple[np.ndarray, np.ndarray]:
    """The rows to resolve, in resolution order, and the step whose answer each row takes.

    A step is the first row (in `order`) of each (userId, anonymousId) pair, or a row
    resolved alone.
    """
    users = _codes(table.column("user_id"))
    anons = _codes(table.column("anonymous_id"))
    pair = (users + 1) * (int(anons.max(initial=0)) + 2) + anons + 1  # >= 0, one per pair
    if one_by_one:
        alone = pc.is_in(table.column("n"), pa.array(list(one_by_one), pa.int64()))
        mask = alone.to_numpy(zero_copy_only=False)
        pair = np.where(mask, -1 - np.arange(len(pair)), pair)  # a group of its own
    _, first, group = np.unique(pair[order], return_index=True, return_inverse=True)
    by_first = np.argsort(first)
    rank = np.empty_like(by_first)
    rank[by_first] = np.arange(len(by_first))
    row_step = np.empty(len(order), np.int64)
    row_step[order] = rank[group.reshape(-1)]
    return order[first[by_first]], row_step


def int64s(values: np.ndarray) -> pa.Array:
    """A numpy integer array as an Arrow int64 array sharing its memory (no per-value work)."""
    data = np.ascontiguousarray(values, np.int64)
    return pa.Array.from_buffers(pa.int64(), len(data), [None, pa.py_buffer(data)])


def _codes(column: pa.ChunkedArray) -> np.ndarray:
    """Small integers naming each distinct value of a string column; -1 for null."""
    indices = column.combine_chunks().dictionary_encode().indices
    return np.asarray(indices.fill_null(-1).to_numpy(zero_copy_only=False), np.int64)


def _step_messages(
    table: pa.Table, steps: np.ndarray, one_by_one: dict[int, Message]
) -> list[Message]:
    """The message each step resolves: the original for one-by-one rows, else its ids."""
    picked = table.select(
        ["n", "message_id", "type", "source", "timestamp", "user_id", "anonymous_id"]
    ).take(int64s(steps))
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
