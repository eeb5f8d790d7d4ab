"""Ingest a file in batches: validate and plan batch N+1 while batch N is being stored.

JSON Lines are validated in bulk by a private DuckDB; CSV and Parquet rows arrive validated one
by one. Either way, everything that depends on a batch alone (dedupe, order, identifier
normalisation) is done before it reaches the writer thread, which only resolves and commits.
DuckDB releases the GIL, so on two cores validating and storing overlap. At most one prepared
batch waits, so memory stays bounded.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from pathlib import Path

from cohortsync.config.models import IdentityConfig
from cohortsync.events.columnar import ColumnarBatch, PreparedBatch, store_prepared
from cohortsync.events.jsonl_bulk import BulkValidator, read_chunks
from cohortsync.events.pipeline import EMPTY_RESULT, IngestResult
from cohortsync.store.base import Store
from cohortsync.store.records import Message, Rejection

# One DuckDB row group (122,880 rows). A transaction that appends whole row groups writes them
# straight to the database file; a partial one is written again at the next checkpoint, so
# 131,072-line batches cost ~25 % more to store than these, and 50,000-line ones ~50 %.
ROWS_PER_BATCH = 122_880


def ingest_jsonl(
    store: Store,
    identity: IdentityConfig,
    path: Path,
    *,
    received_at_us: int,
    progress: Callable[[int], None] | None = None,
    rows_per_batch: int | None = None,
) -> IngestResult:
    """Validate and store every line of a JSON Lines file; bad lines go to quarantine."""
    source = f"file:{path.name}"
    validator = BulkValidator()

    def batches() -> Iterator[ColumnarBatch]:
        for chunk in read_chunks(path, rows_per_batch or ROWS_PER_BATCH):
            batch = validator.validate(chunk, path, source, received_at_us)
            if progress is not None:
                progress(len(chunk.data))
            yield batch

    try:
        return _store_pipelined(store, identity, batches())
    finally:
        validator.close()


def ingest_rows(
    store: Store,
    identity: IdentityConfig,
    rows: Iterable[tuple[int, Message | Rejection]],
    *,
    rows_per_batch: int | None = None,
) -> IngestResult:
    """Store rows validated one by one, (position in the file, message or rejection)."""
    return _store_pipelined(store, identity, _batches(rows, rows_per_batch or ROWS_PER_BATCH))


def _batches(rows: Iterable[tuple[int, Message | Rejection]], size: int) -> Iterator[ColumnarBatch]:
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
        messages = [(n, m) for n, m in chunk if isinstance(m, Message)]
        rejections = [r for _, r in chunk if isinstance(r, Rejection)]
        yield ColumnarBatch.of(messages, rejections)


def _store_pipelined(
    store: Store, identity: IdentityConfig, batches: Iterable[ColumnarBatch]
) -> IngestResult:
    """Plan each batch on this thread and store it on a writer thread, one batch ahead."""
    total = EMPTY_RESULT
    pending: Future[IngestResult] | None = None
    collecting = gc.isenabled()
    gc.disable()  # millions of short-lived objects, no cycles: collections would cost ~15 %
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-writer") as writer:
            for batch in batches:
                prepared = PreparedBatch.of(batch, identity)
                if pending is not None:
                    total += pending.result()
                pending = writer.submit(store_prepared, store, identity, prepared)
            if pending is not None:
                total += pending.result()
    finally:
        if collecting:
            gc.enable()
    return total
