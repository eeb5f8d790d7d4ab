"""Delivery: claim due batches, send them, record each destination's answer.

One batch is one unit for its whole life: the same records under the same id on every attempt,
so a destination that already applied it recognises the resend. A failure never loses a record:
timeouts, 429 and 5xx are retried with backoff (never before `Retry-After`); 401/403 pause the
destination with its queue kept; a 400 moves the batch to dead letters with the reason. Adds and
conversions go to dead letters once the retry window has passed; exits are retried for as long
as it takes, since a buyer must always leave a retargeting list.

A batch failing on its own holds back only its own profiles (order is kept per profile, not per
destination); a `Retry-After` or a pause holds back the whole destination. A 2xx, or a 429 with
`Retry-After`, shows the destination is up: its backoff starts over from the base.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum

from cohortsync.destinations.base import (
    AnyDestination,
    AuthError,
    Batch,
    BatchResult,
    Change,
    Conversion,
    ConversionBatch,
    DeliveryError,
    DryRun,
    PermanentError,
    TransientError,
)
from cohortsync.destinations.http import scrub
from cohortsync.store.outbox import (
    CHANGES,
    CONVERSIONS,
    ClaimedBatch,
    OutboxStore,
    Resolution,
)
from cohortsync.sync.dry_run_files import DryRunFolder
from cohortsync.sync.retry import RetryPolicy

Clock = Callable[[], datetime]

FAILURES_IN_A_ROW = 2
"""A run stops sending to a destination after this many batches failed one after the other:
one failure may be the batch's own, two in a row say the destination is down."""

SIZES_CHECKED_EVERY = timedelta(minutes=1)
"""How often a long-lived deliverer (serve's) asks the store which audiences' sizes are due:
a read is hourly by default, so its delivery rounds need not ask every time."""

CLAIM_AHEAD = 8
"""Batches of changes claimed in one transaction and recorded in one after they are sent: the
store's cost per batch shrinks about eightfold; a crash may send up to this many again, each
with its idempotency key."""


class Outcome(Enum):
    """How one attempt at a batch went, for the rest of the run."""

    ANSWERED = "answered"
    """Acknowledged (records possibly rejected or to retry) or refused for good."""
    FAILED = "failed"
    """Retried later; only the batch's own profiles wait."""
    HELD = "held"
    """Retried later; the whole destination waits (it said when, or is paused)."""


@dataclass
class Tally:
    """What one sync run did for one destination and audience (or its conversions).

    A dry run counts what would be sent (`would_send`) and what would be refused (`rejected`),
    never `acknowledged`; `reasons` counts refusals by reason, sent or dry.
    """

    batches: int = 0
    acknowledged: int = 0
    rejected: int = 0
    retrying: int = 0
    dead_lettered: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    dry_run: bool = False
    would_send: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def refuse(self, rejected: Mapping[int, str]) -> None:
        """Count refused records, by reason."""
        self.rejected += len(rejected)
        for reason in rejected.values():
            kind = reason_kind(reason)
            self.reasons[kind] = self.reasons.get(kind, 0) + 1

    def wrote(self, records: int, refused: Mapping[int, str]) -> None:
        """Count a batch written as a dry run."""
        self.dry_run = True
        self.would_send += records - len(refused)
        self.refuse(refused)


_CODE = re.compile(r"^([a-z][a-z0-9_]*): ")


def reason_kind(reason: str) -> str:
    """A refusal reason without its per-record detail, to count refusals by kind: a reason
    that starts with a code (`too_old: event_time …`) is its code, any other its first clause."""
    code = _CODE.match(reason)
    return code.group(1) if code else reason.split("; ", 1)[0]


@dataclass
class DeliveryReport:
    """Per (destination, audience or None for conversions), the tally of a run."""

    tallies: dict[tuple[str, str | None], Tally] = field(default_factory=dict)

    def tally(self, destination: str, audience: str | None) -> Tally:
        """The tally of one route, created on first use."""
        return self.tallies.setdefault((destination, audience), Tally())

    def total(self, attribute: str) -> int:
        """A count summed over every route."""
        return sum(int(getattr(t, attribute)) for t in self.tallies.values())


def match_kinds(
    accepts: Sequence[str], ad_platform: bool, allowed: Sequence[str]
) -> tuple[str, ...]:
    """The identifier kinds a destination may match an audience's members on: those it accepts,
    and for an ad platform only those the audience lists under `identifiers` (when it lists)."""
    return tuple(k for k in accepts if not (ad_platform and allowed) or k in allowed)


def unmatchable(
    batch: ClaimedBatch,
    destination: AnyDestination,
    identifiers: Mapping[str, tuple[str, ...]],
) -> dict[int, str]:
    """Adds an ad platform could not match: none of the identifiers the audience allows it.

    They are refused before sending, with a reason naming only what the audience allows.
    """
    if batch.kind != CHANGES or not destination.capabilities.ad_platform:
        return {}
    audience = batch.audience or ""
    kinds = match_kinds(destination.capabilities.identifiers, True, identifiers.get(audience, ()))
    wanted = " or ".join(kinds) or "identifier"
    reason = f"no {wanted}: the identifiers {audience} lets {batch.destination} match on"
    return {
        r.record_id: reason
        for r in batch.records
        if r.op == "add" and not any(r.identifiers.get(kind) for kind in kinds)
    }


def to_batch(
    batch: ClaimedBatch,
    identifiers: Mapping[str, tuple[str, ...]],
    ad_platform: bool,
    skip: Collection[int] = (),
) -> Batch:
    """The destination's view of a claimed batch of changes, without the records in `skip`.

    Ad platforms get only the identifier kinds the audience lists under `identifiers`; the
    team's own systems (warehouse, webhook, analytics) get every identifier.
    """
    allowed = identifiers.get(batch.audience or "", ()) if ad_platform else ()
    changes = tuple(
        Change(
            change_id=r.record_id,
            audience=batch.audience or "",
            profile_id=r.profile_id,
            op="add" if r.op == "add" else "remove",
            holdout=r.holdout,
            at=r.at,
            identifiers=(
                {k: v for k, v in r.identifiers.items() if k in allowed}
                if allowed
                else r.identifiers
            ),
        )
        for r in batch.records
        if r.record_id not in skip
    )
    return Batch(batch.batch_id, batch.audience or "", changes)


def to_conversions(batch: ClaimedBatch) -> ConversionBatch:
    """The destination's view of a claimed batch of conversions."""
    conversions = []
    for r in batch.records:
        c = r.conversion
        value = c.get("value")
        conversions.append(
            Conversion(
                conversion_id=r.record_id,
                message_id=str(c["message_id"]),
                name=str(c["name"]),
                event=str(c["event"]),
                at=r.at,
                profile_id=r.profile_id,
                identifiers=r.identifiers,
                value=None if value is None else float(value),
                currency=c.get("currency"),
                properties=c.get("properties") or {},
                context=c.get("context") or {},
            )
        )
    return ConversionBatch(batch.batch_id, tuple(conversions))


def preview(
    destination: AnyDestination,
    batch: ClaimedBatch,
    identifiers: Mapping[str, tuple[str, ...]],
) -> DryRun:
    """What sending a claimed batch would do, sending nothing: the requests, and every record
    that would be refused (by the sync layer or by the destination) with its reason."""
    refused = unmatchable(batch, destination, identifiers)
    if batch.kind == CHANGES:
        kept = to_batch(batch, identifiers, destination.capabilities.ad_platform, refused)
        found = destination.preview(kept) if kept.changes else DryRun([])
    else:
        found = destination.preview(to_conversions(batch))
    return DryRun(found.requests, {**refused, **found.refused})


class Deliverer:
    """Drains the outbox of a set of destinations until nothing more is due now.

    A destination with a folder in `dry_runs` is never sent anything: each batch it claims is
    written there and resolved as a dry run, so it leaves the outbox as a sent one would.
    """

    def __init__(
        self,
        outbox: OutboxStore,
        destinations: Mapping[str, AnyDestination],
        policy: RetryPolicy,
        clock: Clock,
        identifiers: Mapping[str, tuple[str, ...]] | None = None,
        progress: Callable[[int], None] | None = None,
        dry_runs: Mapping[str, DryRunFolder] | None = None,
    ) -> None:
        self.progress = progress
        self.outbox = outbox
        self.destinations = destinations
        self.policy = policy
        self.clock = clock
        self.identifiers = identifiers or {}
        self.dry_runs = dry_runs or {}
        self._sizes_checked: dict[str, datetime] = {}

    def run(self, audience: str | None = None, max_batches: int | None = None) -> DeliveryReport:
        """Deliver every due batch of every destination (optionally one audience)."""
        delivery = DeliveryReport()
        for name, destination in self.destinations.items():
            capabilities = destination.capabilities
            kinds: Sequence[str] = [
                kind
                for kind, takes in (
                    (CHANGES, capabilities.audiences),
                    (CONVERSIONS, capabilities.conversions and audience is None),
                )
                if takes
            ]
            for kind in kinds:
                self._drain(name, destination, kind, audience, delivery, max_batches)
            if name not in self.dry_runs:
                self._follow_up(destination)
                self._read_sizes(name, destination, audience)
        return delivery

    def _follow_up(self, destination: AnyDestination) -> None:
        """Add what the destination now reports about earlier batches to their results."""
        try:
            found = destination.collect_diagnostics()
        except DeliveryError:
            return  # asked again on the next run
        if found:
            self.outbox.add_batch_stats(found, self.clock())

    def _read_sizes(self, name: str, destination: AnyDestination, audience: str | None) -> None:
        """Read the size of each audience sent to the destination whose last reading is older
        than the destination's interval, and keep what was read with the time."""
        every = destination.read_sizes_every()
        now = self.clock()
        checked = self._sizes_checked.get(name)
        if every is None or (checked is not None and now - checked < SIZES_CHECKED_EVERY):
            return
        self._sizes_checked[name] = now
        due = self.outbox.sizes_due(name, every, now, audience)
        if not due:
            return
        try:
            sizes = destination.read_sizes(due)
        except DeliveryError:
            return  # read again on the next run
        rows = [(s.audience, s.low, s.high, s.operation_status) for s in sizes]
        self.outbox.record_sizes(name, rows, self.clock())

    def _drain(
        self,
        name: str,
        destination: AnyDestination,
        kind: str,
        audience: str | None,
        delivery: DeliveryReport,
        max_batches: int | None,
    ) -> None:
        sent = failed = 0
        while max_batches is None or sent < max_batches:
            now = self.clock()
            max_records = destination.capabilities.max_batch
            if kind == CHANGES:
                ahead = CLAIM_AHEAD if max_batches is None else min(CLAIM_AHEAD, max_batches - sent)
                batches = self.outbox.claim_ahead(name, max_records, now, audience, ahead)
            else:
                one = self.outbox.claim(name, kind, max_records, now, audience)
                batches = [] if one is None else [one]
            if not batches:
                return
            answered: list[tuple[ClaimedBatch, Resolution]] = []
            try:
                for index, batch in enumerate(batches):
                    sent += 1
                    outcome = self.deliver(destination, batch, delivery, answered)
                    if self.progress is not None:
                        self.progress(len(batch.records))
                    failed = failed + 1 if outcome is Outcome.FAILED else 0
                    if outcome is Outcome.HELD or failed >= FAILURES_IN_A_ROW:
                        self.outbox.release(batches[index + 1 :])
                        return  # the destination is failing: send it nothing more this run
            finally:
                self.outbox.resolve_many(answered, self.clock())

    def deliver(
        self,
        destination: AnyDestination,
        batch: ClaimedBatch,
        delivery: DeliveryReport,
        answered: list[tuple[ClaimedBatch, Resolution]] | None = None,
    ) -> Outcome:
        """Send one batch (or write it as a dry run) and record the outcome; an answer is
        added to `answered` instead, when given, for the caller to record with others."""
        tally = delivery.tally(batch.destination, batch.audience)
        tally.batches += 1
        folder = self.dry_runs.get(batch.destination)
        try:
            if folder is not None:
                written = preview(destination, batch, self.identifiers)
                folder.write(batch, written.requests, written.refused)
            else:
                result = self._send(destination, batch)
        except TransientError as exc:
            return self._transient(batch, str(exc), exc.retry_after, tally)
        except AuthError as exc:
            now = self.clock()
            error = f"paused: {exc}"
            pause = now + timedelta(seconds=self.policy.auth_pause)
            self.outbox.defer(batch, error, pause, now, backoff_attempts=batch.backoff_attempts)
            tally.retrying += len(batch.records)
            tally.error = error
            return Outcome.HELD
        except PermanentError as exc:
            self.outbox.dead_letter(batch, f"refused: {exc}", self.clock())
            tally.dead_lettered += len(batch.records)
            tally.error = str(exc)
            return Outcome.ANSWERED
        except Exception as exc:  # a destination bug must not lose the batch: retry it
            return self._transient(batch, scrub(f"{type(exc).__name__}: {exc}"), None, tally)
        if folder is not None:
            resolution = Resolution(rejected=written.refused, dry_run=True)
            tally.wrote(len(batch.records), written.refused)
        else:
            resolution = self._resolved(batch, result, tally)
        if answered is None:
            self.outbox.resolve(batch, resolution, self.clock())
        else:
            answered.append((batch, resolution))
        return Outcome.ANSWERED

    def _send(self, destination: AnyDestination, batch: ClaimedBatch) -> BatchResult:
        """Send one batch; adds it could not match are refused here and never sent."""
        if batch.kind != CHANGES:
            return destination.send_conversions(to_conversions(batch))
        refused = unmatchable(batch, destination, self.identifiers)
        kept = to_batch(batch, self.identifiers, destination.capabilities.ad_platform, refused)
        result = destination.apply(kept) if kept.changes else BatchResult()
        return BatchResult({**refused, **result.rejected}, result.retry, result.stats)

    def _transient(
        self, batch: ClaimedBatch, error: str, retry_after: float | None, tally: Tally
    ) -> Outcome:
        """Dead-letter an add or conversion past the retry window, else defer it: until the
        time the destination gave (holding all of it, its backoff started over), or by the
        backoff (holding only the batch's profiles)."""
        now = self.clock()
        first = batch.first_attempt_at or now
        expired = (now - first).total_seconds() >= self.policy.window
        tally.error = error
        if expired and batch.op != "remove":
            reason = f"gave up after {batch.attempts + 1} attempts over {now - first}: {error}"
            self.outbox.dead_letter(batch, reason, now)
            tally.dead_lettered += len(batch.records)
            return Outcome.FAILED
        tally.retrying += len(batch.records)
        if retry_after is not None:
            at = now + timedelta(seconds=self.policy.delay(0, retry_after))
            self.outbox.defer(batch, error, at, now, backoff_attempts=0, recovered_by=at)
            return Outcome.HELD
        failures = batch.backoff_attempts + 1
        at = now + timedelta(seconds=self.policy.delay(failures))
        self.outbox.defer(batch, error, at, now, holds_destination=False, backoff_attempts=failures)
        return Outcome.FAILED

    def _resolved(self, batch: ClaimedBatch, result: BatchResult, tally: Tally) -> Resolution:
        """The resolution of a destination's answer, counted in `tally`."""
        ids = {r.record_id for r in batch.records}
        rejected = {k: v for k, v in result.rejected.items() if k in ids}
        retry = {k: v for k, v in result.retry.items() if k in ids and k not in rejected}
        now = self.clock()
        retry_at = None
        if retry:  # records failing on their own in an answer: their backoff goes on
            retry_at = now + timedelta(seconds=self.policy.delay(batch.backoff_attempts + 1))
        # The destination answered: what backs off for it is tried again within the base.
        recovered_by = now + timedelta(seconds=self.policy.delay(1))
        tally.acknowledged += len(ids) - len(rejected) - len(retry)
        tally.refuse(rejected)
        tally.retrying += len(retry)
        for key, value in result.stats.items():
            tally.stats[key] = tally.stats.get(key, 0) + int(value)
        return Resolution(rejected, retry, dict(result.stats), retry_at, recovered_by)


def elapsed_ms(started: float) -> float:
    """Milliseconds since a `time.perf_counter()` value."""
    return (time.perf_counter() - started) * 1000
