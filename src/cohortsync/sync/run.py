"""One sync run: plan, deliver (or write a dry run), log the counts."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx

from cohortsync.destinations.base import AnyDestination
from cohortsync.store.outbox import OutboxStore, PlanCounts, SyncRunRecord
from cohortsync.sync.configure import SyncSetup
from cohortsync.sync.dry_run import write_dry_run
from cohortsync.sync.dry_run_files import DryRunFolder
from cohortsync.sync.retry import RetryPolicy
from cohortsync.sync.worker import Clock, Deliverer, DeliveryReport, elapsed_ms

HTTP_TIMEOUT = httpx.Timeout(30.0, connect=10.0)


@dataclass(frozen=True)
class SyncReport:
    """What a sync run planned and delivered, and where dry-run requests went."""

    started_at: datetime
    duration_ms: float
    planned: PlanCounts
    delivery: DeliveryReport
    dry_run_folder: Path | None


def run_sync(
    outbox: OutboxStore,
    setup: SyncSetup,
    root: Path,
    policy: RetryPolicy,
    clock: Clock,
    dry_run_folder: Path,
    *,
    audience: str | None = None,
    destination: str | None = None,
    dry_run: bool = False,
    http: httpx.Client | None = None,
    progress: Callable[[int], None] | None = None,
) -> SyncReport:
    """Plan every route (or one audience / destination), then deliver or write a dry run.

    Destinations configured with `dry_run: true` are delivered to the dry-run folder: each
    batch written once and resolved as a dry run, as `serve` does. `dry_run` previews what the
    other destinations would be sent now, in the same folder, and changes nothing of theirs.
    """
    started, started_at = time.perf_counter(), clock()
    routes = [
        r
        for r in setup.routes
        if (audience is None or r.audience == audience)
        and (destination is None or r.destination == destination)
    ]
    conversions = [
        r
        for r in setup.conversion_routes
        if audience is None and (destination is None or r.destination == destination)
    ]
    planned = outbox.plan(routes, started_at) + outbox.plan_conversions(conversions, started_at)
    own_http = http is None
    client = http or httpx.Client(timeout=HTTP_TIMEOUT, follow_redirects=False)
    try:
        opened = setup.open(root, client, clock, only=destination)
        wanted = {
            n: d
            for n, d in opened.items()
            if audience is None or any(r.destination == n for r in routes)
        }
        written = {n: d for n, d in wanted.items() if d.config.dry_run}
        previewed = {n: d for n, d in wanted.items() if dry_run and n not in written}
        delivered = {n: d for n, d in wanted.items() if n not in previewed}
        folders = dry_run_folders(dry_run_folder, written)
        delivery = Deliverer(
            outbox, delivered, policy, clock, setup.identifiers, progress, folders
        ).run(audience)
        if previewed:
            preview = write_dry_run(outbox, previewed, dry_run_folder, setup.identifiers, audience)
            delivery.tallies.update(preview.tallies)
        for d in opened.values():
            d.close()
    finally:
        if own_http:
            client.close()
    duration = elapsed_ms(started)
    outbox.log_run(
        SyncRunRecord(
            started_at=started_at,
            duration_ms=duration,
            dry_run=dry_run,
            destination=destination,
            audience=audience,
            planned=planned.total,
            batches=delivery.total("batches"),
            acknowledged=delivery.total("acknowledged"),
            rejected=delivery.total("rejected"),
            retrying=delivery.total("retrying"),
            dead_lettered=delivery.total("dead_lettered"),
        )
    )
    folder = dry_run_folder if written or previewed else None
    return SyncReport(started_at, duration, planned, delivery, folder)


def dry_run_folders(
    folder: Path, destinations: Mapping[str, AnyDestination]
) -> dict[str, DryRunFolder]:
    """The dry-run folder of each destination set `dry_run: true`, kept across runs."""
    return {
        name: DryRunFolder(folder / name, fresh=False)
        for name, destination in destinations.items()
        if destination.config.dry_run
    }
