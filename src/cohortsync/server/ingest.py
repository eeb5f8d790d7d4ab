"""Segment-compatible ingest: /v1/track, /v1/identify, …, /v1/batch.

The short paths analytics.js posts to (/v1/t, /v1/i, /v1/p, /v1/s, /v1/g, /v1/a; /v1/b for a
batch) are the same handlers.

Authentication is Segment's: HTTP Basic with the write key as user name and an empty password,
or a `writeKey` field in the body. A 200 is sent only after the events are durably stored.
Decisions where Segment answers 200 for bad events: a single call with an invalid message gets
400 with the reason (SDKs can see it); a batch stores its valid messages, quarantines the rest
and answers 200 listing what was quarantined, so a retry cannot duplicate the valid ones.
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from cohortsync.config.models import Project
from cohortsync.engine import validate_batch, validate_one
from cohortsync.errors import InputError
from cohortsync.events.models import (
    MAX_BATCH_BYTES,
    MAX_BATCH_MESSAGES,
    MAX_MESSAGE_BYTES,
    MESSAGE_TYPES,
    Message,
    Rejection,
)
from cohortsync.server.body import BodyError, read_body
from cohortsync.server.client_ip import request_client_ip, with_client_ip
from cohortsync.server.cors import check_origin
from cohortsync.server.group_commit import GroupCommitter
from cohortsync.server.metrics import ServeMetrics

router = APIRouter()
_OK = b'{"success":true}'


def json_response(payload: Any, status: int = 200) -> Response:
    """A JSON response serialised with orjson."""
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def error(status: int, code: str, message: str) -> Response:
    """Segment's error shape: {"success": false, "code": ..., "message": ...}."""
    return json_response({"success": False, "code": code, "message": message}, status)


def _basic_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0] or None


def _authenticate(request: Request, body: Any) -> str | None:
    project: Project = request.app.state.engine.project
    key = _basic_key(request)
    if key is None and isinstance(body, dict) and isinstance(body.get("writeKey"), str):
        key = body["writeKey"]
    return project.source_for_key(key) if key else None


async def _authenticated_body(request: Request, limit: int, too_large: str) -> tuple[Any, str]:
    """The parsed JSON body and the source its write key names; `BodyError` otherwise."""
    key = _basic_key(request)
    if key is not None and request.app.state.engine.project.source_for_key(key) is None:
        raise _wrong_key()  # before reading a body a stranger may have made large and slow
    raw = await read_body(request, limit, too_large)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BodyError(400, "invalid_json", f"the body is not valid JSON ({exc.msg})") from None
    source = _authenticate(request, body)
    if source is None:
        raise _wrong_key()
    check_origin(request, source)
    return body, source


def _wrong_key() -> BodyError:
    return BodyError(401, "invalid_write_key", "send a valid write key as the Basic user name")


async def _store(
    request: Request,
    source: str,
    messages: list[Message],
    rejections: list[Rejection],
    started: float,
) -> Response | None:
    committer: GroupCommitter = request.app.state.committer
    metrics: ServeMetrics = request.app.state.metrics
    metrics.arrived(source, len(messages) + len(rejections))
    try:
        await committer.submit(messages, rejections)
    except Exception:
        metrics.failed_requests.inc()
        return error(503, "store_unavailable", "events could not be stored: retry later")
    metrics.ingested(source, len(messages), len(rejections), time.perf_counter() - started)
    return None


@router.post("/v1/batch", tags=["ingest"])
async def ingest_batch(request: Request) -> Response:
    """A batch of messages of any type, as the Segment libraries send them."""
    started = time.perf_counter()
    try:
        body, source = await _authenticated_body(request, MAX_BATCH_BYTES, "batch_too_large")
    except BodyError as exc:
        return error(exc.status, exc.code, exc.message)
    batch = body.get("batch") if isinstance(body, dict) else None
    if not isinstance(batch, list) or not batch:
        return error(
            400, "invalid_batch", 'the body must be {"batch": [message, ...]} with messages'
        )
    if len(batch) > MAX_BATCH_MESSAGES:
        return error(400, "batch_too_large", f"a batch holds at most {MAX_BATCH_MESSAGES} messages")
    try:
        checked = validate_batch(batch, body, source=source, origin="http:/v1/batch")
    except InputError as exc:  # a bad sentAt
        return error(400, "invalid_timestamp", str(exc))
    rejections, rejected_at = checked.rejections, checked.rejected_at
    messages = with_client_ip(checked.messages, _client_ip(request))
    failure = await _store(request, source, messages, rejections, started)
    if failure is not None:
        return failure
    if not rejections:
        return Response(_OK, media_type="application/json")
    return json_response(
        {
            "success": True,
            "accepted": len(messages),
            "quarantined": [
                {"index": index, "code": r.reason, "message": r.detail}
                for index, r in zip(rejected_at, rejections, strict=True)
            ],
        }
    )


def _single(kind: str) -> Any:
    async def ingest_one(request: Request) -> Response:
        started = time.perf_counter()
        try:
            body, source = await _authenticated_body(
                request, MAX_MESSAGE_BYTES, "message_too_large"
            )
        except BodyError as exc:
            return error(exc.status, exc.code, exc.message)
        checked = validate_one(body, source=source, origin=f"http:/v1/{kind}", message_type=kind)
        if isinstance(checked, Message):
            one = with_client_ip([checked], _client_ip(request))
            failure = await _store(request, source, one, [], started)
            return failure or Response(_OK, media_type="application/json")
        failure = await _store(request, source, [], [checked], started)
        return failure or error(400, checked.reason, checked.detail)

    ingest_one.__name__ = f"ingest_{kind}"
    ingest_one.__doc__ = f"One {kind} message."
    return ingest_one


def _client_ip(request: Request) -> str | None:
    return request_client_ip(request, request.app.state.trusted_proxies)


router.add_api_route("/v1/b", ingest_batch, methods=["POST"], tags=["ingest"])
for _kind in MESSAGE_TYPES:
    router.add_api_route(f"/v1/{_kind}", _single(_kind), methods=["POST"], tags=["ingest"])
    router.add_api_route(f"/v1/{_kind[0]}", _single(_kind), methods=["POST"], tags=["ingest"])

INGEST_PATHS = frozenset(route.path for route in router.routes if isinstance(route, APIRoute))
"""Every path an ingest route answers (CORS applies to these)."""
