"""`/metrics` (Prometheus text format, admin token required) and `/ready` (open)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cohortsync.server.admin_auth import AdminOnly
from cohortsync.server.ingest import json_response
from cohortsync.server.metrics import ServeMetrics
from cohortsync.server.readiness import Readiness

router = APIRouter(tags=["ops"])


@router.get("/metrics", dependencies=[AdminOnly])
def metrics(request: Request) -> Response:
    """Every metric of this process; run in a thread, since the outbox is counted in the store."""
    served: ServeMetrics = request.app.state.metrics
    return Response(generate_latest(served.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/ready")
async def ready(request: Request) -> Response:
    """Readiness: 200 when this process can do its work now, 503 saying what is not ready."""
    readiness: Readiness = request.app.state.readiness
    problems = await readiness.problems()
    if problems:
        return json_response({"status": "not_ready", "problems": problems}, 503)
    return json_response({"status": "ready"})
