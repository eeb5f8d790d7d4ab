"""`sync --reconcile`: compare each ad platform's list with the members cohortsync's ledger says
it holds, and past a drift threshold rebuild the list from them.

Desired members are the `destination_state` rows a destination acknowledged (holdout left
out); the platform's figure is what it shows (`count_members`, a range where it gives one).
The drift is how far the desired count lies outside that range, as a share of it. A rebuild
under way is recorded after each acknowledged request (`sync/rebuild_log.py`), so a rerun
finishes it whatever the drift then reads. The run is logged as one sync run.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from cohortsync.destinations.base import (
    ADD,
    AnyDestination,
    Change,
    DeliveryError,
    PermanentError,
    PlatformCount,
    Rebuild,
    RebuildResult,
)
from cohortsync.ops.drift import Drift, read_drift
from cohortsync.store.outbox import OutboxStore, SyncRunRecord
from cohortsync.sync.configure import SyncSetup
from cohortsync.sync.rebuild_log import RebuildLog, Underway

HTTP_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
NO_REPLACE = "{kind} offers no member count and no way to replace a whole list"
DRY_RUN = "configured dry_run: true, it sends nothing, so nothing there can drift"

IN_SYNC = "in sync"
BELOW = "below threshold"
WOULD = "would rebuild"
REBUILT = "rebuilt"
RESUMED = "resumed, rebuilt"
FAILED = "failed, rerun"
REFUSED = "refused"
NOT_RECONCILABLE = "not reconcilable"
NO_COUNT = "no count shown"
READ_FAILED = "count unread"


@dataclass(frozen=True)
class RouteReconcile:
    """One route's comparison and what was done: desired members, the platform's figure, the
    drift (members outside the platform's range, and as a share), requests and members sent."""

    destination: str
    audience: str
    action: str
    desired: int | None = None
    platform: PlatformCount | None = None
    drift: int | None = None
    share: float | None = None
    requests: int = 0
    sent: int = 0
    rejected: int = 0
    note: str = ""
    retryable: bool = False


@dataclass(frozen=True)
class ReconcileReport:
    """What one `sync --reconcile` run found and did, route by route."""

    started_at: datetime
    duration_ms: float
    threshold: float
    dry_run: bool
    routes: list[RouteReconcile] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether any platform list was rebuilt (or a rebuild moved on) in this run."""
        return any(r.requests for r in self.routes)


def reconcile(
    outbox: OutboxStore,
    setup: SyncSetup,
    root: Path,
    clock: Callable[[], datetime],
    threshold: float,
    *,
    audience: str | None = None,
    destination: str | None = None,
    dry_run: bool = False,
    http: httpx.Client | None = None,
) -> ReconcileReport:
    """Compare every audience route (or one audience / destination) and rebuild past
    `threshold`; with `dry_run`, compare and say what would be rebuilt, sending nothing."""
    started, started_at = time.perf_counter(), clock()
    routes = [
        r
        for r in setup.routes
        if (audience is None or r.audience == audience)
        and (destination is None or r.destination == destination)
    ]
    by_destination: dict[str, list[str]] = {}
    for route in routes:
        by_destination.setdefault(route.destination, []).append(route.audience)
    client = http or httpx.Client(timeout=HTTP_TIMEOUT, follow_redirects=False)
    found: list[RouteReconcile] = []
    try:
        for name, audiences in sorted(by_destination.items()):
            found += _destination(
                outbox, setup, root, clock, name, sorted(set(audiences)), threshold, dry_run,
                client, started_at,
            )  # fmt: skip
    finally:
        if http is None:
            client.close()
    duration = (time.perf_counter() - started) * 1000
    outbox.log_run(
        SyncRunRecord(
            started_at=started_at,
            duration_ms=duration,
            dry_run=dry_run,
            destination=destination,
            audience=audience,
            planned=0,
            batches=sum(r.requests for r in found),
            acknowledged=sum(r.sent for r in found),
            rejected=sum(r.rejected for r in found),
            retrying=sum(r.desired or 0 for r in found if r.retryable),
            dead_lettered=0,
        )
    )
    return ReconcileReport(started_at, duration, threshold, dry_run, found)


def _destination(
    outbox: OutboxStore,
    setup: SyncSetup,
    root: Path,
    clock: Callable[[], datetime],
    name: str,
    audiences: list[str],
    threshold: float,
    dry_run: bool,
    http: httpx.Client,
    started_at: datetime,
) -> list[RouteReconcile]:
    """Every route of one destination; a destination that cannot be reconciled says why."""
    cls = setup.classes[name]
    capabilities = cls.capabilities
    if setup.configs[name].dry_run or not capabilities.replace:
        why = DRY_RUN if setup.configs[name].dry_run else capabilities.no_replace
        why = why or NO_REPLACE.format(kind=cls.kind)
        return [RouteReconcile(name, a, NOT_RECONCILABLE, note=why) for a in audiences]
    held = {a: _members(outbox, setup, name, a) for a in audiences}
    notes = _name_drift(setup, root, http, clock, name, [a for a in audiences if held[a]])
    opened = setup.open(root, http, clock, only=name)[name]
    log = RebuildLog(root, name)
    try:
        return [
            _route(opened, log, name, a, held[a], threshold, dry_run, started_at, notes.get(a))
            for a in audiences
        ]
    finally:
        opened.close()


def _route(
    opened: AnyDestination,
    log: RebuildLog,
    name: str,
    audience: str,
    members: tuple[Change, ...],
    threshold: float,
    dry_run: bool,
    started_at: datetime,
    drift_note: str | None,
) -> RouteReconcile:
    """Compare one route and rebuild it when past the threshold or when a rebuild is under way."""
    desired = len(members)
    digest = _digest(members)
    underway = log.get(audience)
    base = RouteReconcile(name, audience, IN_SYNC, desired, note=drift_note or "")
    try:
        count = opened.count_members(audience)
    except DeliveryError as exc:
        if underway is None or dry_run:
            return _with(base, action=READ_FAILED, note=_join(base.note, str(exc)), retryable=True)
        count = None
    drift = _drift(desired, count)
    share = drift / max(desired, 1) if drift is not None else None
    base = _with(base, platform=count, drift=drift, share=share)
    if count is not None and count.note:
        base = _with(base, note=_join(count.note, base.note))
    resume = underway is not None and underway.digest == digest
    if not resume:
        if count is None:
            return _with(base, action=NO_COUNT)
        if not drift:
            return base
        if share is not None and share <= threshold:
            return _with(base, action=BELOW)
    if dry_run:
        return _with(base, action=WOULD)
    if resume and underway is not None:
        job = Underway(digest, underway.seed, underway.done)
    else:
        job = Underway(digest, f"{digest[:16]}-{started_at:%Y%m%dT%H%M%S%f}", 0)
    return _rebuild(opened, log, base, members, job, resume)


def _rebuild(
    opened: AnyDestination,
    log: RebuildLog,
    base: RouteReconcile,
    members: tuple[Change, ...],
    job: Underway,
    resume: bool,
) -> RouteReconcile:
    """Send the rebuild's requests from where it stands, recording each acknowledgement."""
    audience = base.audience
    log.save(audience, job)
    acked = [job.done]

    def acknowledged(done: int) -> None:
        acked.append(done)
        log.save(audience, Underway(job.digest, job.seed, done))

    try:
        result: RebuildResult = opened.rebuild(
            Rebuild(audience, members, job.seed, job.done, acknowledged)
        )
    except PermanentError as exc:
        log.finish(audience)
        made = acked[-1] - job.done
        return _with(base, action=REFUSED, requests=made, note=_join(base.note, str(exc)))
    except DeliveryError as exc:
        made = acked[-1] - job.done
        note = _join(base.note, f"{exc}; {acked[-1]} request(s) acknowledged so far")
        return _with(base, action=FAILED, requests=made, note=note, retryable=True)
    log.finish(audience)
    return _with(
        base,
        action=RESUMED if resume else REBUILT,
        requests=result.requests,
        sent=result.sent,
        rejected=len(result.rejected),
    )


def _members(
    outbox: OutboxStore, setup: SyncSetup, destination: str, audience: str
) -> tuple[Change, ...]:
    """The route's desired members as adds, with only the identifier kinds the audience lets
    an ad platform match on (as delivery sends them)."""
    allowed = setup.identifiers.get(audience, ())
    ad_platform = setup.classes[destination].capabilities.ad_platform
    found = []
    for index, (profile_id, identifiers) in enumerate(outbox.held(destination, audience), 1):
        kept = (
            {k: v for k, v in identifiers.items() if k in allowed}
            if ad_platform and allowed
            else identifiers
        )
        found.append(Change(index, audience, profile_id, ADD, False, _EPOCH, kept))
    return tuple(found)


def _name_drift(
    setup: SyncSetup,
    root: Path,
    http: httpx.Client,
    clock: Callable[[], datetime],
    destination: str,
    audiences: Iterable[str],
) -> dict[str, str]:
    """What the existing read-back (`ops/drift.py`) says of each audience's name and
    description, for the route's note."""
    drifts: list[Drift] = read_drift(
        setup, root, [(destination, a) for a in audiences], http, clock
    )
    return {d.audience: d.problem or d.error or "" for d in drifts if d.problem or d.error}


def _drift(desired: int, count: PlatformCount | None) -> int | None:
    """Members between the desired count and the platform's range (0 inside it)."""
    if count is None:
        return None
    if desired < count.lower:
        return count.lower - desired
    if desired > count.upper:
        return desired - count.upper
    return 0


def _digest(members: Iterable[Change]) -> str:
    """What identifies a set of desired members (a rebuild resumes only for the same set)."""
    text = "\n".join(
        f"{m.profile_id}\t" + "\t".join(f"{k}={v}" for k, v in sorted(m.identifiers.items()))
        for m in members
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _with(route: RouteReconcile, **changes: Any) -> RouteReconcile:
    return replace(route, **changes)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
