"""Dry runs: the exact requests a sync would send, written to a folder; nothing is sent.

Identifiers appear as they would leave (hashed for ad platforms) and secrets are redacted. One
JSON file per batch: `<folder>/<destination>/<nnn>-<audience|conversions>-<op>.json`.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import orjson

from cohortsync.destinations.base import AnyDestination
from cohortsync.store.outbox import CHANGES, CONVERSIONS, OutboxStore
from cohortsync.sync.worker import Delivery, to_batch, to_conversions


def write_dry_run(
    outbox: OutboxStore,
    destinations: Mapping[str, AnyDestination],
    folder: Path,
    identifiers: Mapping[str, tuple[str, ...]],
    audience: str | None = None,
) -> Delivery:
    """Write what each destination would be sent now; count batches and records per route."""
    delivery = Delivery()
    for name, destination in destinations.items():
        target = folder / name
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True, exist_ok=True)
        capabilities = destination.capabilities
        kinds = [CHANGES] if capabilities.audiences else []
        if capabilities.conversions and audience is None:
            kinds.append(CONVERSIONS)
        number = 0
        for kind in kinds:
            for batch in outbox.peek(name, kind, capabilities.max_batch, audience):
                number += 1
                if kind == CHANGES:
                    requests = destination.dry_run(
                        to_batch(batch, identifiers, capabilities.ad_platform)
                    )
                    label = f"{batch.audience}-{batch.op}"
                else:
                    requests = destination.dry_run(to_conversions(batch))
                    label = "conversions"
                (target / f"{number:03d}-{label}.json").write_bytes(
                    orjson.dumps(
                        {
                            "batch_id": batch.batch_id,
                            "records": len(batch.records),
                            "requests": requests,
                        },
                        option=orjson.OPT_INDENT_2,
                    )
                )
                tally = delivery.tally(name, batch.audience)
                tally.batches += 1
                tally.retrying += len(batch.records)
    return delivery
