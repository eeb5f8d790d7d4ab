"""Ingest a JSON Lines file in bulk: validate and plan chunk N+1 while chunk N is being stored.

Validation runs in a private DuckDB and storing in the store's: both release the GIL, so on two
cores they overlap. Everything that depends on a chunk alone (dedupe, order, identifier
normalisation) is done before it reaches the writer, which only resolves and commits. At most
one prepared chunk waits, so memory stays bounded.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from cohortsync.config.models import IdentityConfig
from cohortsync.events.columnar import PreparedBatch, store_prepared
from cohortsync.events.jsonl_bulk import BulkValidator, read_chunks
from cohortsync.events.pipeline import EMPTY_RESULT, IngestResult
from cohortsync.store.base import Store

# One DuckDB row group (122,880 rows). A transaction that appends whole row groups writes them
# straight to the database file; a partial one is written again at the next checkpoint, so
# 131,072-line batches cost ~25 % more to store than these, and 50,000-line ones ~50 %.
LINES_PER_BATCH = 122_880


def ingest_jsonl(
    store: Store,
    identity: IdentityConfig,
    path: Path,
    *,
    received_at_us: int,
    lines_per_batch: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> IngestResult:
    """Validate and store every line of a JSON Lines file; bad lines go to quarantine."""
    source = f"file:{path.name}"
    total = EMPTY_RESULT
    validator = BulkValidator()
    pending: Future[IngestResult] | None = None
    collecting = gc.isenabled()
    gc.disable()  # millions of short-lived objects, no cycles: collections would cost ~15 %
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-writer") as writer:
            for chunk in read_chunks(path, lines_per_batch or LINES_PER_BATCH, progress):
                batch = validator.validate(chunk, path, source, received_at_us)
                prepared = PreparedBatch.of(batch, identity)
                if pending is not None:
                    total += pending.result()
                pending = writer.submit(store_prepared, store, identity, prepared)
            if pending is not None:
                total += pending.result()
    finally:
        validator.close()
        if collecting:
            gc.enable()
    return total
