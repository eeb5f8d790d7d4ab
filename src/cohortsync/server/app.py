"""The FastAPI application: ingest today; admin API and dashboard hang off the same app."""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Protocol

from fastapi import FastAPI
from fastapi.responses import Response

from cohortsync import __version__
from cohortsync.config.models import Project
from cohortsync.engine import Engine
from cohortsync.events.pipeline import IngestResult
from cohortsync.server.client_ip import TrustedProxies
from cohortsync.server.cors import CorsMiddleware, OriginPolicy
from cohortsync.server.group_commit import GroupCommitter
from cohortsync.server.ingest import INGEST_PATHS, json_response
from cohortsync.server.ingest import router as ingest_router
from cohortsync.store.records import Message, Rejection


class IngestTarget(Protocol):
    """What the ingest API needs: the project (write keys) and a durable commit."""

    project: Project

    def commit(
        self, messages: Sequence[Message], rejections: Sequence[Rejection] = ()
    ) -> IngestResult: ...

    def warm_up(self) -> None: ...


def create_app(
    engine: IngestTarget,
    *,
    background: bool = True,
    clock: Callable[[], datetime] | None = None,
    trusted_proxies: TrustedProxies = (),
) -> FastAPI:
    """Build the app around an open engine (the app never opens or closes the store itself).

    With `background` (the default) and an engine, real-time evaluation, scheduled refreshes
    and delivery run beside ingest; `clock` replaces the wall clock (tests move time). In the
    ingest role the target is a bus gateway: no store, no background work. `trusted_proxies`
    are the reverse proxies whose X-Forwarded-For names the client (`serve --trusted-proxies`).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        committer = GroupCommitter(engine.commit)
        app.state.committer = committer
        engine.warm_up()  # the first request should not pay for loading the identity graph
        workers = engine.serve_workers(clock) if background and isinstance(engine, Engine) else None
        app.state.workers = workers
        gc.freeze()  # the long-lived identity graph is never scanned by the collector again
        await committer.start()
        if workers is not None:
            workers.start()
        try:
            yield
        finally:
            await committer.stop()
            if workers is not None:
                workers.stop()

    app = FastAPI(title="cohortsync", version=__version__, lifespan=lifespan)
    app.state.engine = engine
    app.state.metrics = Counter()
    app.state.trusted_proxies = trusted_proxies
    app.state.origin_policy = policy = OriginPolicy.of(engine.project)
    app.include_router(ingest_router)
    app.add_middleware(CorsMiddleware, policy=policy, paths=INGEST_PATHS)

    @app.get("/health", tags=["ops"])
    async def health() -> Response:
        """Liveness: the process answers."""
        return json_response({"status": "ok"})

    return app
