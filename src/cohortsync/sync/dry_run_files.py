"""A destination's dry-run folder: one JSON file per batch, numbered in the order written.

`<folder>/<nnn>-<audience|conversions>-<op>.json` holds the batch id, its record count, how many
records would be sent, the records the destination would refuse (id → reason) and the exact
requests (identifiers hashed as they would leave, secrets redacted).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from cohortsync.store.outbox import CHANGES, ClaimedBatch

_NUMBERED = re.compile(r"^(\d+)-")
_TRIES = 1_000


class DryRunFolder:
    """Where one destination's dry runs are written; `fresh` empties it first (a preview of
    what is due now), otherwise numbering goes on after the files already there."""

    def __init__(self, folder: Path, *, fresh: bool) -> None:
        if fresh:
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        found = (_NUMBERED.match(path.name) for path in folder.glob("*.json"))
        self.number = max((int(m.group(1)) for m in found if m), default=0)

    def write(
        self, batch: ClaimedBatch, requests: list[dict[str, Any]], refused: Mapping[int, str]
    ) -> Path:
        """Write one batch's file under the next free number; return its path.

        A file is only ever created, never replaced: two workers writing the same folder at
        once each take a number of their own.
        """
        label = f"{batch.audience}-{batch.op}" if batch.kind == CHANGES else "conversions"
        content = orjson.dumps(
            {
                "batch_id": batch.batch_id,
                "records": len(batch.records),
                "would_send": len(batch.records) - len(refused),
                "refused": {str(record_id): reason for record_id, reason in refused.items()},
                "requests": requests,
            },
            option=orjson.OPT_INDENT_2,
        )
        for _ in range(_TRIES):
            self.number += 1
            path = self.folder / f"{self.number:03d}-{label}.json"
            try:
                with path.open("xb") as out:
                    out.write(content)
                return path
            except FileExistsError:
                continue
        raise FileExistsError(f"{self.folder}: no free file number after {_TRIES} tries")
