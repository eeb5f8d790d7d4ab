"""The admin API's request and response shapes, and their conversion to and from the engine's
types: the server sends what the engine returned, the CLI's client rebuilds the same objects.

No FastAPI here: the CLI imports this, and every command would pay for loading it.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, Field, TypeAdapter

from cohortsync.engine import (
    DeliveryReport,
    Drift,
    Membership,
    PlanCounts,
    ProfileView,
    RouteStatus,
    Schedule,
    SyncReport,
    SyncRunRecord,
    Tally,
    ValidationRow,
)

T = TypeVar("T")
PREFIX = "/api/v1"
"""Where the admin API's routes live."""


def rebuilt(kind: type[T] | Any, data: Any) -> T:
    """The engine's object back from its JSON form."""
    found: T = TypeAdapter(kind).validate_python(data)
    return found


# -- requests ---------------------------------------------------------------------------------


class Scope(BaseModel):
    """Which routes a sync or a retry covers: every one, or one audience and/or destination."""

    audience: str | None = Field(
        default=None, description="Only this audience (conversions skipped)."
    )
    destination: str | None = Field(default=None, description="Only this destination.")


class SyncRequest(Scope):
    """`POST /api/v1/sync`: deliver now, as `cohortsync sync` does."""

    dry_run: bool = Field(
        default=False, description="Write the requests to the dry-run folder; send nothing."
    )


class ValidateRequest(BaseModel):
    """`POST /api/v1/validate`: the options `cohortsync validate` takes."""

    cohort: str | None = Field(
        None, description="A JSON Lines cohort file, as a path on the server's machine."
    )
    generate: int | None = Field(default=None, ge=1, description="Generate N test profiles.")
    domain: str | None = Field(default=None, description="Mail domain of generated profiles.")
    timeout: float = Field(default=60.0, gt=0, description="Seconds each step may take downstream.")
    url: str | None = Field(
        default=None, description="Send the events to this running serve instead."
    )


# -- responses --------------------------------------------------------------------------------


class Identifier(BaseModel):
    """One identifier of a profile."""

    kind: str
    value: str
    first_seen: datetime | None


class Merge(BaseModel):
    """A profile merged into this one."""

    merged_at: datetime | None
    from_profile: str
    into_profile: str
    via: str | None
    message_id: str | None


class RecentEvent(BaseModel):
    """One of the profile's latest events."""

    timestamp: datetime | None
    type: str
    event: str | None
    message_id: str


class ProfileOut(BaseModel):
    """A profile as `cohortsync profile --json` shows it: identifiers, traits, merges, recent
    events and current memberships."""

    profile_id: str
    first_seen: datetime | None
    last_seen: datetime | None
    identifiers: list[Identifier]
    traits: dict[str, Any]
    merges: list[Merge]
    recent_events: list[RecentEvent]
    memberships: list[Membership]


def profile_out(view: ProfileView, held: list[Membership]) -> ProfileOut:
    """The response of `GET /api/v1/profile`."""
    return ProfileOut(
        profile_id=view.profile_id,
        first_seen=view.first_seen,
        last_seen=view.last_seen,
        identifiers=[Identifier(**i) for i in view.identifiers],
        traits=view.traits,
        merges=[Merge(**m) for m in view.merges],
        recent_events=[RecentEvent(**e) for e in view.recent_events],
        memberships=held,
    )


def profile_view(out: ProfileOut) -> tuple[ProfileView, list[Membership]]:
    """The engine's profile and memberships back from the response."""
    view = ProfileView(
        profile_id=out.profile_id,
        first_seen=out.first_seen,
        last_seen=out.last_seen,
        identifiers=[i.model_dump() for i in out.identifiers],
        traits=out.traits,
        merges=[m.model_dump() for m in out.merges],
        recent_events=[e.model_dump() for e in out.recent_events],
    )
    return view, out.memberships


class StatusOut(BaseModel):
    """Routes, latest sync runs, refresh schedules and drift, as `cohortsync status` reads."""

    routes: list[RouteStatus]
    runs: list[SyncRunRecord]
    schedules: list[Schedule]
    drift: list[Drift]


class AudienceSummary(BaseModel):
    """One audience in the list: its rule's segment, cadence, owner, destinations and size."""

    name: str
    segment: str
    owner: str | None
    refresh: str
    destinations: list[str]
    size: int
    holdout_size: int
    last_computed: datetime | None


class RouteTally(BaseModel):
    """What a sync did for one destination and audience (None: its conversions)."""

    destination: str
    audience: str | None
    tally: Tally


class SyncOut(BaseModel):
    """What `POST /api/v1/sync` planned and delivered."""

    started_at: datetime
    duration_ms: float
    planned: PlanCounts
    dry_run_folder: str | None
    routes: list[RouteTally]


def sync_out(report: SyncReport) -> SyncOut:
    """The response of `POST /api/v1/sync`."""
    routes = [
        RouteTally(destination=d, audience=a, tally=t)
        for (d, a), t in report.delivery.tallies.items()
    ]
    folder = None if report.dry_run_folder is None else str(report.dry_run_folder)
    return SyncOut(
        started_at=report.started_at,
        duration_ms=report.duration_ms,
        planned=report.planned,
        dry_run_folder=folder,
        routes=routes,
    )


def sync_report(out: SyncOut) -> SyncReport:
    """The engine's sync report back from the response."""
    tallies: dict[tuple[str, str | None], Tally] = {}
    for route in out.routes:
        tallies[(route.destination, route.audience)] = route.tally
    folder = None if out.dry_run_folder is None else Path(out.dry_run_folder)
    return SyncReport(out.started_at, out.duration_ms, out.planned, DeliveryReport(tallies), folder)


class Requeued(BaseModel):
    """How many dead-lettered records were queued again."""

    queued: int


class ValidateOut(BaseModel):
    """A test cohort's checks, as `cohortsync validate --json` prints them."""

    passed: bool
    profiles: int
    seconds: dict[str, float]
    error: str | None
    rows: list[ValidationRow]


class Problem(BaseModel):
    """Why a request was refused, and how to fix it."""

    code: str
    message: str


class ProblemOut(BaseModel):
    """The body of every 4xx answer of the admin API."""

    detail: Problem
