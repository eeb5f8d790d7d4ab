"""The event bus between ingest and real-time workers: its contract, codec and partitioning.

Ingest publishes stored messages; workers of a consumer group fetch them, evaluate, then ack.
Messages are partitioned by the strongest identifier known before resolution (`user_id`, else
`anonymous_id`), so one person's messages stay in order. Within a group each partition is read by
one consumer at a time (a lease); a consumer that stops renewing its leases for the visibility
timeout loses them, and whoever takes a partition over gets its unacked messages again, before
anything newer. BusMessage is at least once: processing must be idempotent (the message id).

Implementations: `InProcessBus` (bus_memory), `RedisBus` (Redis Streams), `NatsBus` (NATS
JetStream); `open_bus(url)` picks one by URL scheme.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, Self
from urllib.parse import urlsplit

import orjson

from cohortsync.errors import CohortsyncError
from cohortsync.store.records import Message

DEFAULT_PARTITIONS = 16
DEFAULT_VISIBILITY = 30.0
"""Seconds a consumer may go without fetching before its partitions (and unacked messages)
move to another consumer of its group."""
DEFAULT_PREFIX = "cohortsync-events"

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_FIELDS = frozenset(Message._fields)


class BusError(CohortsyncError):
    """The bus cannot do what was asked: unreachable, misconfigured, or refused a message."""


class BusMessage(NamedTuple):
    """One message handed to a consumer; ack its `id` once processed."""

    id: str
    partition: int
    message: Message


class Consumer(Protocol):
    """One member of a consumer group: fetches from the partitions it holds, acks what it did.

    A consumer is used from one thread. `fetch` also renews its leases, so call it at least once
    per visibility timeout; a partition is handed to another member only once every delivery
    from it is acked, so ack promptly.
    """

    group: str
    name: str

    @property
    def partitions(self) -> frozenset[int]:
        """The partitions this consumer reads now."""
        ...

    def fetch(self, max_messages: int = 1000, timeout: float = 1.0) -> list[BusMessage]:
        """About `max_messages` deliveries in partition order; waits up to `timeout` for one."""
        ...

    def ack(self, delivery_ids: Sequence[str]) -> None:
        """Mark deliveries processed: they are never delivered to this group again."""
        ...

    def nack(self, delivery_ids: Sequence[str]) -> None:
        """Give deliveries back unprocessed: the next fetches return them again, before anything
        newer of their partitions (so a failed batch is retried in order)."""
        ...

    def close(self) -> None:
        """Leave the group: unacked deliveries and held partitions go to the others at once."""
        ...

    def __enter__(self) -> Self:
        """The consumer; `close` on exit."""
        ...

    def __exit__(self, *exc: object) -> None:
        """Close the consumer."""
        ...


class Bus(Protocol):
    """A partitioned, durable log of messages read by consumer groups."""

    prefix: str
    partitions: int

    def publish(self, batch: Sequence[Message]) -> None:
        """Return only once the bus durably accepted every message; `BusError` otherwise."""
        ...

    def consumer(self, group: str, name: str, partitions: Sequence[int] | None = None) -> Consumer:
        """Join `group` as `name` (unique within the group), for all or the given partitions."""
        ...

    def backlog(self, group: str) -> int:
        """Messages the group has not acked yet (delivered or not)."""
        ...

    def check(self) -> None:
        """Return once the bus answered a round trip now; `BusError` saying why not."""
        ...

    def drop(self) -> None:
        """Delete every stream, group and lease under this bus's prefix."""
        ...

    def close(self) -> None:
        """Release connections; consumers of this bus stop working."""
        ...


def partition_key(message: Message) -> str:
    """The key a message is partitioned by: `user_id`, else `anonymous_id`, else its id."""
    return message.user_id or message.anonymous_id or message.message_id


def partition_for(key: str, partitions: int) -> int:
    """The partition of `key`: stable across processes and versions (CRC-32, not `hash`)."""
    return zlib.crc32(key.encode("utf-8")) % partitions


def encode(message: Message) -> bytes:
    """A message as JSON bytes, field names included so older readers fail loudly, not wrongly."""
    return orjson.dumps(dict(zip(Message._fields, message, strict=True)))


def decode(data: bytes) -> Message:
    """The message `encode` wrote; `ValueError` if the bytes are not one."""
    fields: Any = orjson.loads(data)
    if not isinstance(fields, dict) or not set(fields) <= _FIELDS:
        raise ValueError("not an encoded cohortsync message")
    return Message(**fields)


def check_name(kind: str, value: str) -> str:
    """`value` if it is a valid prefix, group or consumer name; `BusError` saying why if not."""
    if not _NAME.fullmatch(value):
        raise BusError(
            f"bus {kind} {value!r} is not valid: use 1 to 64 letters, digits, '_' or '-'"
        )
    return value


def check_settings(partitions: int, visibility: float) -> None:
    """`BusError` unless the partition count and visibility timeout are usable."""
    if not 1 <= partitions <= 1024:
        raise BusError(f"bus partitions must be between 1 and 1024, not {partitions}")
    if not 0.1 <= visibility <= 3600:
        raise BusError(f"bus visibility must be between 0.1 and 3600 seconds, not {visibility}")


def select_partitions(count: int, wanted: Sequence[int] | None) -> tuple[int, ...]:
    """The partitions a consumer may hold: all of them, or `wanted` once checked."""
    if wanted is None:
        return tuple(range(count))
    chosen = tuple(sorted(set(wanted)))
    bad = [p for p in chosen if not 0 <= p < count]
    if bad or not chosen:
        raise BusError(
            f"consumer partitions must be a non-empty subset of 0..{count - 1}, not {list(wanted)}"
        )
    return chosen


def redact(url: str) -> str:
    """`url` without user name or password, for error messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def open_bus(
    url: str,
    prefix: str = DEFAULT_PREFIX,
    partitions: int = DEFAULT_PARTITIONS,
    visibility: float = DEFAULT_VISIBILITY,
) -> Bus:
    """The bus a URL names: `memory://`, `redis://host:port/db`, or `nats://host:port`."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from cohortsync.realtime.bus_memory import InProcessBus

        return InProcessBus(prefix, partitions, visibility)
    if scheme in ("redis", "rediss", "unix"):
        from cohortsync.realtime.bus_redis import RedisBus

        return RedisBus(url, prefix, partitions, visibility)
    if scheme in ("nats", "tls"):
        from cohortsync.realtime.bus_nats import NatsBus

        return NatsBus(url, prefix, partitions, visibility)
    raise BusError(
        f"bus URL {redact(url)!r} is not supported: use memory://, redis://host:6379/0 "
        "or nats://host:4222"
    )
