"""A fake of Segment's HTTP Tracking API, `POST /v1/batch` (destinations.md §6, checklist §10).

It answers as Segment does:
- 400 (`{"code", "message"}`) for a body over 500 KB, a message over 32 KB, or a body that is
  not JSON with a `batch` list;
- 200 `{"success": true}` otherwise, even when it drops messages: past the 2,500th message of a
  request, without `userId` or `anonymousId`, a track without `event` (Segment drops them too);
- a message whose `messageId` was kept before is acknowledged and not kept again.
The write key (HTTP Basic user with an empty password, or `writeKey` in the body) is recorded,
not checked: Segment answers 200 to a wrong one and drops the events.
"""

from __future__ import annotations

import base64
import threading
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.fakes.base import FakeServer

MAX_BATCH_BYTES = 500_000
MAX_MESSAGE_BYTES = 32 * 1024
MAX_MESSAGES = 2_500


class SegmentFake(FakeServer):
    """Segment's `/v1/batch`: keeps each message once per `messageId`, in arrival order."""

    def __init__(self) -> None:
        super().__init__(self._build_app())
        self.duplicates = 0
        self.dropped = 0
        self.write_keys: list[str] = []
        self._lock = threading.Lock()
        self._messages: list[dict[str, Any]] = []
        self._ids: set[str] = set()

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The messages kept, once per messageId, in the order they arrived."""
        with self._lock:
            return list(self._messages)

    def _build_app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        app.add_api_route("/v1/batch", self._batch, methods=["POST"])
        return app

    async def _batch(self, request: Request) -> JSONResponse:
        body = await request.body()
        if len(body) > MAX_BATCH_BYTES:
            return _refused(f"batch of {len(body)} bytes is over the 500 KB limit")
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _refused("the body is not JSON")
        items = parsed.get("batch") if isinstance(parsed, dict) else None
        if not isinstance(items, list):
            return _refused("the body has no batch list")
        for item in items:
            if len(orjson.dumps(item)) > MAX_MESSAGE_BYTES:
                return _refused("a message is over the 32 KB limit")
        self._note_key(request, parsed)
        with self._lock:
            self.dropped += max(0, len(items) - MAX_MESSAGES)
            for item in items[:MAX_MESSAGES]:
                self._keep(item)
        return JSONResponse({"success": True})

    def _note_key(self, request: Request, parsed: dict[str, Any]) -> None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            user = base64.b64decode(header[6:]).decode("utf-8", "replace").partition(":")[0]
            self.write_keys.append(user)
        elif isinstance(parsed.get("writeKey"), str):
            self.write_keys.append(parsed["writeKey"])

    def _keep(self, item: Any) -> None:
        """Keep one message unless Segment would drop it or already has its messageId."""
        if not isinstance(item, dict) or not (item.get("userId") or item.get("anonymousId")):
            self.dropped += 1
            return
        if item.get("type") == "track" and not item.get("event"):
            self.dropped += 1
            return
        message_id = item.get("messageId")
        if message_id:
            if str(message_id) in self._ids:
                self.duplicates += 1
                return
            self._ids.add(str(message_id))
        self._messages.append(item)


def _refused(message: str) -> JSONResponse:
    return JSONResponse({"code": "invalid_request", "message": message}, status_code=400)
