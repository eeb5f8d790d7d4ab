"""The FastAPI application: ingest today; admin API and dashboard hang off the same app."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from cohortsync import __version__
from cohortsync.config.models import Project
from cohortsync.engine import Engine, IngestResult
from cohortsync.events.models import Message, Rejection
from cohortsync.identity.log_scrub import scrubbed_logger
from cohortsync.server.admin_api import router as admin_router
from cohortsync.server.client_ip import TrustedProxies
from cohortsync.server.cors import CorsMiddleware, OriginPolicy
from cohortsync.server.group_commit import GroupCommitter
from cohortsync.server.ingest import INGEST_PATHS, error, json_response
from cohortsync.server.ingest import router as ingest_router
from cohortsync.server.limits import BodyDeadline, BodyTimeoutError, ServeLimits
from cohortsync.server.metrics import ServeMetrics, metered
from cohortsync.server.monitoring import router as monitoring_router
from cohortsync.server.readiness import Readiness
from cohortsync.server.ui import install_dashboard

log = scrubbed_logger("cohortsync.server")


class IngestTarget(Protocol):
    """What the ingest API needs: the project (write keys) and a durable commit."""

    project: Project

    def commit(
        self, messages: Sequence[Message], rejections: Sequence[Rejection] = ()
    ) -> IngestResult: ...

    def warm_up(self) -> None: ...

    def ping(self) -> None: ...


def create_app(
    engine: IngestTarget,
    *,
    background: bool = True,
    clock: Callable[[], datetime] | None = None,
    trusted_proxies: TrustedProxies = (),
    body_timeout: float = ServeLimits.body_timeout,
    serve_token: str | None = None,
) -> FastAPI:
    """Build the app around an open engine (the app never opens or closes the store itself).

    With `background` (the default) and an engine, real-time evaluation, scheduled refreshes
    and delivery run beside ingest; `clock` replaces the wall clock (tests move time). In the
    ingest role the target is a bus gateway: no store, no background work. `trusted_proxies`
    are the reverse proxies whose X-Forwarded-For names the client (`serve --trusted-proxies`). A
    request body must arrive within `body_timeout` seconds (408 otherwise). The admin API
    (`/api/v1`, over an engine only) also accepts `serve_token`, the token of `serve.json`.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        committer = GroupCommitter(metered(engine.commit, metrics))
        app.state.committer = committer
        engine.warm_up()  # the first request should not pay for loading the identity graph
        workers = engine.serve_workers(clock) if background and isinstance(engine, Engine) else None
        app.state.workers = readiness.workers = workers
        if workers is not None:
            metrics.watch(workers)
        gc.freeze()  # the long-lived identity graph is never scanned by the collector again
        await committer.start()
        if workers is not None:
            workers.start()
        readiness.started = True
        try:
            yield
        finally:
            readiness.started = False
            await committer.stop()
            if workers is not None:
                workers.stop()

    app = FastAPI(title="cohortsync", version=__version__, lifespan=lifespan)
    app.state.engine = engine
    app.state.metrics = metrics = ServeMetrics(engine.project.sources)
    app.state.readiness = readiness = Readiness(engine)
    if isinstance(engine, Engine):
        metrics.count_outbox(engine.delivery_backlog, engine.project.destinations)
    app.state.trusted_proxies = trusted_proxies
    app.state.origin_policy = policy = OriginPolicy.of(engine.project)
    app.include_router(ingest_router)
    app.include_router(monitoring_router)
    if isinstance(engine, Engine):
        app.state.serve_token = serve_token
        app.include_router(admin_router)
        install_dashboard(app)
    app.add_middleware(BodyDeadline, seconds=body_timeout)
    app.add_exception_handler(BodyTimeoutError, _body_timeout)
    app.add_exception_handler(ClientDisconnect, _client_disconnected)
    app.add_middleware(CorsMiddleware, policy=policy, paths=INGEST_PATHS)

    @app.get("/health", tags=["ops"])
    async def health() -> Response:
        """Liveness: the process answers."""
        return json_response({"status": "ok"})

    return app


async def _body_timeout(request: Request, exc: Exception) -> Response:
    """A client too slow to send its body: one log line, 408, and the connection closed."""
    log.warning("%s: %s (serve --body-timeout)", _request_line(request), exc)
    response = error(408, "body_timeout", f"{exc}: send it faster or in smaller batches")
    response.headers["connection"] = "close"
    return response


async def _client_disconnected(request: Request, exc: Exception) -> Response:
    """A client gone before its body ended (an aborted upload): one log line, no traceback."""
    log.warning("%s: the client disconnected before sending the whole body", _request_line(request))
    return Response(status_code=400)  # nobody is there to read it


def _request_line(request: Request) -> str:
    client = request.client
    peer = f"{client.host}:{client.port}" if client else "unknown client"
    return f"{request.method} {request.url.path} from {peer}"
