"""`cohortsync validate`: a test cohort sent through the real ingest path, checked downstream.

The cohort's events are ingested as any source's are; its profiles are marked as test
profiles (left out of `stats`). Compute and sync run in steps until every profile is a member
of the audiences it was made for and every destination acknowledged it (or, for a dry-run
destination, wrote a request naming it), or the timeout passes. Then each profile buys, and
the same is checked for the audiences the purchase takes it out of (retargeting) and puts it
into (suppression), and for the purchase forwarded as a conversion.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cohortsync.audiences.compute import ComputeReport
from cohortsync.config.loader import LoadedProject
from cohortsync.errors import InputError
from cohortsync.events.pipeline import IngestResult
from cohortsync.ops.validate_check import Inspector, tokens
from cohortsync.ops.validate_cohort import generate, load_cohort
from cohortsync.ops.validate_http import http_sender
from cohortsync.ops.validate_marks import mark, test_profiles
from cohortsync.ops.validate_model import TestProfile, audiences_of, history, purchase
from cohortsync.ops.validate_rows import (
    ENTER,
    PURCHASE,
    Row,
    Subject,
    judge_conversion,
    judge_in,
    judge_out,
)
from cohortsync.segments.ast import SegmentProject
from cohortsync.store.base import Store
from cohortsync.sync.configure import SyncSetup
from cohortsync.sync.run import SyncReport

SOURCE = "validate"
PAUSE_S = 0.5
MARGIN_US = 10 * 60 * 1_000_000
"""How long past the run's end a generated profile's membership must still hold."""


class Pipeline(Protocol):
    """What validate drives: the facade's ingest, compute and sync over one store."""

    store: Store
    loaded: LoadedProject

    @property
    def segments(self) -> SegmentProject: ...

    @property
    def sync_setup(self) -> SyncSetup: ...

    def ingest_messages(
        self, raws: Iterable[Any], *, source: str = ..., origin: str = ...
    ) -> IngestResult: ...

    def compute(self) -> ComputeReport: ...

    def sync(self) -> SyncReport: ...


@dataclass(frozen=True)
class Options:
    """What to validate: a cohort file, or `generate` profiles on `domain`."""

    cohort: Path | None = None
    generate: int | None = None
    domain: str | None = None
    timeout_s: float = 60.0
    url: str | None = None
    """a running `cohortsync serve` the events are sent to (else they are ingested here)"""


@dataclass
class ValidationReport:
    """Every row, whether all passed, and how long each step took."""

    rows: list[Row] = field(default_factory=list)
    profiles: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    """a step that could not run (a compute not recorded), else None"""

    @property
    def passed(self) -> bool:
        """No row failed, and every step ran."""
        return self.error is None and all(r.ok is not False for r in self.rows)


def validate(
    engine: Pipeline, options: Options, clock: Callable[[], float] = time.monotonic
) -> ValidationReport:
    """Send the cohort, check it entered and was acknowledged, make it buy, check it left
    retargeting and entered suppression downstream; each step within `options.timeout_s`."""
    project = engine.segments
    left = test_profiles(engine.store)
    if left:
        raise InputError(
            f"{len(left)} test profiles of an earlier validate remain — run "
            "`cohortsync validate --cleanup` first"
        )
    start_us = _now_us()
    horizon = int(2 * options.timeout_s * 1_000_000) + MARGIN_US
    report = ValidationReport()
    profiles = _cohort(options, project, start_us, horizon, report)
    _not_taken(engine, profiles)
    report.profiles = len(profiles)
    send = _sender(engine, options)
    sent = datetime.now(UTC)
    send(_messages(profiles, start_us))
    found = {p.email: engine.store.find_profile("email", p.email) for p in profiles}
    mark(engine.store, [i for i in found.values() if i], f"validate {sent.isoformat()}")
    ids = {p.email: _profile_id(found[p.email], p) for p in profiles}
    look = Inspector(engine.store, engine.loaded.root / engine.loaded.project.sync.dry_run_dir)
    subjects = {
        p.email: Subject(p.masked, ids[p.email], tokens(p.email, ids[p.email], p.user_id))
        for p in profiles
    }

    def enter_rows() -> list[Row]:
        return [r for p in profiles for r in _rows_in(engine, look, p, subjects[p.email], sent)]

    rows = _until(engine, enter_rows, options.timeout_s, clock, report, ENTER)
    report.rows += rows
    if report.error:
        return report
    bought = datetime.now(UTC)
    buy_us = _now_us()
    send(_purchase(p, buy_us) for p in profiles)
    changes = {p.email: _after_purchase(project, p, start_us, buy_us, horizon) for p in profiles}

    def purchase_rows() -> list[Row]:
        out: list[Row] = []
        for p in profiles:
            leaves, enters = changes[p.email]
            out += _rows_changed(engine, look, subjects[p.email], leaves, enters, bought)
        return out

    report.rows += _until(engine, purchase_rows, options.timeout_s, clock, report, PURCHASE)
    return report


def _sender(engine: Pipeline, options: Options) -> Callable[[Iterable[dict[str, Any]]], None]:
    """How the cohort's messages are ingested: HTTP to a running serve, or in this process."""
    if options.url:
        return http_sender(options.url, engine.loaded.project)

    def ingest(messages: Iterable[dict[str, Any]]) -> None:
        engine.ingest_messages(messages, source=SOURCE, origin=SOURCE)

    return ingest


def _cohort(
    options: Options, project: SegmentProject, now_us: int, horizon: int, report: ValidationReport
) -> list[TestProfile]:
    if options.cohort is not None:
        return load_cohort(options.cohort, project)
    if options.generate is None:
        raise InputError("validate needs --cohort FILE or --generate N --domain D")
    if not options.domain:
        raise InputError("--generate needs --domain D: test profiles are test+N@D")
    profiles, missed = generate(options.generate, options.domain, project, now_us, horizon)
    if not profiles:
        raise InputError(
            "no test profile could be put into any audience of the project — describe them "
            "in a --cohort file"
        )
    for name, why in missed.items():
        report.rows.append(Row("—", ENTER, name, None, "member", ok=None, detail=why))
    return profiles


def _not_taken(engine: Pipeline, profiles: list[TestProfile]) -> None:
    """A cohort address already held by a profile that is not a test one is refused."""
    for p in profiles:
        if engine.store.find_profile("email", p.email) is not None:
            raise InputError(
                f"{p.masked} already has a profile that is not a test profile — pass another "
                "--domain (or other addresses in the cohort file)"
            )


def _profile_id(found: str | None, profile: TestProfile) -> str:
    if found is None:
        raise InputError(
            f"{profile.masked}: its events were not stored (see `cohortsync stats` for "
            "quarantined rows) — check the cohort's events"
        )
    return found


def _now_us() -> int:
    return int(datetime.now(UTC).timestamp() * 1_000_000)


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat().replace("+00:00", "Z")


def _messages(profiles: list[TestProfile], now_us: int) -> Iterable[dict[str, Any]]:
    """Each profile's identify (dated before its first event) and track calls."""
    for p in profiles:
        first = max((e.ago_us for e in p.events), default=0) + 60_000_000
        traits: dict[str, Any] = {"email": p.email, **p.traits}
        if p.phone:
            traits["phone"] = p.phone
        yield {
            "type": "identify",
            "messageId": f"cstest-{uuid.uuid4()}",
            "userId": p.user_id,
            "traits": traits,
            "timestamp": _iso(now_us - first),
        }
        for e in p.events:
            yield {
                "type": "track",
                "messageId": f"cstest-{uuid.uuid4()}",
                "userId": p.user_id,
                "event": e.event,
                "properties": e.properties,
                "timestamp": _iso(now_us - e.ago_us),
            }


def _purchase(profile: TestProfile, at_us: int) -> dict[str, Any]:
    """The purchase, placed on a web page as a shop's browser-fed order is (a conversion)."""
    return {
        "type": "track",
        "messageId": f"cstest-{uuid.uuid4()}",
        "userId": profile.user_id,
        "event": purchase().event,
        "properties": purchase().properties,
        "timestamp": _iso(at_us),
        "context": {
            "page": {"url": "https://shop.example.com/checkout/thank-you"},
            "userAgent": "cohortsync-validate/1",
            "ip": "192.0.2.1",
        },
    }


def _after_purchase(
    project: SegmentProject, p: TestProfile, start_us: int, buy_us: int, horizon: int
) -> tuple[set[str], set[str]]:
    """The audiences the purchase takes the profile out of, and those it puts it into."""
    before = audiences_of(project, history(p, start_us), (buy_us,))
    bought = history(p, start_us, (purchase(start_us - buy_us),))
    after = audiences_of(project, bought, (buy_us, buy_us + horizon // 2))
    return before - after, after - before


def _until(
    engine: Pipeline,
    rows: Callable[[], list[Row]],
    timeout_s: float,
    clock: Callable[[], float],
    report: ValidationReport,
    step: str,
) -> list[Row]:
    """Compute and sync, then check, until every row passes or the timeout is over."""
    started = clock()
    while True:
        computed = engine.compute()
        if not computed.recorded:
            report.error = f"compute was not recorded: {computed.reason}"
            return []
        engine.sync()
        found = rows()
        if all(r.ok is not False for r in found) or clock() - started >= timeout_s:
            report.seconds[step] = round(clock() - started, 3)
            return found
        time.sleep(PAUSE_S)


def _routes(engine: Pipeline, audience: str) -> list[Any]:
    return [r for r in engine.sync_setup.routes if r.audience == audience] or [None]


def _rows_in(
    engine: Pipeline, look: Inspector, p: TestProfile, subject: Subject, since: datetime
) -> list[Row]:
    """Rows of the enter step: every expected audience × destination, and every audience the
    profile is a member of without being expected there."""
    out: list[Row] = []
    for name in sorted(engine.segments.audiences):
        holdout = look.member(name, subject.profile_id)
        if name in p.expect:
            for route in _routes(engine, name):
                row = Row(p.masked, ENTER, name, route and route.destination, "member")
                out.append(judge_in(row, subject, route, holdout, look, since))
        elif holdout is not None:
            row = Row(p.masked, ENTER, name, None, "not a member", "member", ok=False)
            row.detail = "recorded as a member of an audience it was not made for"
            out.append(row)
    return out


def _rows_changed(
    engine: Pipeline,
    look: Inspector,
    subject: Subject,
    leaves: set[str],
    enters: set[str],
    since: datetime,
) -> list[Row]:
    """Rows of the purchase step: audiences left and entered, and the conversions sent."""
    out: list[Row] = []
    for name in sorted(leaves | enters):
        holdout = look.member(name, subject.profile_id)
        for route in _routes(engine, name):
            destination = route and route.destination
            if name in leaves:
                row = Row(subject.masked, PURCHASE, name, destination, "leaves")
                out.append(judge_out(row, subject, route, holdout, look, since))
            else:
                row = Row(subject.masked, PURCHASE, name, destination, "enters")
                out.append(judge_in(row, subject, route, holdout, look, since))
    for conv in engine.sync_setup.conversion_routes:
        if conv.event == purchase().event:
            row = Row(subject.masked, PURCHASE, f"conversion {conv.name}", conv.destination, "sent")
            out.append(judge_conversion(row, subject, look, since))
    return out


__all__ = ["Options", "Pipeline", "ValidationReport", "validate"]
