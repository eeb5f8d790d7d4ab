"""What the TikTok fake checks in a request body (more-destinations.md §2.1, §2.3, §2.4).

Every refusal is a `TiktokError`: TikTok answers it with HTTP 200 and the envelope
`{"code": <non-zero>, "message", "request_id", "data": {}}`. A value in a `*_SHA256` field (or an
Events API `email`, `phone`, `external_id`) that is not 64 lowercase hex is refused with 40062
(PII not hashed); a row of `batch_data` not aligned with `id_schema`, an unknown schema or a
missing field with 40002; more than 1,000 users or events with 40061.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

OK = 0
PARTIAL_OK = 20001
PARAMS = 40002
PERMISSION = 40001
NOT_EXIST = 40007
BATCH_SIZE = 40061
PII_NOT_HASHED = 40062
TOO_FREQUENT = 40100
TOKEN_EXPIRED = 40102
TOKEN_EMPTY = 40104
TOKEN_INVALID = 40105
FREQUENCY_LIMITED = 40132
SYSTEM = 50000
MESSAGES = {
    PARTIAL_OK: "Partial success",
    PERMISSION: "No permission to operate advertiser",
    PARAMS: "Invalid parameters",
    NOT_EXIST: "The resource does not exist",
    BATCH_SIZE: "Invalid batch size",
    PII_NOT_HASHED: "PII data is not hashed",
    TOO_FREQUENT: "Requests made too frequently",
    TOKEN_EXPIRED: "Access token has expired",
    TOKEN_EMPTY: "Access token is empty",
    TOKEN_INVALID: "Access token is incorrect or has been revoked",
    FREQUENCY_LIMITED: "Request frequency limited",
    SYSTEM: "System error",
}
MAX_USERS = 1_000
MAX_EVENTS = 1_000
MAX_NAME = 128
SHA256_SCHEMAS = frozenset(
    {
        "EMAIL_SHA256",
        "PHONE_SHA256",
        "IDFA_SHA256",
        "AAID_SHA256",
        "GAID_SHA256",
        "MAID_SHA256",
        "FIRST_SHA256",
    }
)
MD5_SCHEMAS = frozenset({"IDFA_MD5", "GAID_MD5", "MAID_MD5", "AAID_MD5", "FIRST_MD5"})
EVENT_SOURCES = frozenset({"web", "app", "offline", "crm"})
HASHED_USER_KEYS = ("email", "phone", "external_id")
PLAIN_USER_KEYS = ("ip", "user_agent", "ttclid", "ttp", "locale")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MD5 = re.compile(r"[0-9a-f]{32}")


class TiktokError(Exception):
    """A refusal, answered as HTTP 200 with a non-zero `code`."""

    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(message or MESSAGES.get(code, "Error"))
        self.code = code
        self.message = message or MESSAGES.get(code, "Error")


def envelope(code: int = OK, message: str = "OK", data: Any = None) -> dict[str, Any]:
    """TikTok's answer to every call, success or refusal."""
    return {
        "code": code,
        "message": message,
        "request_id": secrets.token_hex(12),
        "data": {} if data is None else data,
    }


@dataclass(frozen=True)
class Mapping:
    """A validated `/segment/mapping/` call: op, schema and (schema, id, audience ids) cells."""

    op: str
    id_schema: tuple[str, ...]
    cells: tuple[tuple[str, str, tuple[str, ...]], ...]
    users: int


def require(body: dict[str, Any], key: str, kind: type) -> Any:
    """A field of the right JSON type, or 40002 naming it."""
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, kind) or value in ("", [], {}):
        raise TiktokError(PARAMS, f"{key}: required, must be a non-empty {kind.__name__}")
    return value


def parse_mapping(body: dict[str, Any], advertiser_id: str) -> Mapping:
    """The members of an add or delete, every row aligned with `id_schema` and hashed."""
    advertisers = require(body, "advertiser_ids", list)
    if advertiser_id not in [str(a) for a in advertisers]:
        raise TiktokError(PERMISSION, "advertiser_ids: no permission for these advertisers")
    action = body.get("action")
    if action not in ("add", "delete"):
        raise TiktokError(PARAMS, "action: must be add or delete")
    schema = require(body, "id_schema", list)
    known = SHA256_SCHEMAS | MD5_SCHEMAS
    if any(s not in known for s in schema) or len(set(schema)) != len(schema):
        raise TiktokError(PARAMS, f"id_schema: each of {', '.join(sorted(known))}, once")
    rows = require(body, "batch_data", list)
    if len(rows) > MAX_USERS:
        raise TiktokError(BATCH_SIZE, f"batch_data: at most {MAX_USERS} users per request")
    cells: list[tuple[str, str, tuple[str, ...]]] = []
    for index, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(schema):
            raise TiktokError(
                PARAMS, f"batch_data[{index}]: must be an array aligned with id_schema"
            )
        for position, cell in enumerate(row):
            found = _cell(cell, schema[position], f"batch_data[{index}][{position}]")
            if found is not None:
                cells.append(found)
    return Mapping(str(action), tuple(schema), tuple(cells), len(rows))


def _cell(cell: Any, schema: str, where: str) -> tuple[str, str, tuple[str, ...]] | None:
    """One identifier of a user (None for `{}`), its hash in the schema's form."""
    if not isinstance(cell, dict):
        raise TiktokError(PARAMS, f"{where}: must be an object")
    if not cell:
        return None
    value = cell.get("id")
    audiences = cell.get("audience_ids")
    if not isinstance(value, str) or not value:
        raise TiktokError(PARAMS, f"{where}.id: required")
    if not isinstance(audiences, list) or not audiences:
        raise TiktokError(PARAMS, f"{where}.audience_ids: required")
    pattern = _SHA256 if schema in SHA256_SCHEMAS else _MD5
    if not pattern.fullmatch(value):
        raise TiktokError(PII_NOT_HASHED, f"{where}.id: {schema} must be hashed")
    return schema, value, tuple(str(a) for a in audiences)


def parse_events(body: dict[str, Any], pixel_code: str) -> list[dict[str, Any]]:
    """The events of an `/event/track/` call, every one valid, or a refusal of them all."""
    source = body.get("event_source")
    if source not in EVENT_SOURCES:
        raise TiktokError(PARAMS, f"event_source: one of {', '.join(sorted(EVENT_SOURCES))}")
    if require(body, "event_source_id", str) != pixel_code:
        raise TiktokError(NOT_EXIST, "event_source_id: no such pixel")
    data = require(body, "data", list)
    if len(data) > MAX_EVENTS:
        raise TiktokError(BATCH_SIZE, f"data: at most {MAX_EVENTS} events per request")
    return [_event(item, f"data[{index}]") for index, item in enumerate(data)]


def _event(item: Any, where: str) -> dict[str, Any]:
    """One event: name, Unix time, hashed customer keys, plain browser keys, page URL."""
    if not isinstance(item, dict):
        raise TiktokError(PARAMS, f"{where}: must be an object")
    require(item, "event", str)
    when = item.get("event_time")
    if isinstance(when, bool) or not isinstance(when, int) or when <= 0:
        raise TiktokError(PARAMS, f"{where}.event_time: Unix seconds")
    event_id = item.get("event_id")
    if event_id is not None and not isinstance(event_id, str):
        raise TiktokError(PARAMS, f"{where}.event_id: must be a string")
    user = item.get("user", {})
    if not isinstance(user, dict):
        raise TiktokError(PARAMS, f"{where}.user: must be an object")
    for key, value in user.items():
        if key in HASHED_USER_KEYS:
            values = value if isinstance(value, list) else [value]
            if not all(isinstance(v, str) and _SHA256.fullmatch(v) for v in values):
                raise TiktokError(PII_NOT_HASHED, f"{where}.user.{key}: must be SHA-256 hashed")
        elif key in PLAIN_USER_KEYS:
            if not isinstance(value, str):
                raise TiktokError(PARAMS, f"{where}.user.{key}: must be a string")
        else:
            raise TiktokError(PARAMS, f"{where}.user.{key}: unknown field")
    page = item.get("page", {})
    if not isinstance(page, dict) or not isinstance(page.get("url", ""), str):
        raise TiktokError(PARAMS, f"{where}.page.url: must be a string")
    properties = item.get("properties", {})
    if not isinstance(properties, dict):
        raise TiktokError(PARAMS, f"{where}.properties: must be an object")
    return item
