"""Write routes of the admin API: compute now, sync now, retry dead letters, validate.

Each runs between the background workers' own rounds (`ServeWorkers.computing`, `.delivering`),
so a compute never races a scheduled refresh or a real-time round, and no batch is claimed by
two deliverers.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response

from cohortsync.engine import ComputeReport, ValidateOptions
from cohortsync.server.admin_http import (
    PROBLEMS,
    answering,
    computing,
    delivering,
    engine_of,
    json_of,
    refuse_unknown,
)
from cohortsync.server.admin_models import (
    Requeued,
    Scope,
    SyncOut,
    SyncRequest,
    ValidateOut,
    ValidateRequest,
    sync_out,
)

router = APIRouter()


@router.post(
    "/compute",
    summary="Compute every segment and audience now and record who entered and left",
    response_model=ComputeReport,
    responses={409: PROBLEMS[409]},
)
def compute(request: Request) -> Response:
    """As `cohortsync compute`: the changes every destination needs are queued, and delivery
    is woken."""
    with answering(), computing(request):
        report = engine_of(request).compute()
    return json_of(ComputeReport, report)


@router.post(
    "/sync",
    summary="Deliver audience changes and conversions now",
    response_model=SyncOut,
    responses={404: PROBLEMS[404], 409: PROBLEMS[409]},
)
def sync(request: Request, body: SyncRequest | None = None) -> Response:
    """As `cohortsync sync`: every route, or one audience and/or destination."""
    asked = body or SyncRequest()
    engine = engine_of(request)
    refuse_unknown(engine, asked.audience, asked.destination)
    with answering(), delivering(request):
        report = engine.sync(asked.audience, asked.destination, asked.dry_run)
    return json_of(SyncOut, sync_out(report))


@router.post(
    "/dead-letters/retry",
    summary="Queue dead-lettered records again",
    response_model=Requeued,
    responses={404: PROBLEMS[404], 409: PROBLEMS[409]},
)
def retry_dead(request: Request, body: Scope | None = None) -> Response:
    """Every dead letter, or one audience's and/or destination's; delivery takes them next."""
    asked = body or Scope()
    engine = engine_of(request)
    refuse_unknown(engine, asked.audience, asked.destination)
    with answering(), delivering(request):
        queued = engine.retry_dead(asked.audience, asked.destination)
    return json_of(Requeued, Requeued(queued=queued))


@router.post(
    "/validate",
    summary="Send a test cohort through ingest, compute and sync, and check it downstream",
    response_model=ValidateOut,
    responses={409: PROBLEMS[409], 422: PROBLEMS[422]},
)
def validate(request: Request, body: ValidateRequest) -> Response:
    """As `cohortsync validate`: `passed` is false when a check failed."""
    options = ValidateOptions(
        Path(body.cohort) if body.cohort else None,
        body.generate,
        body.domain,
        body.timeout,
        body.url,
    )
    with answering(), computing(request), delivering(request):
        report = engine_of(request).validate(options)
    found = ValidateOut(
        passed=report.passed,
        profiles=report.profiles,
        seconds=report.seconds,
        error=report.error,
        rows=report.rows,
    )
    return json_of(ValidateOut, found)
