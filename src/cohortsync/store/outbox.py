"""The sync side of the store: outbox, claimed batches, what destinations acknowledged.

The planner writes desired changes here in the same transaction as the membership change; the
delivery worker claims batches, and records each destination's answer before the rows leave.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

CHANGES = "changes"
CONVERSIONS = "conversions"


@dataclass(frozen=True)
class Route:
    """One audience delivered to one destination; ad platforms never get holdout members."""

    destination: str
    audience: str
    include_holdout: bool
    dry_run: bool = False
    """The destination is set `dry_run: true`: it is written files, never sent anything.

    What a dry run wrote is kept apart from what the destination holds (`DRY_RUN` rows of
    `destination_state`), so a destination that goes live is sent every member afresh, and one
    that was live and goes dry still gets, once live again, the removes it missed meanwhile
    (`DRY_REMOVED` rows: members it holds whose removal only a dry run wrote).
    """


MEMBER = "member"
REJECTED = "rejected"
DRY_RUN = "dry_run"
DRY_REMOVED = "dry_removed"
"""The `status` of a `destination_state` row: a member the destination acknowledged, one it
refused, one a dry run wrote (the destination holds nothing), one the destination holds but
whose removal only a dry run wrote."""


# Conversions are planned from the events stored since the last planning; the whole log is
# read again this often all the same, in case a ledger row went missing some other way.
FULL_PLAN_EVERY = timedelta(minutes=10)


def whole_log_due(full_at: datetime | None, now: datetime) -> bool:
    """Whether a conversion planning reads every event: the first one (`full_at` None), or one
    `FULL_PLAN_EVERY` after the last that did."""
    return full_at is None or now - full_at >= FULL_PLAN_EVERY


@dataclass(frozen=True)
class ConversionRoute:
    """Track events whose key is `event` forwarded to `destination` as conversion `name`.

    `event` is the snake_case key segments match on (`events.validate.event_key`), so a rule for
    `order_completed` takes "Order Completed" as well.
    """

    destination: str
    event: str
    name: str
    value_property: str | None = None
    currency: str | None = None


@dataclass(frozen=True)
class PlanCounts:
    """What one planning pass queued: changes per (destination, audience), conversions."""

    adds: int = 0
    removes: int = 0
    conversions: int = 0

    def __add__(self, other: PlanCounts) -> PlanCounts:
        return PlanCounts(
            self.adds + other.adds,
            self.removes + other.removes,
            self.conversions + other.conversions,
        )

    @property
    def total(self) -> int:
        """Every record queued."""
        return self.adds + self.removes + self.conversions


@dataclass(frozen=True)
class OutboxRecord:
    """One record of a claimed batch, identifiers fixed at claim time."""

    record_id: int
    profile_id: str
    op: str
    holdout: bool
    at: datetime
    identifiers: Mapping[str, str]
    conversion: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClaimedBatch:
    """A unit of delivery: the same records under the same id on every attempt."""

    batch_id: str
    destination: str
    audience: str | None
    kind: str
    op: str | None
    attempts: int
    first_attempt_at: datetime | None
    records: tuple[OutboxRecord, ...]
    backoff_attempts: int = 0
    """Failures since the destination last answered (a 2xx, or a Retry-After): what the
    backoff counts. `attempts` counts every try."""


@dataclass(frozen=True)
class Resolution:
    """A destination's answer for a batch: ids rejected (with reason) and ids to retry alone."""

    rejected: Mapping[int, str] = field(default_factory=dict)
    retry: Mapping[int, str] = field(default_factory=dict)
    stats: Mapping[str, int] = field(default_factory=dict)
    retry_at: datetime | None = None
    """When the records of `retry`, split into a batch of their own, are tried again."""
    recovered_by: datetime | None = None
    """The destination answered: its other batches backing off start their backoff over and
    are tried again by this time at the latest (None leaves them as they are)."""
    dry_run: bool = False
    """The batch was written as a dry run, not sent: nothing was acknowledged by anyone."""

    def outcome(self, record_id: int) -> str:
        """The `delivery_log` outcome of a resolved record."""
        if record_id in self.rejected:
            return "rejected"
        return "dry_run" if self.dry_run else "acknowledged"

    def state(self, record_id: int) -> str:
        """The `destination_state` status of a resolved add."""
        if record_id in self.rejected:
            return REJECTED
        return DRY_RUN if self.dry_run else MEMBER


@dataclass(frozen=True)
class PlatformReport:
    """What an ad platform says back about one audience it holds, each figure with when it
    was read; None where it never said (a platform that reports nothing has all None)."""

    size_low: int | None = None
    """Meta's `approximate_count_lower_bound` (-1: too small for Meta to show)."""
    size_high: int | None = None
    """Meta's `approximate_count_upper_bound`."""
    operation_status: str | None = None
    """Meta's `operation_status` description (`Normal`, `replace_in_progress`, ...)."""
    size_read_at: datetime | None = None
    """When the size and operation status were read (`GET {audience_id}`)."""
    match_rate_low: int | None = None
    """Google's match-rate bucket of the latest processed upload, low end in percent."""
    match_rate_high: int | None = None
    """Its high end."""
    match_rate_read_at: datetime | None = None
    """When Google's diagnostics (match rate, errors) last came in."""
    invalid_entries: int | None = None
    """Records the platform could not use, over every upload: Meta's `num_invalid_entries`,
    Google's error records."""
    invalid_read_at: datetime | None = None
    """When the latest of them was read (Meta answers on upload, Google in its diagnostics)."""

    @property
    def read_at(self) -> datetime | None:
        """The latest time anything here was read."""
        times = [t for t in (self.size_read_at, self.match_rate_read_at, self.invalid_read_at) if t]
        return max(times) if times else None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> PlatformReport:
        """From the platform columns that end a `STATUS_SELECT` row, in their order."""
        invalid, invalid_at, rate_low, rate_high, errors, low, high, operation, sized, diagnosed = (
            row
        )
        if invalid is None:  # Google counts them in its diagnostics, Meta on each upload
            invalid, invalid_at = errors, diagnosed if errors is not None else None
        return cls(
            _int_or_none(low),
            _int_or_none(high),
            None if operation is None else str(operation),
            sized,
            _int_or_none(rate_low),
            _int_or_none(rate_high),
            diagnosed,
            _int_or_none(invalid),
            invalid_at,
        )


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class RouteStatus:
    """One line of `cohortsync status`: an audience × destination, or a conversion stream."""

    destination: str
    audience: str | None
    desired: int
    acknowledged: int
    pending: int
    retrying: int
    failed: int
    dead_lettered: int
    matchable: int
    last_sync: datetime | None
    next_attempt: datetime | None
    last_error: str | None
    dry_run_written: int = 0
    """Records written as a dry run that would be sent (members now, for an audience)."""
    dry_run: bool = False
    """The destination is set `dry_run: true` (filled in by the engine, which reads the config)."""
    platform_match_rate: tuple[int, int] | None = None
    """The match-rate range in percent (low, high) the platform last reported for this route's
    uploads once it processed them (Google's `uploadMatchRateRange`); None: none reported."""
    platform: PlatformReport = field(default_factory=PlatformReport)
    """What the platform says back about the audience, with when it was read."""

    @property
    def match_rate(self) -> float | None:
        """Members the destination can match, over members: a member counts when it has an
        identifier the destination may match on (for an ad platform, one the audience allows)
        and the destination did not refuse it. None for a conversion stream, or no members."""
        if self.audience is None or not self.desired:
            return None
        return self.matchable / self.desired

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> RouteStatus:
        """From a status query's row, in field order (counts may come back NULL), and the
        platform's columns after them when the row has them."""
        platform = PlatformReport()
        if len(row) > 13:
            platform = PlatformReport.from_row(row[13:])
            row = row[:13]
        destination, audience, *counts, last_sync, next_attempt, last_error = row
        desired, acked, pending, retrying, failed, dead, matchable, written = (
            int(c or 0) for c in counts
        )
        return cls(
            str(destination),
            None if audience is None else str(audience),
            desired,
            acked,
            pending,
            retrying,
            failed,
            dead,
            matchable,
            last_sync,
            next_attempt,
            last_error,
            dry_run_written=written,
            platform_match_rate=(
                None
                if platform.match_rate_low is None or platform.match_rate_high is None
                else (platform.match_rate_low, platform.match_rate_high)
            ),
            platform=platform,
        )


AudienceSizeRow = tuple[str, int | None, int | None, str | None]
"""(audience, low, high, operation status) of one size read back."""


@dataclass(frozen=True)
class SyncRunRecord:
    """The counts of one `cohortsync sync` run, kept in `sync_runs`."""

    started_at: datetime
    duration_ms: float
    dry_run: bool
    destination: str | None
    audience: str | None
    planned: int
    batches: int
    acknowledged: int
    rejected: int
    retrying: int
    dead_lettered: int


class OutboxStore(ABC):
    """Durable sync state; every method is one transaction."""

    @abstractmethod
    def plan(self, routes: Sequence[Route], now: datetime) -> PlanCounts:
        """Queue adds and removes that bring each route's destination to its desired state."""

    @abstractmethod
    def plan_conversions(self, routes: Sequence[ConversionRoute], now: datetime) -> PlanCounts:
        """Queue every matching event not queued before for its destination (once, ever)."""

    @abstractmethod
    def claim(
        self,
        destination: str,
        kind: str,
        max_records: int,
        now: datetime,
        audience: str | None = None,
    ) -> ClaimedBatch | None:
        """The next due batch: an unresolved one whose retry time has come, else a new one.

        A new batch holds one audience and one operation, oldest changes first, and never a
        profile with an earlier record still in flight (a remove never overtakes its add): a
        failed batch waiting for its retry time holds back only its own profiles. A batch
        deferred with `holds_destination` (the destination said when: `Retry-After`; or it is
        paused) holds back the whole destination: nothing is claimed before its time.
        """

    @abstractmethod
    def peek(
        self, destination: str, kind: str, max_records: int, audience: str | None = None
    ) -> list[ClaimedBatch]:
        """The batches `claim` would form now, without claiming anything (dry runs)."""

    @abstractmethod
    def resolve(self, batch: ClaimedBatch, resolution: Resolution, now: datetime) -> None:
        """Record the destination's answer and release the batch's rows, atomically."""

    def add_batch_stats(  # noqa: B027
        self, stats: Mapping[str, Mapping[str, int]], now: datetime | None = None
    ) -> None:
        """Add figures a destination reported later to earlier batches' results (read at
        `now`, kept as their audiences' `diagnosed_at`)."""

    def sizes_due(
        self, destination: str, every: float, now: datetime, audience: str | None = None
    ) -> list[str]:
        """Audiences the destination was sent (or `audience` alone) whose size was never read,
        or not in the last `every` seconds."""
        return []

    def record_sizes(  # noqa: B027
        self, destination: str, sizes: Sequence[AudienceSizeRow], now: datetime
    ) -> None:
        """Keep the sizes just read, each as its audience's latest reading, at `now`."""

    @abstractmethod
    def claim_ahead(
        self,
        destination: str,
        max_records: int,
        now: datetime,
        audience: str | None = None,
        batches: int = 1,
    ) -> list[ClaimedBatch]:
        """Up to `batches` batches of changes claimed in one transaction (a due retry alone)."""

    @abstractmethod
    def resolve_many(
        self, answered: Sequence[tuple[ClaimedBatch, Resolution]], now: datetime
    ) -> None:
        """Record several batches' answers in one transaction."""

    @abstractmethod
    def release(self, batches: Sequence[ClaimedBatch]) -> None:
        """Give back claimed batches that were not sent; they stay due."""

    @abstractmethod
    def defer(
        self,
        batch: ClaimedBatch,
        error: str,
        next_attempt: datetime,
        now: datetime,
        *,
        holds_destination: bool = True,
        backoff_attempts: int | None = None,
        recovered_by: datetime | None = None,
    ) -> None:
        """A failed attempt: count it and set when the same batch is tried again.

        `holds_destination`: nothing of the destination is claimed before `next_attempt`;
        otherwise only the batch's own profiles wait. `backoff_attempts`: the failures its
        backoff counts from now on (None: one more). `recovered_by`: as in `Resolution`, for
        an answer that still said when to come back (a 429 with `Retry-After`).
        """

    @abstractmethod
    def dead_letter(self, batch: ClaimedBatch, reason: str, now: datetime) -> None:
        """Give up on a batch: its records move to `dead_letters` with the reason."""

    @abstractmethod
    def retry_dead(self, destination: str | None, audience: str | None, now: datetime) -> int:
        """Mark dead letters as retried so the next plan queues their records again."""

    @abstractmethod
    def status(
        self,
        routes: Sequence[Route],
        conversion_destinations: Sequence[str],
        accepts: Mapping[tuple[str, str], Sequence[str]],
    ) -> list[RouteStatus]:
        """Per route: desired, acknowledged, pending, retrying, failed, dead letters, matches.

        `accepts` holds, per (destination, audience), the identifier kinds a member can be
        matched on; a member the destination refused is not a match.
        """

    @abstractmethod
    def log_run(self, run: SyncRunRecord) -> int:
        """Keep one sync run's counts; return its id."""

    @abstractmethod
    def runs(self, limit: int = 10) -> list[SyncRunRecord]:
        """The latest sync runs, newest first."""

    @abstractmethod
    def acknowledged(self, destination: str, audience: str) -> dict[str, bool]:
        """profile_id → holdout of what one destination acknowledged holding for an audience."""

    @abstractmethod
    def held(self, destination: str, audience: str) -> list[tuple[str, dict[str, str]]]:
        """(profile_id, identifiers as given) of every member outside the holdout that one
        destination acknowledged holding for an audience, by profile id."""


def stable_batch_id(kind: str, destination: str, ids: Sequence[int]) -> str:
    """A stable, unique id for a set of records: sent as the idempotency key on every try."""
    digest = hashlib.sha256(f"{kind}|{destination}|{','.join(map(str, ids))}".encode()).hexdigest()
    return f"{kind[:2]}_{ids[0]}_{digest[:16]}"


def record_table(kind: str) -> tuple[str, str]:
    """The outbox table of a record kind and its id column."""
    return ("outbox", "change_id") if kind == CHANGES else ("conversion_outbox", "conversion_id")


KEY = "destination, audience, profile_id"
"""The columns that name one profile of one audience at one destination."""


def key_match(a: str, b: str) -> str:
    """SQL matching the KEY columns of table aliases `a` and `b`."""
    return (
        f"{a}.destination = {b}.destination AND {a}.audience = {b}.audience "
        f"AND {a}.profile_id = {b}.profile_id"
    )


STATUS_SELECT = """SELECT r.destination, r.audience,
    (SELECT count(*) FROM desired d WHERE d.destination = r.destination
        AND d.audience = r.audience),
    (SELECT count(*) FROM destination_state s WHERE s.destination = r.destination
        AND s.audience = r.audience AND s.status = 'member'),
    (SELECT count(*) FROM outbox o WHERE o.destination = r.destination
        AND o.audience = r.audience),
    b.retrying,
    (SELECT count(*) FROM destination_state s WHERE s.destination = r.destination
        AND s.audience = r.audience AND s.status = 'rejected'),
    (SELECT count(*) FROM dead_letters x WHERE x.destination = r.destination
        AND x.audience = r.audience AND x.retried_at IS NULL),
    coalesce(mt.n, 0),
    (SELECT count(*) FROM destination_state s WHERE s.destination = r.destination
        AND s.audience = r.audience AND s.status = 'dry_run'),
    (SELECT max(resolved_at) FROM delivery_log l WHERE l.destination = r.destination
        AND l.audience = r.audience),
    b.next_attempt, b.last_error,
    rp.invalid, rp.invalid_at, pr.match_rate_low, pr.match_rate_high, pr.error_records,
    pr.size_low, pr.size_high, pr.operation_status, pr.sized_at, pr.diagnosed_at
FROM {routes} r
LEFT JOIN matchable mt ON mt.destination = r.destination AND mt.audience = r.audience
LEFT JOIN batches b ON b.destination = r.destination AND b.audience = r.audience
LEFT JOIN reported rp ON rp.destination = r.destination AND rp.audience = r.audience
LEFT JOIN platform_reports pr ON pr.destination = r.destination AND pr.audience = r.audience
ORDER BY r.audience, r.destination
"""
"""The per-route line of `status`, after the engine's own CTEs `desired`, `matchable`,
`batches` and `reported` (Meta's invalid entries), one row per destination and audience;
`{routes}` names the routes relation."""


def retry_batch_row(
    batch: ClaimedBatch, resolution: Resolution, retry_id: str, records: int, now: datetime
) -> tuple[Any, ...]:
    """The `sync_batches` row of the records of `batch` a destination asked to be retried: a
    batch of their own that does not hold back the destination (`holds_destination` false),
    its backoff one failure further on."""
    reason = next(iter(resolution.retry.values()))
    return (
        retry_id,
        batch.destination,
        batch.audience,
        batch.kind,
        batch.op,
        records,
        now,
        batch.attempts + 1,
        batch.first_attempt_at or now,
        resolution.retry_at or now,
        f"{records} records to retry: {reason}",
        batch.backoff_attempts + 1,
    )
