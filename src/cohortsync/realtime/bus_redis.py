"""The bus on Redis Streams: one stream per partition, one Redis consumer group per bus group.

Keys under the prefix: `<prefix>:<n>` (partition streams), `<prefix>:meta` (the partition count,
fixed at creation) and `<prefix>:group:<group>` (the group's lease document). A consumer reads its
partitions with one blocking XREADGROUP; taking a partition over, it XAUTOCLAIMs every entry left
unacked there, and delivers those before anything new.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

import orjson
import redis

from cohortsync.identity.log_scrub import scrubbed_logger
from cohortsync.realtime.bus import (
    DEFAULT_PARTITIONS,
    DEFAULT_PREFIX,
    DEFAULT_VISIBILITY,
    BusError,
    BusMessage,
    check_name,
    check_settings,
    decode,
    encode,
    partition_for,
    partition_key,
    redact,
    select_partitions,
)
from cohortsync.realtime.bus_group import LeasedConsumer, State, T
from cohortsync.store.records import Message

log = scrubbed_logger("cohortsync.bus")
_FIELD = b"m"
_CLAIM_PAGE = 1000


def _entry_order(entry_id: bytes) -> tuple[int, int]:
    """A stream entry id (`<ms>-<seq>`) as a sortable pair."""
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


class RedisBus:
    """A partitioned log on Redis Streams with consumer groups and leased partitions."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: str = DEFAULT_PREFIX,
        partitions: int = DEFAULT_PARTITIONS,
        visibility: float = DEFAULT_VISIBILITY,
        max_len: int | None = None,
    ) -> None:
        """`max_len` trims each partition to about that many entries (the oldest go, acked or
        not); by default nothing is trimmed."""
        check_settings(partitions, visibility)
        self.prefix = check_name("prefix", prefix)
        self.partitions = partitions
        self.visibility = visibility
        self.max_len = max_len
        self.url = redact(url)
        try:
            self.redis = redis.Redis.from_url(
                url, socket_connect_timeout=5, socket_timeout=visibility / 3 + 10
            )
        except ValueError as exc:
            raise BusError(f"bus URL {self.url!r} is not a valid Redis URL ({exc})") from None
        try:
            self._check_partitions()
        except BusError:
            self.redis.close()
            raise

    def _check_partitions(self) -> None:
        """Record the partition count of a new prefix; refuse another count for an old one."""
        with self.errors("open the bus"):
            meta = f"{self.prefix}:meta"
            self.redis.hsetnx(meta, "partitions", self.partitions)
            stored = int(self.redis.hget(meta, "partitions") or self.partitions)
        if stored != self.partitions:
            raise BusError(
                f"bus {self.prefix!r} on {self.url} has {stored} partitions, not "
                f"{self.partitions}: open it with partitions={stored} or use another prefix"
            )

    def stream(self, partition: int) -> str:
        """The Redis key of a partition's stream."""
        return f"{self.prefix}:{partition}"

    @contextlib.contextmanager
    def errors(self, action: str) -> Iterator[None]:
        """Turn Redis failures into a `BusError` saying what failed and how to fix it."""
        try:
            yield
        except redis.AuthenticationError:
            raise BusError(
                f"Redis at {self.url} refused the credentials of the bus URL: fix the URL"
            ) from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BusError(
                f"could not {action}: Redis at {self.url} is unreachable ({exc}); "
                "start redis-server or fix the bus URL"
            ) from None
        except redis.ResponseError as exc:
            raise BusError(f"could not {action}: Redis at {self.url} answered {exc}") from None

    def publish(self, batch: Sequence[Message]) -> None:
        """XADD every message to its partition's stream in one pipeline; all acknowledged."""
        if not batch:
            return
        with self.errors("publish"):
            pipe = self.redis.pipeline(transaction=False)
            for message in batch:
                pipe.xadd(
                    self.stream(partition_for(partition_key(message), self.partitions)),
                    {_FIELD: encode(message)},
                    maxlen=self.max_len,
                    approximate=True,
                )
            pipe.execute()

    def consumer(
        self, group: str, name: str, partitions: Sequence[int] | None = None
    ) -> RedisConsumer:
        """Join `group` as `name`, for all or the given partitions."""
        return RedisConsumer(self, group, name, select_partitions(self.partitions, partitions))

    def check(self) -> None:
        """PING the server."""
        with self.errors("reach the bus"):
            self.redis.ping()

    def backlog(self, group: str) -> int:
        """Entries the group has not acked: undelivered (lag) plus pending."""
        total = 0
        with self.errors("read the backlog"):
            for partition in range(self.partitions):
                total += self._backlog(self.stream(partition), group)
        return total

    def _backlog(self, stream: str, group: str) -> int:
        if not self.redis.exists(stream):
            return 0
        for info in self.redis.xinfo_groups(stream):
            if info["name"] != group.encode():
                continue
            lag = info.get("lag")
            if lag is None:  # entries were deleted or trimmed: count what is after the cursor
                last = info["last-delivered-id"].decode()
                lag = len(self.redis.xrange(stream, min=f"({last}") or [])
            return int(lag) + int(info["pending"])
        return int(self.redis.xlen(stream))

    def drop(self) -> None:
        """Delete every key under the prefix: streams, groups, leases."""
        with self.errors("drop the bus"):
            keys = list(self.redis.scan_iter(match=f"{self.prefix}:*", count=1000))
            for start in range(0, len(keys), 500):
                self.redis.delete(*keys[start : start + 500])

    def close(self) -> None:
        """Close the connection pool."""
        self.redis.close()


class RedisConsumer(LeasedConsumer):
    """A member of a group on Redis Streams."""

    def __init__(self, bus: RedisBus, group: str, name: str, eligible: Sequence[int]) -> None:
        super().__init__(group, name, eligible, bus.visibility)
        self._bus = bus
        self._redis = bus.redis
        self._grouped: set[int] = set()
        self._claimed: dict[int, deque[tuple[bytes, Any]]] = {}

    def _update(self, change: Callable[[State], tuple[State, T]]) -> T:
        key = f"{self._bus.prefix}:group:{self.group}"
        with self._bus.errors("update the consumer group"), self._redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    raw = pipe.get(key)
                    state, result = change(orjson.loads(raw) if raw else {})
                    pipe.multi()
                    pipe.set(key, orjson.dumps(state))
                    pipe.execute()
                    return result
                except redis.WatchError:
                    continue

    def _ensure_groups(self, partitions: Collection[int]) -> None:
        for partition in partitions:
            if partition in self._grouped:
                continue
            try:
                self._redis.xgroup_create(self._bus.stream(partition), self.group, "0", True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._grouped.add(partition)

    def _read(self, readable: Sequence[int], max_messages: int, wait: float) -> list[BusMessage]:
        leftovers = self._leftovers(max_messages)
        if leftovers or not readable:
            if not leftovers and wait > 0:
                time.sleep(wait)
            return leftovers
        each = -(-max_messages // len(readable))
        block = None if wait <= 0 else max(1, int(wait * 1000))
        streams: dict[Any, Any] = {self._bus.stream(p): ">" for p in readable}
        reply: Any
        with self._bus.errors("read messages"):
            self._ensure_groups(readable)
            try:
                reply = self._redis.xreadgroup(self.group, self.name, streams, each, block)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._grouped.clear()  # the streams were deleted: recreate the groups, read again
                self._ensure_groups(readable)
                reply = self._redis.xreadgroup(self.group, self.name, streams, each, block)
        got: list[BusMessage] = []
        for stream, entries in reply or []:
            partition = int(stream.rsplit(b":", 1)[1])
            got.extend(self._deliveries(partition, entries))
        return got

    def _leftovers(self, max_messages: int) -> list[BusMessage]:
        got: list[BusMessage] = []
        for partition, entries in self._claimed.items():
            batch: list[tuple[bytes, Any]] = []
            while entries and len(got) + len(batch) < max_messages:
                batch.append(entries.popleft())
            got.extend(self._deliveries(partition, batch))
        return got

    def _deliveries(self, partition: int, entries: Sequence[tuple[bytes, Any]]) -> list[BusMessage]:
        got: list[BusMessage] = []
        broken: list[str] = []
        for entry_id, fields in entries:
            native = entry_id.decode()
            try:
                got.append(BusMessage(f"{partition}:{native}", partition, decode(fields[_FIELD])))
            except (TypeError, KeyError, ValueError):
                # Deleted while pending, or not a message: report and ack, never block the rest.
                self.undecodable += 1
                log.error("bus entry %s:%s is not a message; acknowledged", partition, native)
                broken.append(native)
        if broken:
            self._ack({partition: broken})
        return got

    def _quiet(self, held: Collection[int]) -> set[int]:
        return {p for p in held if not self._claimed.get(p)}

    def _gained(self, partitions: Collection[int]) -> None:
        with self._bus.errors("take over unacked messages"):
            self._ensure_groups(partitions)
            for partition in partitions:
                stream, start = self._bus.stream(partition), "0-0"
                claimed = self._claimed.setdefault(partition, deque())
                while True:
                    reply = self._redis.xautoclaim(
                        stream, self.group, self.name, 0, start, count=_CLAIM_PAGE
                    )
                    claimed.extend(reply[1])
                    start = reply[0]
                    if start in (b"0-0", "0-0"):
                        break

    def _nack(self, by_partition: dict[int, list[str]]) -> None:
        with self._bus.errors("give messages back"):
            for partition, natives in by_partition.items():
                # XCLAIM to ourselves returns the entries (still pending, so never lost).
                wanted: list[Any] = list(natives)
                entries = self._redis.xclaim(
                    self._bus.stream(partition), self.group, self.name, 0, wanted
                )
                waiting = self._claimed.get(partition, deque())
                merged = {entry[0]: entry for entry in [*entries, *waiting]}
                self._claimed[partition] = deque(
                    merged[key] for key in sorted(merged, key=_entry_order)
                )

    def _ack(self, by_partition: dict[int, list[str]]) -> None:
        with self._bus.errors("acknowledge messages"):
            pipe = self._redis.pipeline(transaction=False)
            for partition, natives in by_partition.items():
                pipe.xack(self._bus.stream(partition), self.group, *natives)
            pipe.execute()

    def _abandon(self, by_partition: dict[int, list[str]]) -> None:
        """Nothing to do: whoever takes a partition over claims its unacked entries."""
        del by_partition

    def _shutdown(self) -> None:
        """Nothing to release: the connection belongs to the bus."""
