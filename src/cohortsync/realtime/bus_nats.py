"""The bus on NATS JetStream: one stream, a subject per partition, a durable pull consumer per
(group, partition), and the group's lease document in a JetStream key-value bucket.

Names under the prefix: stream `<prefix>` with subjects `<prefix>.<n>`; durable consumers
`<group>-p<n>`; bucket `<prefix>_groups`. Publishing waits for every JetStream ack and sets
`Nats-Msg-Id` to the message id, so a retried publish is stored once. A consumer keeps one pull
request in flight per partition it reads (issued while `fetch` runs), so a message is handed over
as soon as it is stored. Messages a dead consumer left unacked are redelivered by JetStream once
their ack wait (half the visibility timeout) has passed, before anything newer; a consumer that
closes naks them, so they are redelivered at once.

nats-py is asynchronous: the bus runs its own event loop in a daemon thread and its methods
block the calling thread, like the other buses.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Coroutine, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

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
from cohortsync.realtime.bus_group import LeasedConsumer, State
from cohortsync.store.records import Message

log = scrubbed_logger("cohortsync.bus")
R = TypeVar("R")
PUBLISH_TIMEOUT = 30.0
DEDUPLICATION_WINDOW = 120.0
PULL_BATCH = 500
MAX_ACK_PENDING = 100_000
_ACK = b"+ACK"
_NAK = b"-NAK"
_IN_PROGRESS = b"+WPI"


class _LoopThread:
    """An asyncio event loop running in a daemon thread; `run` blocks until a coroutine ends."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="cohortsync-bus-nats", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, R]) -> R:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self) -> None:
        """Cancel what still runs on the loop, wait for it to unwind, then stop the loop."""

        async def finish() -> None:
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(finish(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


class NatsBus:
    """A partitioned log on NATS JetStream with consumer groups and leased partitions."""

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        prefix: str = DEFAULT_PREFIX,
        partitions: int = DEFAULT_PARTITIONS,
        visibility: float = DEFAULT_VISIBILITY,
        max_age: float | None = None,
    ) -> None:
        """`max_age` drops messages older than that many seconds, acked or not; by default
        nothing is dropped."""
        check_settings(partitions, visibility)
        self.prefix = check_name("prefix", prefix)
        self.partitions = partitions
        self.visibility = visibility
        self.url = redact(url)
        self._raw_url = url
        self._max_age = max_age
        self._runner = _LoopThread()
        self._kv_bucket: KeyValue | None = None
        self._closing = False
        self._client: Client | None = None
        try:
            self.nc: Client = self._call("connect", self._connect())
            self._client = self.nc
            self.js: JetStreamContext = self.nc.jetstream(timeout=10)
            self._call("open the stream", self._ensure_stream())
        except BaseException:
            self.close()
            raise

    # -- plumbing -----------------------------------------------------------------------------
    def _call(self, action: str, coroutine: Coroutine[Any, Any, R]) -> R:
        """Run `coroutine` on the bus loop; NATS failures become a `BusError` saying what to do."""
        try:
            return self._runner.run(coroutine)
        except BusError:
            raise
        except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
            raise BusError(
                f"could not {action}: NATS at {self.url} has no JetStream; "
                "start it with `nats-server -js`"
            ) from None
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise BusError(
                f"could not {action}: NATS at {self.url} failed ({type(exc).__name__}: {exc}); "
                "check that nats-server -js runs there"
            ) from None

    async def _connect(self) -> Client:
        parts = urlsplit(self._raw_url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 4222
        try:  # fail fast and clearly: nats-py retries an unreachable server for minutes
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: socket.create_connection((host, port), timeout=3).close()
            )
        except OSError as exc:
            raise BusError(
                f"NATS at {self.url} is unreachable ({exc.strerror or exc}); "
                "start nats-server -js or fix the bus URL"
            ) from None

        async def report(exc: Exception) -> None:
            log.warning("NATS connection: %s", exc)

        async def disconnected() -> None:
            if not self._closing:
                log.warning("NATS at %s disconnected; reconnecting", self.url)

        return await asyncio.wait_for(
            nats.connect(
                servers=[self._raw_url],
                name="cohortsync",
                connect_timeout=5,
                reconnect_time_wait=1,
                max_reconnect_attempts=-1,
                error_cb=report,
                disconnected_cb=disconnected,
            ),
            timeout=15,
        )

    def subject(self, partition: int) -> str:
        """The subject a partition's messages are published on."""
        return f"{self.prefix}.{partition}"

    async def _ensure_stream(self) -> None:
        subjects = [self.subject(p) for p in range(self.partitions)]
        try:
            info = await self.js.stream_info(self.prefix)
        except nats.js.errors.NotFoundError:
            await self.js.add_stream(
                StreamConfig(
                    name=self.prefix,
                    subjects=subjects,
                    retention=RetentionPolicy.LIMITS,
                    storage=StorageType.FILE,
                    max_age=self._max_age,
                    duplicate_window=DEDUPLICATION_WINDOW,
                )
            )
            return
        stored = len(info.config.subjects or [])
        if sorted(info.config.subjects or []) != sorted(subjects):
            raise BusError(
                f"bus {self.prefix!r} on {self.url} has {stored} partitions, not "
                f"{self.partitions}: open it with partitions={stored} or use another prefix"
            )

    async def kv(self) -> KeyValue:
        """The bucket holding each group's lease document (created on first use)."""
        if self._kv_bucket is None:
            bucket = f"{self.prefix}_groups"
            try:
                self._kv_bucket = await self.js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                self._kv_bucket = await self.js.create_key_value(bucket=bucket, history=1)
        return self._kv_bucket

    # -- the contract -------------------------------------------------------------------------
    def publish(self, batch: Sequence[Message]) -> None:
        """Publish every message to its partition's subject; return once JetStream acked all."""
        if batch:
            self._call("publish", self._publish(batch))

    async def _publish(self, batch: Sequence[Message]) -> None:
        pending = []
        for message in batch:
            subject = self.subject(partition_for(partition_key(message), self.partitions))
            pending.append(
                await self.js.publish_async(
                    subject, encode(message), headers={"Nats-Msg-Id": message.message_id}
                )
            )
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*pending, return_exceptions=True), PUBLISH_TIMEOUT
            )
        except TimeoutError:
            for future in pending:
                future.cancel()
            raise BusError(
                f"NATS at {self.url} did not acknowledge a publish within {PUBLISH_TIMEOUT:.0f} s"
            ) from None
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise BusError(
                f"NATS at {self.url} refused {len(failed)} of {len(batch)} messages "
                f"({failed[0]}); publish the batch again (duplicates are dropped)"
            )

    def consumer(
        self, group: str, name: str, partitions: Sequence[int] | None = None
    ) -> NatsConsumer:
        """Join `group` as `name`, for all or the given partitions."""
        return NatsConsumer(self, group, name, select_partitions(self.partitions, partitions))

    def durable(self, group: str, partition: int) -> str:
        """The durable consumer of `group` on `partition`."""
        return f"{group}-p{partition}"

    async def ensure_durable(self, group: str, partition: int) -> None:
        """Create the group's durable consumer on a partition, or set its ack wait to this
        bus's visibility timeout (half of it) if it was created with another."""
        name = self.durable(group, partition)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            info = await self.js.consumer_info(self.prefix, name)
            if info.config.ack_wait is not None and (
                abs(info.config.ack_wait - self.visibility / 2) < 0.01
            ):
                return
        await self.js.add_consumer(
            self.prefix,
            ConsumerConfig(
                durable_name=name,
                filter_subject=self.subject(partition),
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.visibility / 2,
                max_ack_pending=MAX_ACK_PENDING,
            ),
        )

    def check(self) -> None:
        """A PING/PONG round trip with the server (a reconnecting client fails it)."""
        if not self.nc.is_connected:
            raise BusError(f"NATS at {self.url} is disconnected; reconnecting")
        self._call("reach the bus", self.nc.flush(timeout=2))

    def backlog(self, group: str) -> int:
        """Messages the group has not acked: not yet delivered plus awaiting ack."""
        return self._call("read the backlog", self._backlog(group))

    async def _backlog(self, group: str) -> int:
        info = await self.js.stream_info(self.prefix, subjects_filter=f"{self.prefix}.*")
        counts = info.state.subjects or {}
        total = 0
        for partition in range(self.partitions):
            try:
                consumer = await self.js.consumer_info(self.prefix, self.durable(group, partition))
            except nats.js.errors.NotFoundError:
                total += counts.get(self.subject(partition), 0)
            else:
                total += (consumer.num_pending or 0) + (consumer.num_ack_pending or 0)
        return total

    def drop(self) -> None:
        """Delete the stream (its consumers go with it) and the lease bucket."""
        self._call("drop the bus", self._drop())

    async def _drop(self) -> None:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self.js.delete_stream(self.prefix)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self.js.delete_key_value(f"{self.prefix}_groups")
        self._kv_bucket = None

    def close(self) -> None:
        """Close the connection and stop the bus's event loop."""
        self._closing = True
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._runner.run(self._client.close())
        self._runner.stop()

    def run(self, action: str, coroutine: Coroutine[Any, Any, R]) -> R:
        """Run a coroutine of a consumer on the bus loop (see `_call`)."""
        return self._call(action, coroutine)


class NatsConsumer(LeasedConsumer):
    """A member of a group on NATS JetStream; its state lives on the bus's event loop."""

    def __init__(self, bus: NatsBus, group: str, name: str, eligible: Sequence[int]) -> None:
        super().__init__(group, name, eligible, bus.visibility)
        self._bus = bus
        self._nc = bus.nc
        self._inbox = bus.nc.new_inbox()
        self._expires = min(1.0, bus.visibility / 8)
        self._buffers: dict[int, deque[Msg]] = {}
        self._pulls: dict[int, float] = {}
        self._due: dict[int, int] = {}
        self._durables: set[int] = set()
        self._unacked: dict[str, Msg] = {}
        self._ready = asyncio.Event()
        self._sub: Subscription = bus.run("subscribe", self._subscribe())

    async def _subscribe(self) -> Subscription:
        return await self._nc.subscribe(
            f"{self._inbox}.*", cb=self._arrived, pending_msgs_limit=4 * MAX_ACK_PENDING
        )

    async def _arrived(self, msg: Msg) -> None:
        partition = int(msg.subject.rsplit(".", 1)[1])
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:
            self._buffers.setdefault(partition, deque()).append(msg)
            self._due[partition] = self._due.get(partition, 0) - 1
            if self._due[partition] <= 0:
                self._pulls.pop(partition, None)
        elif status != "100":  # 404/408: the pull request ended; 409: ended for another reason
            if status not in ("404", "408"):
                log.warning(
                    "pull on partition %s ended: %s %s",
                    partition,
                    status,
                    msg.headers.get("Description", "") if msg.headers else "",
                )
            self._pulls.pop(partition, None)
        self._ready.set()

    async def _pull(self, readable: Sequence[int]) -> None:
        now = time.monotonic()
        for partition in readable:
            started = self._pulls.get(partition)
            if started is not None and now - started > self._expires + 5:
                del self._pulls[partition]  # its end was lost (a reconnect): ask again
            if partition in self._pulls or len(self._buffers.get(partition, ())) >= PULL_BATCH:
                continue
            if partition not in self._durables:
                await self._bus.ensure_durable(self.group, partition)
                self._durables.add(partition)
            request = {"batch": PULL_BATCH, "expires": int(self._expires * 1e9)}
            self._pulls[partition] = now
            self._due[partition] = PULL_BATCH
            await self._nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{self._bus.prefix}."
                f"{self._bus.durable(self.group, partition)}",
                orjson.dumps(request),
                reply=f"{self._inbox}.{partition}",
            )

    def _take(self, max_messages: int) -> tuple[list[BusMessage], list[str]]:
        """Buffered deliveries, and the reply subjects of messages that could not be decoded."""
        got: list[BusMessage] = []
        broken: list[str] = []
        waiting = [(p, buffer) for p, buffer in self._buffers.items() if buffer]
        share = -(-max_messages // max(1, len(waiting)))  # every partition gets its turn
        for partition, buffer in waiting:
            for _ in range(min(share, len(buffer), max_messages - len(got))):
                msg = buffer.popleft()
                try:
                    got.append(BusMessage(f"{partition}:{msg.reply}", partition, decode(msg.data)))
                    self._unacked[msg.reply] = msg
                except (TypeError, ValueError):
                    # Not a message: report and ack, never block the partition behind it.
                    self.undecodable += 1
                    log.error("bus message %s is not a message; acknowledged", msg.reply)
                    broken.append(msg.reply)
        return got, broken

    async def _read_async(
        self, readable: Sequence[int], max_messages: int, wait: float
    ) -> list[BusMessage]:
        deadline = time.monotonic() + wait
        while True:
            await self._pull(readable)
            got, broken = self._take(max_messages)
            if broken:
                await self._send({-1: broken}, _ACK)
            remaining = deadline - time.monotonic()
            if got or remaining <= 0:
                if got:
                    await self._pull(readable)  # prefetch while the caller works
                return got
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), remaining)

    def _read(self, readable: Sequence[int], max_messages: int, wait: float) -> list[BusMessage]:
        return self._bus.run("read messages", self._read_async(readable, max_messages, wait))

    def _quiet(self, held: Collection[int]) -> set[int]:
        async def quiet() -> set[int]:
            return {p for p in held if not self._buffers.get(p) and p not in self._pulls}

        return self._bus.run("read consumer state", quiet())

    def _update(self, change: Callable[[State], tuple[State, Any]]) -> Any:
        return self._bus.run("update the consumer group", self._update_async(change))

    async def _update_async(self, change: Callable[[State], tuple[State, Any]]) -> Any:
        kv = await self._bus.kv()
        while True:
            revision: int | None
            try:
                entry = await kv.get(self.group)
                state, revision = orjson.loads(entry.value or b"{}"), entry.revision
            except nats.js.errors.KeyNotFoundError:
                state, revision = {}, None
            updated, result = change(state)
            try:
                if revision is None:
                    await kv.create(self.group, orjson.dumps(updated))
                else:
                    await kv.update(self.group, orjson.dumps(updated), last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            return result

    def _gained(self, partitions: Collection[int]) -> None:
        async def prepare() -> None:
            for partition in partitions:
                if partition not in self._durables:
                    await self._bus.ensure_durable(self.group, partition)
                    self._durables.add(partition)

        self._bus.run("create the group's consumers", prepare())

    def _ack(self, by_partition: dict[int, list[str]]) -> None:
        async def acknowledge() -> None:
            for replies in by_partition.values():
                for reply in replies:
                    self._unacked.pop(reply, None)
            await self._send(by_partition, _ACK)

        self._bus.run("acknowledge messages", acknowledge())

    async def _send(self, by_partition: dict[int, list[str]], verdict: bytes) -> None:
        for replies in by_partition.values():
            for reply in replies:
                await self._nc.publish(reply, verdict)
        await self._nc.flush()

    def _nack(self, by_partition: dict[int, list[str]]) -> None:
        async def give_back() -> None:
            # Kept here rather than naked: messages of the partition already on the wire would
            # overtake a server redelivery. The ack timer restarts so JetStream waits for them.
            unknown: dict[int, list[str]] = {}
            for partition, replies in by_partition.items():
                back = [self._unacked.pop(r) for r in replies if r in self._unacked]
                kept = {m.reply for m in back}
                unknown[partition] = [r for r in replies if r not in kept]
                buffer = [*back, *self._buffers.get(partition, ())]
                buffer.sort(key=lambda m: m.metadata.sequence.stream)
                self._buffers[partition] = deque(buffer)
                for msg in back:
                    await self._nc.publish(msg.reply, _IN_PROGRESS)
            await self._send(unknown, _NAK)

        self._bus.run("give messages back", give_back())

    def _abandon(self, by_partition: dict[int, list[str]]) -> None:
        async def give_back() -> None:
            # Let the pull requests in flight end (they expire within a second), so nothing
            # arrives after the leases are gone; then nak everything this consumer holds.
            deadline = time.monotonic() + self._expires + 1
            while self._pulls and time.monotonic() < deadline:
                self._ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ready.wait(), deadline - time.monotonic())
            unread = {p: [m.reply for m in buffer] for p, buffer in self._buffers.items()}
            self._buffers.clear()
            self._unacked.clear()
            await self._send(by_partition, _NAK)
            await self._send(unread, _NAK)

        self._bus.run("give back unacked messages", give_back())

    def _shutdown(self) -> None:
        with contextlib.suppress(BusError):
            self._bus.run("unsubscribe", self._sub.unsubscribe())
