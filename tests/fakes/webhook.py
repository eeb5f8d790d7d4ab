"""A Standard Webhooks v1 receiver (destinations.md §8; vectors in §9.2).

It verifies what a careful receiver verifies, on the exact raw bytes received:
- the three headers `webhook-id`, `webhook-timestamp`, `webhook-signature` (400 if missing);
- the timestamp within ±5 minutes of the fake's clock (400 otherwise);
- one of the space-separated `v1,<base64>` signatures equal, in constant time, to
  base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")) where key = base64-decode of the secret
  after `whsec_` (401 otherwise).
A verified message is applied once per `webhook-id`; a resend is acknowledged and counted.
The signer here is the fake's own, written from the spec, so cohortsync's must agree with it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.fakes.base import FakeServer

SECRET_PREFIX = "whsec_"
TOLERANCE = timedelta(minutes=5)
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


class DeliveryError(Exception):
    """Why a delivery is refused, with the HTTP status the receiver answers."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def new_secret() -> str:
    """A fresh `whsec_` secret over 24 random bytes, as the spec shows them."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def signing_key(secret: str) -> bytes:
    """The HMAC key: the base64-decoded part of the secret after `whsec_`."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `v1,<base64>` signature of one delivery attempt."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_matches(secret: str, msg_id: str, timestamp: str, body: bytes, header: str) -> bool:
    """Whether any `v1` entry of the header is the right signature (other versions ignored)."""
    expected = sign(secret, msg_id, int(timestamp), body).encode()
    return any(
        entry.startswith("v1,") and hmac.compare_digest(entry.encode(), expected)
        for entry in header.split(" ")
    )


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: datetime) -> str:
    """The webhook-id of a genuine, fresh delivery; `DeliveryError` (400/401) otherwise."""
    values = {name: headers.get(name) for name in HEADERS}
    for name, value in values.items():
        if not value:
            raise DeliveryError(400, f"missing header {name}")
    msg_id, timestamp, signature = (str(values[name]) for name in HEADERS)
    if not timestamp.isdigit():
        raise DeliveryError(400, "webhook-timestamp must be integer Unix seconds")
    skew = int(timestamp) - now.timestamp()
    if skew < -TOLERANCE.total_seconds():
        raise DeliveryError(400, "webhook-timestamp is more than 5 minutes old")
    if skew > TOLERANCE.total_seconds():
        raise DeliveryError(400, "webhook-timestamp is more than 5 minutes in the future")
    if not signature_matches(secret, msg_id, timestamp, body, signature):
        raise DeliveryError(401, "no valid v1 signature in webhook-signature")
    return msg_id


class WebhookFake(FakeServer):
    """A receiver at `<base_url>/webhook` that verifies, dedupes and records deliveries."""

    endpoint = "/webhook"

    def __init__(self, secret: str | None = None) -> None:
        super().__init__(self._build_app())
        self.secret = secret or new_secret()
        self.duplicates = 0
        self._lock = threading.Lock()
        self._applied: list[tuple[str, Any]] = []
        self._ids: set[str] = set()
        self._rejections: list[tuple[int, str]] = []

    @property
    def applied(self) -> list[tuple[str, Any]]:
        """(webhook-id, parsed body) of each message applied, once per id, in order."""
        with self._lock:
            return list(self._applied)

    @property
    def rejections(self) -> list[tuple[int, str]]:
        """(HTTP status, reason) of every refused delivery."""
        with self._lock:
            return list(self._rejections)

    def signed_headers(
        self, msg_id: str, body: bytes, timestamp: int | None = None
    ) -> dict[str, str]:
        """Headers of a correctly signed delivery (for tests that play the sender)."""
        ts = int(self.now.timestamp()) if timestamp is None else timestamp
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(self.secret, msg_id, ts, body),
            "content-type": "application/json",
        }

    def _build_app(self) -> FastAPI:
        """One route: POST on any path is a delivery."""
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        app.add_api_route("/{rest:path}", self._receive, methods=["POST"])
        return app

    async def _receive(self, rest: str, request: Request) -> Response:
        """Verify the raw body, then apply it unless its webhook-id was applied before."""
        body = await request.body()
        try:
            msg_id = verify(self.secret, request.headers, body, self.now)
            parsed = _json(body)
        except DeliveryError as refused:
            with self._lock:
                self._rejections.append((refused.status, refused.reason))
            return JSONResponse({"error": refused.reason}, status_code=refused.status)
        with self._lock:
            if msg_id in self._ids:
                self.duplicates += 1
            else:
                self._ids.add(msg_id)
                self._applied.append((msg_id, parsed))
        return Response(status_code=204)


def _json(body: bytes) -> Any:
    """The verified body as JSON (400 if it is not)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise DeliveryError(400, "the body is not JSON") from None
