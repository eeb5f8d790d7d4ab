"""Graph API conventions shared by the Meta fakes (destinations.md §1.2 and §1.7).

Parameters arrive in the query string, a form body (urlencoded or multipart) or a JSON body, and
JSON-valued ones (`payload`, `session`, `data`) either as JSON text or as parsed JSON. Errors
use one envelope: `{"error": {"message", "type", "code", "error_subcode", "fbtrace_id", …}}`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from collections.abc import Mapping
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse

API_VERSION = "v25.0"
_TRACE_ALPHABET = string.ascii_letters + string.digits


def fbtrace_id() -> str:
    """A random trace id like the ones Graph returns (opaque, 11 characters)."""
    return "A" + "".join(secrets.choice(_TRACE_ALPHABET) for _ in range(10))


class GraphError(Exception):
    """A Graph error: raised by a handler, answered as the §1.7 envelope."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        status: int = 400,
        subcode: int | None = None,
        kind: str = "OAuthException",
        user_title: str | None = None,
        user_msg: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.subcode = subcode
        self.kind = kind
        self.user_title = user_title
        self.user_msg = user_msg

    def envelope(self) -> dict[str, Any]:
        """The JSON body Graph sends with this error."""
        error: dict[str, Any] = {"message": self.message, "type": self.kind, "code": self.code}
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        if self.user_title is not None:
            error["error_user_title"] = self.user_title
        if self.user_msg is not None:
            error["error_user_msg"] = self.user_msg
        if self.code in (1, 2):
            error["is_transient"] = True
        error["fbtrace_id"] = fbtrace_id()
        return {"error": error}

    def response(self, headers: Mapping[str, str] | None = None) -> JSONResponse:
        """The HTTP answer carrying this error."""
        return JSONResponse(self.envelope(), status_code=self.status, headers=headers)


def invalid(message: str, *, subcode: int | None = None, title: str | None = None) -> GraphError:
    """Code 100, "Invalid parameter", HTTP 400: the usual answer to a malformed request."""
    return GraphError(100, f"(#100) {message}", subcode=subcode, user_title=title, user_msg=message)


def unknown_object(method: str, node: str) -> GraphError:
    """Code 100 / subcode 33: the node does not exist or this token cannot see it."""
    return GraphError(
        100,
        f"Unsupported {method.lower()} request. Object with ID '{node}' does not exist, cannot be "
        "loaded due to missing permissions, or does not support this operation.",
        subcode=33,
        kind="GraphMethodException",
    )


async def graph_params(request: Request) -> dict[str, Any]:
    """Every parameter of a request: query string first, then the body overrides (§1.2)."""
    params: dict[str, Any] = dict(request.query_params)
    body = await request.body()
    if not body:
        return params
    ctype = request.headers.get("content-type", "").lower()
    if "json" in ctype or (not ctype and body[:1] == b"{"):
        parsed = _json_object(body)
    elif ctype.startswith("multipart/form-data"):
        parsed = _multipart(request.headers["content-type"], body)
    else:
        parsed = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    params.update(parsed)
    return params


def json_param(params: Mapping[str, Any], name: str, kind: type, required: bool = True) -> Any:
    """A JSON-valued parameter, sent as JSON text or already parsed, checked to be `kind`."""
    value = params.get(name)
    if value is None:
        if required:
            raise invalid(f"The parameter {name} is required", title="Missing parameter")
        return None
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise invalid(f"Param {name} must be valid JSON") from None
    if not isinstance(value, kind):
        raise invalid(f"Param {name} must be a JSON {kind.__name__}")
    return value


def access_token(request: Request, params: Mapping[str, Any]) -> str | None:
    """The token: `access_token` parameter, else `Authorization: Bearer|OAuth <token>`."""
    token = params.get("access_token")
    if isinstance(token, str) and token:
        return token
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() in ("bearer", "oauth") and value.strip():
        return value.strip()
    return None


def check_token(
    request: Request, params: Mapping[str, Any], valid: str, app_secret: str | None
) -> None:
    """Code 190 (HTTP 401) for a missing or wrong token; code 100 for a wrong appsecret_proof."""
    token = access_token(request, params)
    if token is None:
        raise GraphError(190, "An access token is required to request this resource.", status=401)
    if not hmac.compare_digest(token.encode(), valid.encode()):
        raise GraphError(
            190, "Invalid OAuth access token - Cannot parse access token", status=401, subcode=463
        )
    proof = params.get("appsecret_proof")
    if app_secret is not None and proof is not None:
        expected = appsecret_proof(app_secret, token)
        if not isinstance(proof, str) or not hmac.compare_digest(proof, expected):
            raise invalid("Invalid appsecret_proof provided in the API argument")


def appsecret_proof(app_secret: str, token: str) -> str:
    """HMAC-SHA256(app secret, token) as lowercase hex (§1.2)."""
    return hmac.new(app_secret.encode(), token.encode(), hashlib.sha256).hexdigest()


def _json_object(body: bytes) -> dict[str, Any]:
    """A JSON request body, which must be an object of parameters."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise invalid("The request body is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise invalid("A JSON request body must be an object of parameters")
    return parsed


def _multipart(content_type: str, body: bytes) -> dict[str, str]:
    """Text fields of a multipart/form-data body."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = payload.decode("utf-8", "replace")
    return fields
