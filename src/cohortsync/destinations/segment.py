"""Segment destination: audience changes as Engage-style events to any Segment-spec endpoint.

Each change becomes two messages, following Segment Engage's audience convention:
- a track `Audience Entered` (or `Audience Exited`) with properties
  `{"audience_key": "<audience>", "<audience>": true|false, "holdout": bool}`;
- an identify with the trait `{"<audience>": true|false}`; a holdout member also gets
  `{"<audience>_holdout": true|false}`, so tools fed by Segment can leave the control group alone.
Messages carry `userId` (else `anonymousId`), the email in `traits`/`context.traits` when known,
`timestamp` = the time of the change, and a `messageId` derived from the destination name, the
audience, the change id and the message kind: a resent batch is deduplicated by the receiver.
Conversions become a track named after the conversion, with `value`, `revenue`, `currency`
and `messageId` = the source event's message id.

Messages go to `{url}/v1/batch` with HTTP Basic auth (write key as user, empty password), split
to stay within Segment's limits (2,500 messages and ~500 KB per request, 32 KB per message). No
`sentAt` is sent, so a retry sends the same bytes and Segment keeps each `timestamp` as given.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import AliasChoices, ConfigDict, Field, SecretStr, field_validator

from cohortsync import __version__
from cohortsync.destinations.base import (
    ADD,
    Batch,
    BatchResult,
    Capabilities,
    Change,
    Conversion,
    ConversionBatch,
    Destination,
    DestinationConfig,
    DryRun,
    RateLimit,
)
from cohortsync.destinations.http import PreparedRequest, json_body, scrub, send

DEFAULT_URL = "https://api.segment.io"
MAX_MESSAGES = 2_500
"""Segment accepts at most 2,500 messages per /v1/batch (more are silently dropped)."""
MAX_BATCH_BYTES = 475_000
"""Segment refuses batches over 500 KB; analytics-python stops at 475,000 bytes, so do we."""
MAX_MESSAGE_BYTES = 32 * 1024
"""Segment refuses a single message over 32 KB."""
ENTERED = "Audience Entered"
EXITED = "Audience Exited"
_LIBRARY = {"library": {"name": "cohortsync", "version": __version__}}
_ENVELOPE_BYTES = len(json_body({"batch": [], "context": _LIBRARY}))


class SegmentConfig(DestinationConfig):
    """`type: segment`: the base URL of a Segment-spec HTTP API and its source write key."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)
    type: Literal["segment"] = "segment"
    url: str = Field(default=DEFAULT_URL, validation_alias=AliasChoices("url", "base_url"))
    """The API's base address (a regional host, a proxy, a fake); `base_url` is read as the
    same setting."""
    write_key: SecretStr

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "url must be the base address of the API, such as https://api.segment.io "
                "(EU workspaces: https://events.eu1.segmentapis.com)"
            )
        if parts.path.rstrip("/").endswith("/v1/batch") or parts.query:
            raise ValueError("url is the base address only: cohortsync adds /v1/batch itself")
        return value.rstrip("/")

    @field_validator("write_key")
    @classmethod
    def _present(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError(
                "write_key is empty: copy the write key of an HTTP API source in Segment"
            )
        return value


@dataclass(frozen=True)
class _Message:
    """One rendered message and the record it stands for."""

    record_id: int
    encoded: bytes


class SegmentDestination(Destination[SegmentConfig]):
    """Sends audience entries/exits and conversions to a Segment-spec `/v1/batch` endpoint."""

    kind: ClassVar[str] = "segment"
    config_model: ClassVar[type[DestinationConfig]] = SegmentConfig
    capabilities = Capabilities(
        identifiers=("user_id", "anonymous_id"),
        conversions=True,
        # Two messages per change: 1,000 changes stay under Segment's 2,500 messages.
        max_batch=1_000,
        # 429 with Retry-After; Segment asks for at most 1,000 requests/s per workspace.
        rate_limit=RateLimit(per_second=1_000),
    )

    def apply(self, batch: Batch) -> BatchResult:
        """Send a track and an identify per change; a change with no user or anonymous id, or
        one too large for Segment, is rejected with the reason."""
        messages, rejected = self._render(batch)
        return self._deliver(messages, rejected)

    def send_conversions(self, batch: ConversionBatch) -> BatchResult:
        """Send a track per conversion, deduplicated by the source event's message id."""
        messages, rejected = self._render(batch)
        return self._deliver(messages, rejected)

    def dry_run(self, batch: Batch | ConversionBatch) -> list[dict[str, Any]]:
        """The `/v1/batch` requests that would be sent (the write key redacted)."""
        return self.preview(batch).requests

    def preview(self, batch: Batch | ConversionBatch) -> DryRun:
        """The `/v1/batch` requests and the records refused before sending, with reasons."""
        messages, rejected = self._render(batch)
        return DryRun([self._request(chunk).describe() for chunk in _chunks(messages)], rejected)

    def messages(self, batch: Batch | ConversionBatch) -> list[dict[str, Any]]:
        """The Segment messages a batch becomes, in sending order."""
        rendered, _ = self._render(batch)
        return [orjson.loads(message.encoded) for message in rendered]

    def _render(self, batch: Batch | ConversionBatch) -> tuple[list[_Message], dict[int, str]]:
        messages: list[_Message] = []
        rejected: dict[int, str] = {}
        pairs: list[tuple[int, Mapping[str, str], list[dict[str, Any]]]]
        if isinstance(batch, Batch):
            pairs = [(c.change_id, c.identifiers, self._change_messages(c)) for c in batch.changes]
        else:
            pairs = [
                (c.conversion_id, c.identifiers, self._conversion_messages(c))
                for c in batch.conversions
            ]
        for record_id, identifiers, rendered in pairs:
            if not _who(identifiers):
                rejected[record_id] = (
                    "no user_id or anonymous_id: Segment needs one of them on every message"
                )
                continue
            encoded = [json_body(message) for message in rendered]
            if any(len(item) > MAX_MESSAGE_BYTES for item in encoded):
                rejected[record_id] = (
                    f"message over Segment's {MAX_MESSAGE_BYTES // 1024} KB limit "
                    "(trim its properties or context)"
                )
                continue
            messages += [_Message(record_id, item) for item in encoded]
        return messages, rejected

    def _change_messages(self, change: Change) -> list[dict[str, Any]]:
        audience = change.audience
        member = change.op == ADD
        email = change.identifiers.get("email")
        traits: dict[str, Any] = {audience: member}
        if change.holdout:
            traits[f"{audience}_holdout"] = member
        if email:
            traits["email"] = email
        base = {**_who(change.identifiers), "timestamp": _iso(change.at)}
        track: dict[str, Any] = {
            **base,
            "type": "track",
            "event": ENTERED if member else EXITED,
            "messageId": self._message_id(audience, change.change_id, "track"),
            "properties": {"audience_key": audience, audience: member, "holdout": change.holdout},
        }
        if email:
            track["context"] = {"traits": {"email": email}}
        identify = {
            **base,
            "type": "identify",
            "messageId": self._message_id(audience, change.change_id, "identify"),
            "traits": traits,
        }
        return [track, identify]

    def _conversion_messages(self, conversion: Conversion) -> list[dict[str, Any]]:
        properties = dict(conversion.properties)
        if conversion.value is not None:
            properties["value"] = conversion.value
            properties["revenue"] = conversion.value
        if conversion.currency:
            properties["currency"] = conversion.currency
        context = dict(conversion.context)
        email = conversion.identifiers.get("email")
        if email:
            context["traits"] = {**dict(context.get("traits") or {}), "email": email}
        track: dict[str, Any] = {
            **_who(conversion.identifiers),
            "type": "track",
            "event": conversion.name,
            "messageId": conversion.message_id,
            "timestamp": _iso(conversion.at),
            "properties": properties,
        }
        if context:
            track["context"] = context
        return [track]

    def _message_id(self, audience: str, change_id: int, kind: str) -> str:
        """The same id for the same message on every attempt, under Segment's 100 characters."""
        key = f"{self.context.name}\x1f{audience}\x1f{change_id}\x1f{kind}".encode()
        return f"cohortsync-{hashlib.sha256(key).hexdigest()[:40]}"

    def _request(self, chunk: Sequence[_Message]) -> PreparedRequest:
        content = b"".join(
            [
                b'{"batch":[',
                b",".join(message.encoded for message in chunk),
                b'],"context":',
                json_body(_LIBRARY),
                b"}",
            ]
        )
        token = base64.b64encode(f"{self.settings.write_key.get_secret_value()}:".encode())
        headers = {
            "Authorization": f"Basic {token.decode('ascii')}",
            "Content-Type": "application/json",
            "User-Agent": f"cohortsync/{__version__}",
        }
        return PreparedRequest(
            "POST", f"{self.settings.url}/v1/batch", headers=headers, content=content
        )

    def _deliver(self, messages: list[_Message], rejected: dict[int, str]) -> BatchResult:
        """Send each chunk in order; a failing chunk raises, and the sync layer resends the whole
        batch: chunks already delivered are then deduplicated by their message ids."""
        rejected = dict(rejected)
        requests = 0
        for chunk in _chunks(messages):
            response = send(self.context.http, self._request(chunk), f"segment {self.context.name}")
            requests += 1
            for index, reason in _quarantined(response.content):
                if 0 <= index < len(chunk):
                    rejected.setdefault(chunk[index].record_id, reason)
        sent = len({message.record_id for message in messages} - rejected.keys())
        return BatchResult(
            rejected=rejected,
            stats={"sent": sent, "messages": len(messages), "requests": requests},
        )


def _who(identifiers: Mapping[str, str]) -> dict[str, str]:
    """Segment's identity fields: `userId` when known, else `anonymousId`."""
    if identifiers.get("user_id"):
        return {"userId": identifiers["user_id"]}
    if identifiers.get("anonymous_id"):
        return {"anonymousId": identifiers["anonymous_id"]}
    return {}


def _iso(at: datetime) -> str:
    """UTC ISO-8601 with microseconds and `Z`; naive times are taken as UTC."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _chunks(messages: Sequence[_Message]) -> Iterator[list[_Message]]:
    """Consecutive runs of messages that each fit one /v1/batch request."""
    chunk: list[_Message] = []
    size = _ENVELOPE_BYTES
    for message in messages:
        grown = size + len(message.encoded) + 1
        if chunk and (len(chunk) == MAX_MESSAGES or grown > MAX_BATCH_BYTES):
            yield chunk
            chunk, grown = [], _ENVELOPE_BYTES + len(message.encoded) + 1
        chunk.append(message)
        size = grown
    if chunk:
        yield chunk


def _quarantined(content: bytes) -> Iterator[tuple[int, str]]:
    """Per-message refusals in a 200 answer (cohortsync's ingest lists them; Segment does not)."""
    try:
        answer = orjson.loads(content)
    except orjson.JSONDecodeError:
        return
    if not isinstance(answer, dict) or not isinstance(answer.get("quarantined"), list):
        return
    for item in answer["quarantined"]:
        if isinstance(item, dict) and isinstance(item.get("index"), int):
            reason = f"refused by the receiver: {item.get('code')}: {item.get('message', '')}"
            yield item["index"], scrub(reason)
