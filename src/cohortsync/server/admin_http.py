"""What every admin API route shares: the engine and workers of the app, errors as 4xx JSON,
instants read from the query string."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime
from typing import Any

import orjson
from fastapi import HTTPException, Request
from fastapi.responses import Response
from pydantic import TypeAdapter

from cohortsync.engine import Engine, ServeWorkers, parse_instant
from cohortsync.errors import ConfigError, InputError, NotFoundError
from cohortsync.server.admin_models import ProblemOut

PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: {"description": "No admin token, or not an admin token.", "model": ProblemOut},
    404: {"description": "No such audience, segment, destination or profile.", "model": ProblemOut},
    409: {
        "description": "The project breaks cohortsync.lock: accept or revert the change.",
        "model": ProblemOut,
    },
    422: {"description": "A parameter is not valid: the message says how to fix it."},
}
"""The error answers routes document (their body: `{"detail": {code, message}}`)."""


def json_of(kind: Any, value: Any) -> Response:
    """`value` (of type `kind`) as a JSON response, serialised as the schema documents it."""
    data = TypeAdapter(kind).dump_python(value, mode="json")
    return Response(orjson.dumps(data), media_type="application/json")


def problem(status: int, code: str, message: str) -> HTTPException:
    """A 4xx answer whose JSON body says what is wrong and how to fix it."""
    return HTTPException(status_code=status, detail={"code": code, "message": message})


def engine_of(request: Request) -> Engine:
    """The engine `serve` opened."""
    engine: Engine = request.app.state.engine
    return engine


def _workers(request: Request) -> ServeWorkers | None:
    workers: ServeWorkers | None = getattr(request.app.state, "workers", None)
    return workers


def computing(request: Request) -> AbstractContextManager[None]:
    """Run a compute between the background workers' own (scheduled refreshes, real time)."""
    workers = _workers(request)
    return nullcontext() if workers is None else workers.computing()


def delivering(request: Request) -> AbstractContextManager[None]:
    """Run a delivery between the background delivery thread's rounds."""
    workers = _workers(request)
    return nullcontext() if workers is None else workers.delivering()


@contextmanager
def answering(unknown_name: bool = False) -> Iterator[None]:
    """Turn the engine's user errors into 4xx answers; `unknown_name`: the request named an
    audience or destination the project does not have, so its InputError is a 404."""
    try:
        yield
    except NotFoundError as exc:
        raise problem(404, "not_found", str(exc)) from None
    except InputError as exc:
        if unknown_name:
            raise problem(404, "unknown_name", str(exc)) from None
        raise problem(422, "bad_input", str(exc)) from None
    except ConfigError as exc:
        raise problem(409, "project", str(exc)) from None


def instant(name: str, text: str | None) -> datetime | None:
    """A query parameter holding an ISO-8601 instant; 422 naming it when it is not one."""
    if text is None or not text.strip():
        return None
    try:
        return parse_instant(text)
    except InputError as exc:
        raise problem(
            422, "bad_input", f"{name} {exc}: write e.g. {name}=2026-05-01T12:00:00Z"
        ) from None


def unknown_audience(engine: Engine, audience: str | None) -> bool:
    """Whether the request names an audience the project does not define."""
    return audience is not None and audience not in engine.segments.audiences


def refuse_unknown(engine: Engine, audience: str | None, destination: str | None) -> None:
    """404, in the words `cohortsync sync` uses, when the request names an audience or a
    destination the project does not define."""
    with answering():
        if unknown_audience(engine, audience):
            known = ", ".join(sorted(engine.segments.audiences)) or "none"
            message = f"no audience named {audience!r}: known audiences: {known}"
            raise problem(404, "unknown_name", message)
        classes = engine.sync_setup.classes
        if destination is not None and destination not in classes:
            known = ", ".join(sorted(classes)) or "none"
            message = f"no destination named {destination!r}: known destinations: {known}"
            raise problem(404, "unknown_name", message)
