"""Dry runs: the exact requests a sync would send, written to a folder; nothing is sent.

Identifiers appear as they would leave (hashed for ad platforms) and secrets are redacted. One
JSON file per batch: `<folder>/<destination>/<nnn>-<audience|conversions>-<op>.json`, with what
would be sent and what would be refused, and why.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cohortsync.destinations.base import AnyDestination
from cohortsync.store.outbox import CHANGES, CONVERSIONS, OutboxStore
from cohortsync.sync.dry_run_files import DryRunFolder
from cohortsync.sync.worker import DeliveryReport, preview


def write_dry_run(
    outbox: OutboxStore,
    destinations: Mapping[str, AnyDestination],
    folder: Path,
    identifiers: Mapping[str, tuple[str, ...]],
    audience: str | None = None,
) -> DeliveryReport:
    """Write what each destination would be sent now, claiming nothing; count per route the
    batches, the records that would be sent and those that would be refused, by reason."""
    delivery = DeliveryReport()
    for name, destination in destinations.items():
        target = DryRunFolder(folder / name, fresh=True)
        kinds = [CHANGES] if destination.capabilities.audiences else []
        if destination.capabilities.conversions and audience is None:
            kinds.append(CONVERSIONS)
        for kind in kinds:
            for batch in outbox.peek(name, kind, destination.capabilities.max_batch, audience):
                written = preview(destination, batch, identifiers)
                target.write(batch, written.requests, written.refused)
                tally = delivery.tally(name, batch.audience)
                tally.batches += 1
                tally.wrote(len(batch.records), written.refused)
    return delivery
