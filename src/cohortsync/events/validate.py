"""Turn raw Segment messages into `Message`s, or `Rejection`s saying what is wrong and the fix.

Rules follow the Segment HTTP Tracking API: every message needs `userId` or `anonymousId`,
`track` needs `event`, `group` needs `groupId`, `alias` needs `previousId` and `userId`,
a message is at most 32 KB and a batch at most 500 KB. Ours on top: objects and arrays nest at
most `MAX_DEPTH` levels, the message itself being the first (`too_deep` above).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from cohortsync.events.models import (
    MAX_MESSAGE_BYTES,
    MAX_MESSAGE_ID_CHARS,
    MESSAGE_TYPES,
    Message,
    Rejection,
)
from cohortsync.events.timestamps import TimestampError, correct_skew, parse_timestamp
from cohortsync.segments.names import event_key

MAX_PAYLOAD_KEPT = 64 * 1024
MAX_DEPTH = 64
_TOO_DEEP = f"objects and arrays may nest at most {MAX_DEPTH} levels: flatten the deep values"


class _InvalidError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail


def random_message_id() -> str:
    """A fresh id for a message that arrived without one (Segment's libraries use uuid4)."""
    return str(uuid.uuid4())


def content_message_id(raw: Mapping[str, Any]) -> str:
    """A stable id from the message's content, so re-ingesting a file changes nothing."""
    digest = hashlib.sha256(orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"content-{digest[:32]}"


def validate_message(
    raw: Any,
    *,
    source: str,
    received_at_us: int,
    origin: str,
    sent_at_us: int | None = None,
    defaults: Mapping[str, Any] | None = None,
    message_type: str | None = None,
    check_size: bool = True,
    keep_received_at: bool = False,
    new_id: Callable[[Mapping[str, Any]], str] = lambda _: random_message_id(),
) -> Message | Rejection:
    """Validate one raw message; `message_type` is set by the single-type endpoints (/v1/track)."""
    if not isinstance(raw, dict):
        return Rejection(
            "invalid_message",
            'each message must be a JSON object such as {"type": "track", ...}',
            origin,
            _payload(raw),
            source=source,
        )
    try:
        return _build(
            raw,
            source,
            received_at_us,
            sent_at_us,
            defaults,
            message_type,
            check_size,
            keep_received_at,
            new_id,
        )
    except _InvalidError as exc:
        message_id = raw.get("messageId")
        return Rejection(
            exc.reason,
            exc.detail,
            origin,
            _payload(raw),
            message_id=message_id if isinstance(message_id, str) else None,
            source=source,
        )


def _build(
    raw: dict[str, Any],
    source: str,
    received_at_us: int,
    sent_at_us: int | None,
    defaults: Mapping[str, Any] | None,
    message_type: str | None,
    check_size: bool,
    keep_received_at: bool,
    new_id: Callable[[Mapping[str, Any]], str],
) -> Message:
    try:
        data = orjson.dumps(raw)  # also proves the message can be stored as JSON
    except orjson.JSONEncodeError:  # orjson refuses 255+ levels: the deep case lands here too
        if _deeper_than(raw, MAX_DEPTH):
            raise _InvalidError("too_deep", _TOO_DEEP) from None
        raise _InvalidError(
            "invalid_message", "the message holds values JSON cannot store"
        ) from None
    # Each level opens a bracket: one C pass counting them spares almost every message the walk.
    if len(data) - len(data.translate(None, b"{[")) > MAX_DEPTH and _deeper_than(raw, MAX_DEPTH):
        raise _InvalidError("too_deep", _TOO_DEEP)
    if check_size and len(data) > MAX_MESSAGE_BYTES:
        raise _InvalidError(
            "message_too_large",
            f"a message may be at most {MAX_MESSAGE_BYTES} bytes: move large data out of it",
        )
    kind = message_type or raw.get("type")
    if kind not in MESSAGE_TYPES:
        raise _InvalidError(
            "invalid_type", f"type must be one of {', '.join(MESSAGE_TYPES)}; got {kind!r}"
        )
    get = raw.get
    user_id = _sid(get("userId"), "userId")
    anonymous_id = _sid(get("anonymousId"), "anonymousId")
    if user_id is None and anonymous_id is None:
        raise _InvalidError("no_user_anon_id", "every message needs a userId or an anonymousId")
    previous_id = _sid(get("previousId"), "previousId") if kind == "alias" else None
    group_id = _sid(get("groupId"), "groupId") if kind == "group" else None
    event = get("event")
    if kind == "track" and (event.__class__ is not str or not event.strip()):
        raise _InvalidError(
            "missing_event", 'a track call needs an event name, e.g. "event": "Order Completed"'
        )
    if kind == "group" and group_id is None:
        raise _InvalidError("missing_group_id", "a group call needs a groupId")
    if kind == "alias" and (previous_id is None or user_id is None):
        raise _InvalidError("missing_previous_id", "an alias call needs both previousId and userId")
    properties = _object(get("properties"), "properties")
    traits = _object(get("traits"), "traits")
    context = _object(get("context"), "context")
    integrations = _object(get("integrations"), "integrations")
    if defaults:
        shared = defaults.get("context")
        if shared.__class__ is dict and shared:
            if _deeper_than(shared, MAX_DEPTH - 1):  # the batch's context, one level down
                raise _InvalidError("too_deep", _TOO_DEEP)
            context = {**shared, **(context or {})}
        shared = defaults.get("integrations")
        if shared.__class__ is dict and shared:
            if _deeper_than(shared, MAX_DEPTH - 1):
                raise _InvalidError("too_deep", _TOO_DEEP)
            integrations = {**shared, **(integrations or {})}
    message_id = get("messageId")
    if message_id is None:
        message_id = new_id(raw)
    elif message_id.__class__ is not str or not 0 < len(message_id) <= MAX_MESSAGE_ID_CHARS:
        raise _InvalidError(
            "invalid_message_id",
            f"messageId must be a non-empty string of at most {MAX_MESSAGE_ID_CHARS} characters",
        )
    # Only files may carry their own receivedAt (an export from another pipeline); over HTTP
    # the receive time is ours, as Segment sets it.
    received = (
        _time(get("receivedAt"), "receivedAt", received_at_us)
        if keep_received_at
        else received_at_us
    )
    sent = _time(get("sentAt"), "sentAt", sent_at_us)
    # An explicit timestamp wins: rudder-sdk-node sets originalTimestamp to "now" on every call,
    # so a historical import's time is in `timestamp`.
    stamp = get("timestamp")
    if stamp is None or stamp == "":
        original = _time(get("originalTimestamp") or None, "originalTimestamp", received)
    else:
        original = _time(stamp, "timestamp", received)
    try:
        corrected = correct_skew(original, sent, received)
    except TimestampError as exc:
        raise _InvalidError("invalid_timestamp", f"timestamp corrected by sentAt {exc}") from None
    name = get("name")
    track = kind == "track"
    # In field order: a NamedTuple is built ~1 µs faster from positions than from keywords.
    return Message(
        message_id, kind, source, corrected, original, received, sent,
        event if track else None, event_key(event) if track else None,
        name if name.__class__ is str else None,
        user_id, anonymous_id, previous_id, group_id, properties, traits, context, integrations,
    )  # fmt: skip


def _sid(value: Any, field: str) -> str | None:
    if value.__class__ is str and 0 < len(value) <= 1024:
        return value  # type: ignore[no-any-return]
    return _string_id(value, field)


def _string_id(value: Any, field: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _InvalidError("invalid_id", f"{field} must be a string")
    text = str(value)
    if len(text) > 1024:
        raise _InvalidError("invalid_id", f"{field} may be at most 1024 characters")
    return text


def _object(value: Any, field: str) -> dict[str, Any] | None:
    if value is None or value.__class__ is dict:
        return value  # type: ignore[no-any-return]
    if not isinstance(value, dict):
        raise _InvalidError("invalid_field", f"{field} must be a JSON object")
    return value


def _time(value: Any, field: str, default: int | None) -> Any:
    if value is None or value == "":
        return default
    try:
        return parse_timestamp(value)
    except TimestampError as exc:
        raise _InvalidError("invalid_timestamp", f"{field} {exc}") from None


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether objects and arrays in `value` nest more than `limit` levels. A loop, not
    recursion: JSON parsers accept ~1,000 levels, past what Python's recursion allows."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, level = stack.pop()
        if level > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return False


def _pruned(value: Any, levels: int = MAX_DEPTH) -> Any:
    """`value` with what nests below `levels` levels replaced by "…" (kept in quarantine)."""
    if not isinstance(value, dict | list):
        return value
    if levels <= 0:
        return "…"
    if isinstance(value, dict):
        return {key: _pruned(item, levels - 1) for key, item in value.items()}
    return [_pruned(item, levels - 1) for item in value]


def _payload(raw: Any) -> str:
    try:
        text = orjson.dumps(raw).decode()
    except TypeError:  # too deep for orjson, or values JSON cannot hold
        kept = _pruned(raw)
        try:
            text = orjson.dumps(kept).decode()
        except TypeError:
            text = repr(kept)
    return text[:MAX_PAYLOAD_KEPT]
