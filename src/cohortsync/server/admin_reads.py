"""Read routes of the admin API: what `stats`, `status`, `members`, `preview`, `profile`,
`explain`, `report` and `catalog` show, computed by the engine `serve` holds.

Handlers are plain functions: FastAPI runs them in its thread pool, so store work never
blocks the event loop that answers ingest.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from cohortsync.engine import Catalog, Member, Preview, ProfileWhy, Report
from cohortsync.errors import InputError
from cohortsync.server.admin_http import (
    PROBLEMS,
    answering,
    engine_of,
    instant,
    json_of,
    problem,
    unknown_audience,
)
from cohortsync.server.admin_models import (
    AudienceSummary,
    ProfileOut,
    StatusOut,
    profile_out,
)

router = APIRouter()
REPORT_PERIOD = timedelta(days=30)
"""`since` defaults to this long before `until` (as `cohortsync report --since` does)."""

At = Annotated[
    str | None,
    Query(description="An ISO-8601 instant, e.g. 2026-05-01T12:00:00Z (default now)."),
]
Identifier = Annotated[
    str,
    Query(
        min_length=1,
        description="email:a@b.com, phone:+1…, user_id:u1, anonymous_id:x or a profile id "
        "(URL-encode it: curl -G --data-urlencode identifier=…).",
    ),
]


@router.get("/stats", summary="Counts of events, profiles, identifiers and quarantined rows")
def stats(request: Request) -> dict[str, Any]:
    """Events by type, profiles, identifiers by kind, quarantined rows by reason."""
    return engine_of(request).stats()


@router.get(
    "/status",
    summary="Routes, latest sync runs, refresh schedules and drift",
    response_model=StatusOut,
)
def status(
    request: Request,
    runs: Annotated[int, Query(ge=1, le=1000, description="How many latest sync runs.")] = 5,
) -> Response:
    """Per audience × destination: desired, acknowledged, pending, failed, dead letters,
    matches; the latest sync runs; each audience's refresh; what ad platforms read back."""
    engine = engine_of(request)
    with answering():
        routes = engine.sync_status()
        found = StatusOut(
            routes=routes,
            runs=engine.sync_runs(runs),
            schedules=engine.schedules(),
            drift=engine.drift(status=routes),
        )
    return json_of(StatusOut, found)


@router.get(
    "/audiences", summary="Every audience with its size", response_model=list[AudienceSummary]
)
def audiences(request: Request) -> Response:
    """Each audience's segment, owner, refresh, destinations and current size."""
    with answering():
        entries = engine_of(request).catalog().audiences
    listed = [
        AudienceSummary(
            name=e.name,
            segment=e.segment,
            owner=e.owner,
            refresh=e.refresh,
            destinations=e.destinations,
            size=e.size,
            holdout_size=e.holdout_size,
            last_computed=e.last_computed,
        )
        for e in entries
    ]
    return json_of(list[AudienceSummary], listed)


def _known(request: Request, name: str) -> None:
    """404 when `name` is neither an audience nor a segment of the project."""
    try:
        engine_of(request).explain(name)  # its error names the known ones
    except InputError as exc:
        raise problem(404, "unknown_name", str(exc)) from None


@router.get(
    "/audiences/{name}/members",
    summary="Members of an audience or segment, now or as of `at`",
    response_model=list[Member],
    responses={404: PROBLEMS[404], 422: PROBLEMS[422]},
)
def members(request: Request, name: str, at: At = None) -> Response:
    """Now from the recorded memberships, or as of `at` replayed from the history."""
    moment = instant("at", at)
    _known(request, name)
    with answering():
        found = engine_of(request).members(name, moment)
    return json_of(list[Member], found)


@router.get(
    "/audiences/{name}/preview",
    summary="Size, sample, overlaps and rules of an audience or segment, computed live",
    response_model=Preview,
    responses={404: PROBLEMS[404], 422: PROBLEMS[422]},
)
def preview(request: Request, name: str, at: At = None) -> Response:
    """Computed as of `at` (default now); nothing is recorded."""
    moment = instant("at", at)
    _known(request, name)
    with answering():
        shown = engine_of(request).preview(name, moment)
    return json_of(Preview, shown)


@router.get(
    "/profile",
    summary="One profile: identifiers, traits, merges, recent events, memberships",
    response_model=ProfileOut,
    responses={404: PROBLEMS[404], 422: PROBLEMS[422]},
)
def profile(request: Request, identifier: Identifier) -> Response:
    """Looked up as `cohortsync profile` looks it up."""
    engine = engine_of(request)
    with answering():
        view = engine.find_profile(identifier)
        held = engine.profile_memberships(view.profile_id)
    return json_of(ProfileOut, profile_out(view, held))


@router.get(
    "/explain",
    summary="Why a profile is in or out of each audience",
    response_model=ProfileWhy,
    responses={404: PROBLEMS[404], 422: PROBLEMS[422]},
)
def explain(
    request: Request,
    identifier: Identifier,
    audience: Annotated[str | None, Query(description="Only this audience.")] = None,
    at: At = None,
) -> Response:
    """Every condition's truth and the events that decided it, exclusions, holdout, next
    change and what each destination holds, as `cohortsync explain` shows."""
    engine = engine_of(request)
    moment = instant("at", at)
    with answering(unknown_audience(engine, audience)):
        why = engine.explain_profile(identifier, audience, moment)
    return json_of(ProfileWhy, why)


@router.get(
    "/report",
    summary="Holdout lift of each audience with a holdout",
    response_model=Report,
    responses={404: PROBLEMS[404], 422: PROBLEMS[422]},
)
def report(
    request: Request,
    audience: Annotated[str | None, Query(description="Only this audience.")] = None,
    since: Annotated[
        str | None, Query(description="First entry instant counted (default: 30 days before).")
    ] = None,
    until: Annotated[
        str | None, Query(description="Last entry instant counted (default: now).")
    ] = None,
) -> Response:
    """Profiles that entered in [since, until], per arm, converted within `report.window`."""
    engine = engine_of(request)
    end = instant("until", until) or datetime.now(UTC)
    start = instant("since", since) or end - REPORT_PERIOD
    if start > end:
        raise problem(422, "bad_input", "since is after until: give a period that moves forward")
    with answering(unknown_audience(engine, audience)):
        found = engine.report(start, end, audience)
    return json_of(Report, found)


@router.get("/catalog", summary="The audience catalog", response_model=Catalog)
def catalog(request: Request) -> Response:
    """Every audience for the teams that use it: rules in English, figures, history."""
    with answering():
        found = engine_of(request).catalog()
    return json_of(Catalog, found)
