"""The facade: one object that opens a project and offers everything cohortsync does.

The CLI, the HTTP server and the dashboard call this and hold no logic of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx

from cohortsync.audiences import compute as audience_compute
from cohortsync.audiences import members as audience_members
from cohortsync.audiences.compute import ComputeReport
from cohortsync.audiences.members import Member, Preview
from cohortsync.config.loader import LoadedProject, load_project, parse_segments
from cohortsync.errors import ConfigError, InputError, NotFoundError
from cohortsync.events.pipeline import IngestResult, PipelinedWriter, store_messages
from cohortsync.events.readers import BadRow, file_size, read_rows
from cohortsync.events.timestamps import TimestampError, now_micros, parse_timestamp, to_micros
from cohortsync.events.validate import content_message_id, validate_message
from cohortsync.identity.normalize import IdentifierError, normalize_identifier
from cohortsync.moments import to_datetime
from cohortsync.ops import catalog as catalog_ops
from cohortsync.ops import lock as lock_ops
from cohortsync.ops import plan as plan_ops
from cohortsync.ops import report as report_ops
from cohortsync.ops.catalog import Catalog
from cohortsync.ops.catalog_render import (
    catalog_html,
    catalog_json,
    catalog_markdown,
    write_catalog,
)
from cohortsync.ops.dashboard import AudienceSize, Day, DeadGroup, Figures
from cohortsync.ops.drift import Drift, delivered, read_drift
from cohortsync.ops.explain import ProfileWhy, explain_profile
from cohortsync.ops.explain_json import explanation_json, memberships_json
from cohortsync.ops.lint import LintReport, lint_project
from cohortsync.ops.lint_codes import Reported
from cohortsync.ops.lock import LockReport
from cohortsync.ops.plan import Plan
from cohortsync.ops.reconcile import ReconcileReport, RouteReconcile
from cohortsync.ops.reconcile import reconcile as reconcile_routes
from cohortsync.ops.report import SRM_ALERT, Arm, AudienceReport, Report
from cohortsync.ops.report_html import REPORT_CSS, report_fragment, report_page
from cohortsync.ops.report_json import audience_json, report_json, verdict
from cohortsync.ops.report_latency import Latency
from cohortsync.ops.report_trend import Cost
from cohortsync.ops.spend import SpendIngest, read_spend, store_spend
from cohortsync.ops.validate import Options as ValidateOptions
from cohortsync.ops.validate import ValidationReport, validate
from cohortsync.ops.validate_marks import Cleanup, cleanup
from cohortsync.ops.validate_rows import Row as ValidationRow
from cohortsync.realtime.bus import open_bus
from cohortsync.realtime.bus_member import BusMember, member_name
from cohortsync.realtime.bus_roles import BusGateway, BusWorker
from cohortsync.realtime.cadence import CadenceScheduler, Schedule
from cohortsync.realtime.evaluation import ProfileProcessor
from cohortsync.realtime.index import build_index
from cohortsync.realtime.loop import RealtimeLoop, RoundReport
from cohortsync.realtime.serve_workers import DeliveryLoop, ServeWorkers
from cohortsync.segments.ast import Audience, SegmentProject
from cohortsync.segments.names import IDENTIFIER_KINDS
from cohortsync.store.base import ProfileView, Store
from cohortsync.store.locations import redact
from cohortsync.store.opening import open_store
from cohortsync.store.outbox import PlanCounts, RouteStatus, SyncRunRecord
from cohortsync.store.records import Message, Rejection
from cohortsync.sync.backlog import DeliveryBacklog, delivery_backlog
from cohortsync.sync.configure import SyncSetup, sync_setup
from cohortsync.sync.downstream import downstream
from cohortsync.sync.ledger import ledger_for
from cohortsync.sync.profile_state import Membership, memberships, profile_ids
from cohortsync.sync.retry import RetryPolicy
from cohortsync.sync.run import SyncReport, run_sync
from cohortsync.sync.worker import Clock, DeliveryReport, Tally

Listener = Callable[[Sequence[Message], IngestResult], None]
"""Called with the messages of a commit and what storing them did (`IngestResult.profiles`,
`.merged`: the profiles they touched)."""

FILE_BATCH = 50_000
IDENTIFIER_PREFIXES = (*IDENTIFIER_KINDS, "profile_id")


@dataclass(frozen=True)
class FileReport:
    """What ingesting one file did."""

    path: Path
    result: IngestResult


class Engine:
    """A project opened for work: its configuration and its store."""

    def __init__(self, loaded: LoadedProject, store: Store | None = None) -> None:
        self.loaded = loaded
        self.project = loaded.project
        self.store: Store = store or open_store(loaded.store_location())
        self.store.migrate()
        self._listeners: list[Listener] = []
        # A store shared by several workers marks what real time must evaluate (parsing the
        # segments at open only there); segments that do not parse leave every message marking
        # its profile, which is still correct.
        if self.store.tracks_pending:
            with suppress(ConfigError):
                self.store.watch(build_index(self.segments).interest)

    @classmethod
    def open(cls, project_dir: str | Path | None = None) -> Engine:
        """Load the project file in `project_dir` and open its store."""
        return cls(load_project(project_dir))

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the store."""
        self.store.close()

    def ping(self) -> None:
        """Return once the store answered a trivial query; raise what it raised otherwise."""
        with self.store.sql.reading() as tx:
            tx.run("SELECT 1")

    def delivery_backlog(self) -> DeliveryBacklog:
        """Per destination, records waiting in the outbox and dead letters (cheap counts)."""
        return delivery_backlog(self.store.sql)

    def store_shown(self) -> str:
        """Where the store is, any password hidden: fit for a terminal or a log line."""
        return redact(self.loaded.store_location())

    def warm_up(self) -> None:
        """Load what the first ingest would otherwise load (the identity graph, Arrow paths)."""
        self.commit([])

    def commit(
        self, messages: Sequence[Message], rejections: Sequence[Rejection] = ()
    ) -> IngestResult:
        """Durably store validated messages and quarantine rejected ones, in one transaction.

        Once they are stored, every listener (the real-time loop) is handed the messages.
        """
        result = store_messages(
            self.store,
            self.project.identity,
            messages,
            rejections,
            with_profiles=bool(self._listeners),
        )
        for listener in self._listeners:
            listener(messages, result)
        return result

    def on_stored(self, listener: Listener) -> None:
        """Call `listener` with the messages of every commit, after they are durable, and the
        result (`IngestResult.profiles` and `.merged`: the profiles they touched)."""
        self._listeners.append(listener)

    def ingest_messages(
        self, raws: Iterable[Any], *, source: str = "api", origin: str = "api"
    ) -> IngestResult:
        """Validate and store raw Segment messages (dicts), e.g. from a generator."""
        received = now_micros()
        with PipelinedWriter(self.commit, FILE_BATCH) as writer:
            for index, raw in enumerate(raws):
                writer.add(
                    validate_message(
                        raw, source=source, received_at_us=received, origin=f"{origin}#{index}"
                    )
                )
        return writer.total

    def ingest_file(self, path: Path, progress: Callable[[int], None] | None = None) -> FileReport:
        """Ingest one JSONL, CSV or Parquet file; bad rows are quarantined with `file:line`."""
        from cohortsync.events.file_ingest import ingest_jsonl, ingest_rows
        from cohortsync.events.readers import detect_format

        received = now_micros()
        identity = self.project.identity
        if path.is_file() and detect_format(path) == "jsonl":  # validated in bulk
            result = ingest_jsonl(
                self.store, identity, path, received_at_us=received, progress=progress
            )
        else:
            rows = self._checked_rows(path, received, progress)
            result = ingest_rows(self.store, identity, rows)
        return FileReport(path, result)

    @staticmethod
    def _checked_rows(
        path: Path, received: int, progress: Callable[[int], None] | None
    ) -> Iterable[tuple[int, Message | Rejection]]:
        """Each CSV or Parquet row validated, with its line: a message or a rejection."""
        source = f"file:{path.name}"
        for line, row in read_rows(path, progress):
            origin = f"{path}:{line}"
            if isinstance(row, BadRow):
                yield line, Rejection(row.reason, row.detail, origin, row.text, source=source)
                continue
            checked = validate_message(
                row,
                source=source,
                received_at_us=received,
                origin=origin,
                new_id=content_message_id,
                keep_received_at=True,
            )
            yield line, checked

    def find_profile(self, identifier: str) -> ProfileView:
        """Look a profile up by `kind:value` (email:a@b.com, phone:+1…, user_id:u1) or by its id."""
        kind, value = parse_identifier(identifier, self.project.identity.default_region)
        profile_id = self.store.find_profile(kind, value)
        view = self.store.profile(profile_id) if profile_id else None
        if view is None:
            raise NotFoundError(f"no profile has {kind} {_mask(kind, value)}")
        return view

    def _profile_id(self, identifier: str) -> str:
        """The id of the profile `identifier` names, as `find_profile` finds it, without reading
        its events and traits (merges repoint identifiers, so the id found is a live one)."""
        kind, value = parse_identifier(identifier, self.project.identity.default_region)
        profile_id = self.store.find_profile(kind, value)
        if profile_id is None:
            raise NotFoundError(f"no profile has {kind} {_mask(kind, value)}")
        return profile_id

    def stats(self) -> dict[str, dict[str, int]]:
        """Counts of events, profiles, identifiers and quarantined rows."""
        return self.store.stats()

    @cached_property
    def segments(self) -> SegmentProject:
        """The project's computed traits, segments and audiences, parsed and bound."""
        return parse_segments(self.loaded)

    def compute(self, at: datetime | None = None, *, record_future: bool = False) -> ComputeReport:
        """Compute every segment and audience as of `at` (default now); record the changes.

        The changes every destination needs are queued in the outbox in the same transaction.
        An instant before the recorded history is only evaluated, and so is one in the future
        unless `record_future` (the report says which, and why).
        """
        self.check_lock()
        now = now_micros()
        return audience_compute.compute_at(
            self.store,
            self.segments,
            now if at is None else _micros(at),
            now,
            record_future=record_future,
            routes=self.sync_setup.routes,
        )

    @cached_property
    def sync_setup(self) -> SyncSetup:
        """The project's destinations, validated, and which audiences and conversions go where."""
        return sync_setup(self.loaded, self.segments)

    def retry_policy(self) -> RetryPolicy:
        """Backoff and give-up window from the project's `sync:` settings."""
        settings = self.project.sync
        return RetryPolicy(
            base=settings.backoff_base,
            cap=settings.backoff_cap,
            window=settings.retry_seconds(),
            auth_pause=settings.auth_pause,
        )

    def sync(
        self,
        audience: str | None = None,
        destination: str | None = None,
        dry_run: bool = False,
        *,
        clock: Clock | None = None,
        policy: RetryPolicy | None = None,
        http: httpx.Client | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> SyncReport:
        """Plan and deliver audience changes and conversions (or write a dry run)."""
        self.check_lock()
        setup = self.sync_setup
        self._check_route(audience, destination)
        return run_sync(
            ledger_for(self.store),
            setup,
            self.loaded.root,
            policy or self.retry_policy(),
            clock or _utc_now,
            self.loaded.root / self.project.sync.dry_run_dir,
            audience=audience,
            destination=destination,
            dry_run=dry_run,
            http=http,
            progress=progress,
        )

    def reconcile(
        self,
        audience: str | None = None,
        destination: str | None = None,
        dry_run: bool = False,
        *,
        clock: Clock | None = None,
        http: httpx.Client | None = None,
    ) -> ReconcileReport:
        """Compare ad platforms' lists with what cohortsync holds there; past
        `sync.reconcile_threshold`, rebuild them (`--dry-run`: only say so)."""
        self.check_lock()
        self._check_route(audience, destination)
        return reconcile_routes(
            ledger_for(self.store),
            self.sync_setup,
            self.loaded.root,
            clock or _utc_now,
            self.project.sync.reconcile_threshold,
            audience=audience,
            destination=destination,
            dry_run=dry_run,
            http=http,
        )

    def _check_route(self, audience: str | None, destination: str | None) -> None:
        """Refuse an audience or destination the project does not name."""
        if audience is not None and audience not in self.segments.audiences:
            known = ", ".join(sorted(self.segments.audiences)) or "none"
            raise InputError(f"no audience named {audience!r}: known audiences: {known}")
        if destination is not None and destination not in self.sync_setup.classes:
            known = ", ".join(sorted(self.sync_setup.classes)) or "none"
            raise InputError(f"no destination named {destination!r}: known destinations: {known}")

    def serve_workers(self, clock: Clock | None = None) -> ServeWorkers:
        """Real-time evaluation, scheduled refreshes and delivery for `cohortsync serve`.

        Stored messages reach the real-time loop as soon as they commit.
        """
        self.check_lock()
        clock = clock or _utc_now
        setup = self.sync_setup
        index = build_index(self.segments)
        processor = ProfileProcessor(self.store, self.segments, index, setup.routes)
        loop = RealtimeLoop(self.store, processor, clock, identity=self.project.identity)
        self.on_stored(loop.submit)
        cadence = CadenceScheduler(self.store, self.segments, index, setup.routes)
        delivery = DeliveryLoop(
            self.store,
            setup,
            self.loaded.root,
            self.retry_policy(),
            clock,
            self.loaded.root / self.project.sync.dry_run_dir,
        )
        return ServeWorkers(loop, cadence, delivery, clock)

    def join_bus(self, bus_url: str, stream: str, name: str | None = None) -> BusMember:
        """A worker of `serve --role worker`, ready to `start`: it consumes the bus's streams
        named `stream` as `name` (by default one name per DuckDB store, one per process with
        Postgres), stores what it fetches, and evaluates and delivers as `serve` does."""
        workers = self.serve_workers()
        self.warm_up()
        bus = open_bus(bus_url, prefix=stream)
        consumer = BusWorker(
            self.commit, bus, name=name or member_name(self.loaded.store_location())
        )
        return BusMember(consumer, workers)

    def schedules(self) -> list[Schedule]:
        """Each audience's refresh: `realtime`, or its cadence with last and next run."""
        index = build_index(self.segments)
        return CadenceScheduler(self.store, self.segments, index, ()).schedules()

    def sync_status(
        self, audience: str | None = None, destination: str | None = None
    ) -> list[RouteStatus]:
        """Per audience × destination (and conversion stream): desired, delivered, waiting;
        only the routes of `audience` and of `destination` when they are named."""
        setup = self.sync_setup
        routes = [
            r
            for r in setup.routes
            if audience in (None, r.audience) and destination in (None, r.destination)
        ]
        conversion_destinations = sorted(
            {r.destination for r in setup.conversion_routes if destination in (None, r.destination)}
            if audience is None
            else set()
        )
        ledger = ledger_for(self.store)
        found = ledger.status(routes, conversion_destinations, setup.accepts())
        return [replace(s, dry_run=setup.configs[s.destination].dry_run) for s in found]

    def sync_runs(self, limit: int = 10) -> list[SyncRunRecord]:
        """The latest sync runs, newest first."""
        return ledger_for(self.store).runs(limit)

    def retry_dead(self, audience: str | None = None, destination: str | None = None) -> int:
        """Queue dead letters again on the next sync; return how many."""
        self.check_lock()
        return ledger_for(self.store).retry_dead(destination, audience, _utc_now())

    def members(self, name: str, at: datetime | None = None) -> list[Member]:
        """Members of a segment or audience now, or as of `at` replayed from history."""
        at_us = None if at is None else _micros(at)
        return audience_members.members(self.store, self.segments, name, at_us)

    def preview(self, name: str, at: datetime | None = None) -> Preview:
        """Size, sample, overlaps and explanation of a segment or audience, computed live."""
        return audience_members.preview(self.store, self.segments, name, _micros(at))

    def overlaps(self) -> dict[tuple[str, str], int]:
        """Members each pair of audiences shares now (from the last compute)."""
        return audience_members.overlaps(self.store, self.segments)

    def explain(self, name: str) -> str:
        """The plain-English rules of a segment or audience."""
        return audience_members.explain(self.segments, name)

    def load_demo(
        self,
        profiles: int,
        seed: int,
        now: datetime | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> IngestResult:
        """Generate the synthetic shop and ingest it as the `demo` source."""
        from cohortsync.demo.shop import generate_shop

        def counted() -> Iterable[dict[str, Any]]:
            for index, message in enumerate(generate_shop(profiles, seed, now), start=1):
                if progress is not None and index % 10_000 == 0:
                    progress(10_000)
                yield message

        return self.ingest_messages(counted(), source="demo", origin="demo")

    def explain_profile(
        self, identifier: str, audience: str | None = None, at: datetime | None = None
    ) -> ProfileWhy:
        """Why the profile is in or out of each audience (or the one named), as of `at`."""
        setup, profile_id = self.sync_setup, self._profile_id(identifier)
        now = now_micros()
        return explain_profile(
            self.store, self.segments, setup.routes, setup.accepts(), profile_id,
            now if at is None else _micros(at), now, audience,
        )  # fmt: skip

    def profile_memberships(self, profile_id: str) -> list[Membership]:
        """The profile's current recorded memberships (segments and audiences)."""
        return memberships(self.store, profile_ids(self.store, profile_id))

    def drift(
        self, http: httpx.Client | None = None, status: list[RouteStatus] | None = None
    ) -> list[Drift]:
        """What ad platforms that read audiences back show, against what cohortsync set;
        `status` is `sync_status()` when the caller already read it."""
        routes = self.sync_status() if status is None else status
        return read_drift(self.sync_setup, self.loaded.root, delivered(routes), http)

    def lint(self, http: httpx.Client | None = None, *, read_back: bool = True) -> LintReport:
        """Every lint rule over the project, the current memberships and the drift read back;
        `read_back=False` asks no platform (no network call: the dashboard's pages)."""
        drifts = self.drift(http) if read_back else []
        return lint_project(self.loaded, self.segments, self.sync_setup, self.store, drifts)

    def check_lock(self) -> None:
        """Refuse (one line per audience) when the project breaks `cohortsync.lock`."""
        lock_ops.check_lock(self.loaded.root, self.segments)

    def lock(self, accept: Sequence[str] = ()) -> LockReport:
        """Write `cohortsync.lock`; `accept` names audiences whose raised version to record."""
        return lock_ops.lock(self.loaded.root, self.segments, downstream(self.store.sql), accept)

    def plan(self, at: datetime | None = None) -> Plan:
        """Per audience whose logic differs from the lock: who would enter and leave, and what
        each destination would be sent; computed live as of `at` (default now), not recorded."""
        return plan_ops.plan(
            self.loaded.root, self.store, self.segments, self.sync_setup.routes, _micros(at)
        )

    def catalog(self) -> Catalog:
        """Every audience for the teams that use it: rules in English, figures, history."""
        return catalog_ops.catalog(
            self.loaded.root, self.store, self.segments, self.sync_setup.routes
        )

    def write_catalog(self, folder: Path) -> list[Path]:
        """Write the catalog as `catalog.md` and `catalog.html` into `folder`; their paths."""
        return write_catalog(self.catalog(), folder)

    def validate(self, options: ValidateOptions) -> ValidationReport:
        """Send a test cohort through ingest, compute and sync, and check it downstream."""
        return validate(self, options)

    def cleanup_test_profiles(self) -> Cleanup:
        """Remove the test profiles `validate` made, from every destination too."""
        return cleanup(self.store, self.segments, self.sync_setup.routes, self.sync)

    @cached_property
    def figures(self) -> Figures:
        """The dashboard's figures (events per minute, sizes, history, dead letters), read
        from the store by set-based statements on either store."""
        return Figures(self.store)

    def report(self, since: datetime, until: datetime, audience: str | None = None) -> Report:
        """Holdout lift of each audience with a holdout for entries in [since, until]."""
        return report_ops.report(self.store, self.project, self.segments, since, until, audience)

    @staticmethod
    def report_html(found: Report, *, fragment: bool = False) -> str:
        """The report as one self-contained HTML page, or its body fragment to embed in a page
        that puts `REPORT_CSS` in its <style>."""
        return report_fragment(found) if fragment else report_page(found)

    def ingest_spend(self, path: Path) -> SpendIngest:
        """Store the ad spend of a CSV file (all its rows or, if one is bad, none)."""
        rows = read_spend(path)
        held = [a.name for a in self.segments.audiences.values() if a.holdout_percent]
        return store_spend(self.store.sql, path, rows, held, _utc_now())


def bus_gateway(project_dir: str | Path | None, bus_url: str, stream: str) -> BusGateway:
    """What `serve --role ingest` commits to: the bus's streams named `stream`; no store opens."""
    bus = open_bus(bus_url, prefix=stream)
    return BusGateway(load_project(project_dir).project, bus, now_micros)


@dataclass(frozen=True)
class CheckedBatch:
    """A batch of raw messages validated: the messages to store, the rejections to quarantine,
    and each rejection's index in the batch."""

    messages: list[Message]
    rejections: list[Rejection]
    rejected_at: list[int]


def validate_batch(
    batch: Sequence[Any], defaults: Mapping[str, Any], *, source: str, origin: str
) -> CheckedBatch:
    """Validate a batch received now; `defaults` (the batch's body) lends every message its
    `sentAt` and shared fields. A bad `sentAt` is an InputError naming it."""
    try:
        sent_at = parse_timestamp(defaults["sentAt"]) if defaults.get("sentAt") else None
    except TimestampError as exc:
        raise InputError(f"sentAt {exc}") from None
    received = now_micros()
    checked = CheckedBatch([], [], [])
    for index, raw in enumerate(batch):
        one = validate_message(
            raw,
            source=source,
            received_at_us=received,
            origin=f"{origin}#{index}",
            sent_at_us=sent_at,
            defaults=defaults,
        )
        if isinstance(one, Message):
            checked.messages.append(one)
        else:
            checked.rejections.append(one)
            checked.rejected_at.append(index)
    return checked


def validate_one(raw: Any, *, source: str, origin: str, message_type: str) -> Message | Rejection:
    """Validate one message of `message_type` received now (a single-type endpoint's body)."""
    return validate_message(
        raw, source=source, received_at_us=now_micros(), origin=origin, message_type=message_type
    )


def parse_instant(text: str) -> datetime:
    """An ISO-8601 instant (no zone means UTC) as an aware datetime; InputError saying why not."""
    try:
        micros = parse_timestamp(text)
    except TimestampError as exc:
        raise InputError(f"{text!r} {exc}") from None
    return to_datetime(micros)


def platform_identifier(
    kind: str, value: str, platform: str, region: str
) -> tuple[str, str | None]:
    """An identifier as an ad platform receives it: its normal form and SHA-256 (for debugging
    matches). A value that is blank or not valid for the platform is an InputError."""
    from cohortsync.destinations.hashing import hash_identifier, is_hashed
    from cohortsync.destinations.hashing import normalize as normal_form

    try:
        normal = (
            value.strip().lower()
            if is_hashed(value)
            else normal_form(kind, value, platform, region)
        )
        hashed = hash_identifier(kind, value, platform, region)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if normal is None:
        raise InputError(
            f"{kind} value is blank or not valid for {platform}: nothing would be sent"
        )
    return normal, hashed


def parse_identifier(text: str, default_region: str = "US") -> tuple[str, str]:
    """Split `kind:value` and normalise the value; a bare value is a profile id."""
    kind, sep, value = text.partition(":")
    if not sep:
        return "profile_id", text.strip()
    if kind not in IDENTIFIER_PREFIXES:
        kinds = ", ".join(f"{k}:" for k in IDENTIFIER_PREFIXES)
        raise InputError(f"unknown identifier kind {kind!r}: start it with one of {kinds}")
    if kind == "profile_id":
        return kind, value.strip()
    try:
        return kind, normalize_identifier(kind, value, default_region)
    except IdentifierError as exc:
        raise InputError(str(exc)) from None


def _micros(at: datetime | None) -> int:
    """Microseconds of `at` (naive means UTC), or of now."""
    return now_micros() if at is None else to_micros(at)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _mask(kind: str, value: str) -> str:
    """Show an identifier without exposing it whole (error messages never carry raw PII)."""
    if kind in ("email", "phone") and len(value) > 4:
        return value[:2] + "…" + value[-2:]
    return value


__all__ = [
    "REPORT_CSS",
    "SRM_ALERT",
    "Arm",
    "Audience",
    "AudienceReport",
    "AudienceSize",
    "Catalog",
    "CheckedBatch",
    "Cleanup",
    "ComputeReport",
    "Cost",
    "Day",
    "DeadGroup",
    "DeliveryBacklog",
    "DeliveryReport",
    "Drift",
    "Engine",
    "Figures",
    "FileReport",
    "IngestResult",
    "Latency",
    "LintReport",
    "Member",
    "Membership",
    "PlanCounts",
    "Preview",
    "ProfileView",
    "ProfileWhy",
    "ReconcileReport",
    "Report",
    "Reported",
    "RoundReport",
    "RouteReconcile",
    "RouteStatus",
    "Schedule",
    "ServeWorkers",
    "SpendIngest",
    "SyncReport",
    "SyncRunRecord",
    "Tally",
    "ValidateOptions",
    "ValidationReport",
    "ValidationRow",
    "audience_json",
    "bus_gateway",
    "catalog_html",
    "catalog_json",
    "catalog_markdown",
    "explanation_json",
    "file_size",
    "memberships_json",
    "parse_identifier",
    "parse_instant",
    "platform_identifier",
    "report_json",
    "validate_batch",
    "validate_one",
    "verdict",
]
