"""A fake of Segment's HTTP Tracking API batch endpoint (destinations.md §6, §10).

`POST <base_url>/v1/batch` takes `{"batch": [messages], "context": {...}}` with the source's
write key as HTTP Basic user (empty password) or as `writeKey` in the body. Like Segment it
answers 400 (`{"code", "message"}`) only for a body that is not JSON, a batch over 500 KB or a
message over 32 KB, and `{"success": true}` otherwise; it silently drops messages beyond 2,500,
messages without `userId` or `anonymousId`, tracks without `event`, and everything sent with a
missing or wrong write key (`dropped` counts them); it keeps the first message of each
`messageId`.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import threading
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.fakes.base import FakeServer

MAX_BATCH_BYTES = 500 * 1024
MAX_MESSAGE_BYTES = 32 * 1024
MAX_MESSAGES = 2_500


class SegmentFake(FakeServer):
    """Segment's `/v1/batch`: checks the write key and limits, dedupes and keeps messages."""

    def __init__(self, write_key: str | None = None) -> None:
        super().__init__(self._build_app())
        self.write_key = write_key or "wk_" + secrets.token_urlsafe(12)
        self.duplicates = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._messages: list[dict[str, Any]] = []
        self._ids: set[str] = set()

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Every message kept, once per `messageId`, in arrival order."""
        with self._lock:
            return list(self._messages)

    def _build_app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        app.add_api_route("/v1/batch", self._batch, methods=["POST"])
        return app

    async def _batch(self, request: Request) -> Response:
        """Check the key and the limits, then keep each new, well-formed message."""
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _error(400, "Invalid JSON")
        if not isinstance(body, dict):
            return _error(400, "Invalid JSON")
        batch = body.get("batch")
        if not isinstance(batch, list):
            return _error(400, "batch must be a list of messages")
        if len(raw) > MAX_BATCH_BYTES:
            return _error(400, "Batch size exceeds 500KB")
        if any(len(orjson.dumps(message)) > MAX_MESSAGE_BYTES for message in batch):
            return _error(400, "Message size exceeds 32KB")
        with self._lock:
            if _write_key(request, body) != self.write_key:
                self.dropped += len(batch)
                return JSONResponse({"success": True})
            for message in batch[:MAX_MESSAGES]:
                self._keep(message)
            self.dropped += max(0, len(batch) - MAX_MESSAGES)
        return JSONResponse({"success": True})

    def _keep(self, message: Any) -> None:
        """Keep a message unless it is malformed (dropped) or a resend (counted)."""
        if not isinstance(message, dict) or not (
            message.get("userId") or message.get("anonymousId")
        ):
            self.dropped += 1
            return
        if message.get("type") == "track" and not message.get("event"):
            self.dropped += 1
            return
        message_id = str(message.get("messageId", ""))
        if message_id and message_id in self._ids:
            self.duplicates += 1
            return
        self._ids.add(message_id)
        self._messages.append(message)


def _write_key(request: Request, body: dict[str, Any]) -> str | None:
    """The write key from HTTP Basic (as the user) or from the body's `writeKey`."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("basic "):
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[0]
    key = body.get("writeKey")
    return key if isinstance(key, str) else None


def _error(status: int, message: str) -> Response:
    return JSONResponse({"code": "invalid_request", "message": message}, status_code=status)
