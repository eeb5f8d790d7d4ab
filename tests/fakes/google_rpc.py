"""Google API error bodies for the Data Manager fake (more-destinations.md §1.9).

Every failure is a `google.rpc.Status`: `{"error": {"code", "status", "message", "details"}}`
with an `ErrorInfo` (the reason), a `BadRequest` naming the offending field on 400s, and a
`RequestInfo` carrying the request id.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

DOMAIN = "datamanager.googleapis.com"
CANONICAL = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class RpcError(Exception):
    """A failed call: raised by a handler, answered as a google.rpc.Status body."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        field: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.field = field
        self.metadata = dict(metadata or {})

    def envelope(self) -> dict[str, Any]:
        """The JSON body Google sends with this error."""
        details: list[dict[str, Any]] = []
        if self.reason is not None:
            info: dict[str, Any] = {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": self.reason,
                "domain": DOMAIN,
            }
            if self.metadata:
                info["metadata"] = self.metadata
            details.append(info)
        if self.field is not None:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": self.field, "description": self.message}],
                }
            )
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RequestInfo", "requestId": request_id()}
        )
        status = CANONICAL.get(self.code, "UNKNOWN")
        return {
            "error": {
                "code": self.code,
                "status": status,
                "message": self.message,
                "details": details,
            }
        }

    def response(self) -> JSONResponse:
        """The HTTP answer carrying this error."""
        return JSONResponse(self.envelope(), status_code=self.code)


def invalid(message: str, reason: str, field: str | None = None) -> RpcError:
    """HTTP 400 INVALID_ARGUMENT with an `ErrorReason` and the offending field path."""
    return RpcError(400, message, reason=reason, field=field)


def request_id() -> str:
    """A fresh opaque request id."""
    return uuid.uuid4().hex


def fault_body(status: int) -> Mapping[str, Any]:
    """The Google-shaped body of an injected fault with HTTP `status`."""
    if status == 401:
        return RpcError(401, "Request had invalid authentication credentials.").envelope()
    if status == 429:
        return RpcError(
            429,
            "Quota exceeded for quota metric 'Ingestion mutate requests'.",
            reason="RATE_LIMIT_EXCEEDED",
            metadata={"quota_limit": "IngestionMutateRequestsPerMinutePerProject"},
        ).envelope()
    if status >= 500:
        return RpcError(status, "The service is currently unavailable.").envelope()
    return RpcError(status, f"Injected fault (HTTP {status})").envelope()
