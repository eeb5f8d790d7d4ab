"""One row per test profile × audience × destination: what was expected, seen, acknowledged.

A row is judged from what the store recorded (membership) and what the destination answered
(`delivery_log`, `destination_state`; for a dry-run destination, the request file written).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cohortsync.ops.validate_check import ACKED, HOLDING, Delivered, Downstream, Inspector
from cohortsync.store.outbox import Route

ENTER = "enter"
PURCHASE = "purchase"


@dataclass
class Row:
    """One check of the test cohort; `ok` None means not tested (the detail says why)."""

    profile: str
    """the profile's email, masked: `t***+3@example.com`"""
    step: str
    """`enter` (after its events), `purchase` (after it bought)"""
    audience: str
    """an audience, or `conversion NAME` for the purchase forwarded as a conversion"""
    destination: str | None
    expected: str
    """`member`, `not a member`, `leaves` or `enters`"""
    seen: str | None = None
    """membership recorded now: `member`, `member (holdout)` or `not a member`"""
    acknowledged: str | None = None
    """what the destination shows: `acknowledged`, `dry run written`, `removed`, …"""
    latency_s: float | None = None
    """seconds from the step's events being ingested to the destination's answer"""
    ok: bool | None = None
    detail: str = ""
    """why a row failed or was not tested"""


@dataclass(frozen=True)
class Subject:
    """A test profile as rows are judged: masked email, profile id, how requests name it."""

    masked: str
    profile_id: str
    tokens: tuple[str, ...]


def _latency(delivered: Delivered | None, since: datetime) -> float | None:
    if delivered is None:
        return None
    return round(max((delivered.resolved_at - since).total_seconds(), 0.0), 3)


def seen_text(holdout: bool | None) -> str:
    """How a membership reads in a row."""
    if holdout is None:
        return "not a member"
    return "member (holdout)" if holdout else "member"


def judge_in(
    row: Row,
    subject: Subject,
    route: Route | None,
    holdout: bool | None,
    look: Inspector,
    since: datetime,
) -> Row:
    """A profile that should be in the audience: recorded as a member and, per destination,
    acknowledged (or, where it is a holdout member of an ad platform's route, not sent)."""
    row.seen = seen_text(holdout)
    if holdout is None:
        row.ok, row.detail = False, "not recorded as a member of the audience"
        return row
    if route is None:
        row.ok = True
        return row
    down = look.downstream(route.destination, row.audience, subject.profile_id, since)
    if holdout and not route.include_holdout:
        row.acknowledged = "held out: not sent"
        row.ok = down.held not in HOLDING
        row.detail = "" if row.ok else "a holdout member was sent to an ad platform"
        return row
    return _added(row, subject, route, down, look, since)


def _added(
    row: Row, subject: Subject, route: Route, down: Downstream, look: Inspector, since: datetime
) -> Row:
    got = down.delivered
    if got is not None and got.op == "add" and got.outcome in ACKED and down.held in HOLDING:
        row.latency_s = _latency(got, since)
        if route.dry_run:
            written = look.in_dry_run(route.destination, got.batch_id, subject.tokens)
            row.acknowledged = "dry run written" if written else "dry run lacks the profile"
            row.ok = written
            row.detail = (
                "" if written else f"the dry-run request of batch {got.batch_id} does not name it"
            )
        else:
            row.acknowledged, row.ok = "acknowledged", True
        return row
    row.ok = False
    row.acknowledged, row.detail = _trouble(down, "add")
    return row


def _trouble(down: Downstream, op: str) -> tuple[str, str]:
    """What a destination shows instead of an acknowledged `op`, and why it fails."""
    if down.dead:
        return "dead letter", down.dead
    if down.delivered is not None and down.delivered.outcome == "rejected":
        return "rejected", down.delivered.reason or "refused"
    if down.held == "rejected":
        return "rejected", down.reason or "refused"
    if down.waiting:
        return "pending", f"the {op} is still queued (retrying, or not yet delivered)"
    return "not delivered", f"no {op} was queued for this destination"


def judge_out(
    row: Row,
    subject: Subject,
    route: Route | None,
    holdout: bool | None,
    look: Inspector,
    since: datetime,
) -> Row:
    """A profile that should have left the audience: no longer a member, and no destination
    holds it (its removal acknowledged, or written by a dry run)."""
    row.seen = seen_text(holdout)
    if holdout is not None:
        row.ok, row.detail = False, "still recorded as a member"
        return row
    if route is None:
        row.ok = True
        return row
    down = look.downstream(route.destination, row.audience, subject.profile_id, since)
    got = down.delivered
    if down.held in HOLDING:
        row.ok = False
        row.acknowledged, row.detail = _trouble(down, "remove")
        if row.acknowledged == "not delivered":
            row.acknowledged, row.detail = "still held", "the destination still holds it"
        return row
    if got is not None and got.op == "remove" and got.outcome in ACKED:
        row.latency_s = _latency(got, since)
        row.acknowledged = "dry run: remove written" if route.dry_run else "removed"
    else:
        row.acknowledged = "never held"  # a holdout member of an ad platform, never sent
    row.ok = True
    return row


def judge_conversion(row: Row, subject: Subject, look: Inspector, since: datetime) -> Row:
    """The purchase forwarded to a conversion destination: acknowledged or written dry."""
    destination = row.destination or ""
    got = look.delivered("conversions", destination, "", subject.profile_id, since)
    row.seen = "purchase stored"
    if got is not None and got.outcome in ACKED:
        row.acknowledged = "dry run written" if got.outcome != "acknowledged" else "acknowledged"
        row.latency_s, row.ok = _latency(got, since), True
    elif got is not None:
        row.acknowledged, row.ok, row.detail = "rejected", False, got.reason or "refused"
    else:
        row.acknowledged, row.ok = "not delivered", False
        row.detail = "the purchase was not delivered as a conversion"
    return row
