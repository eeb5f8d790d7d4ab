"""`serve --role ingest|worker`: ingest answers once the bus has the events; a worker stores them.

An ingest process holds no store: it validates, publishes every message (and every rejected one,
for quarantine) to the bus, and answers 200 once the bus acknowledged them — durable as the bus
is (NATS JetStream keeps them on disk; Redis as its persistence is configured). Any number of
ingest processes can run. A worker consumes the bus as a member of a consumer group, stores each
fetched batch (the store dedupes by message id, so a redelivery after a crash is harmless),
evaluates real-time audiences and delivers, and acks only after the batch is stored.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Sequence

from cohortsync.config.models import Project
from cohortsync.events.pipeline import IngestResult
from cohortsync.identity.log_scrub import scrubbed_logger
from cohortsync.realtime.bus import Bus, BusMessage, Consumer
from cohortsync.store.records import Message, Rejection

log = scrubbed_logger("cohortsync.worker")
REJECTED = "__rejected__"
"""The type of a bus message that carries a rejected message to quarantine."""
GROUP = "cohortsync-workers"
LINGER = 0.05
"""Seconds a worker waits, once a fetch brought something, for more to store in one batch:
each stored batch costs a few round trips whatever its size, so under load fewer, larger
batches keep up where many small ones would not."""


def rejection_message(rejection: Rejection, received_at_us: int) -> Message:
    """A rejection as a bus message (the bus carries messages only)."""
    return Message(
        message_id=f"rejected:{rejection.origin}:{rejection.message_id or ''}",
        type=REJECTED,
        source=rejection.source or "",
        timestamp_us=received_at_us,
        original_timestamp_us=received_at_us,
        received_at_us=received_at_us,
        properties={
            "reason": rejection.reason,
            "detail": rejection.detail,
            "origin": rejection.origin,
            "payload": rejection.payload,
            "message_id": rejection.message_id,
        },
    )


def split(messages: Sequence[Message]) -> tuple[list[Message], list[Rejection]]:
    """Bus messages back into messages to store and rejections to quarantine."""
    kept: list[Message] = []
    rejected: list[Rejection] = []
    for m in messages:
        if m.type != REJECTED:
            kept.append(m)
            continue
        p = m.properties or {}
        rejected.append(
            Rejection(
                str(p.get("reason", "")),
                str(p.get("detail", "")),
                str(p.get("origin", "")),
                str(p.get("payload", "")),
                p.get("message_id"),
                m.source or None,
            )
        )
    return kept, rejected


class BusGateway:
    """What the ingest API commits to in the ingest role: the bus instead of the store."""

    def __init__(self, project: Project, bus: Bus, clock_us: Callable[[], int]) -> None:
        self.project = project
        self.bus = bus
        self.clock_us = clock_us

    def warm_up(self) -> None:
        """Nothing to load: an ingest process holds no store."""

    def ping(self) -> None:
        """Return once the bus answered a round trip; `BusError` saying why not."""
        self.bus.check()

    def commit(
        self, messages: Sequence[Message], rejections: Sequence[Rejection] = ()
    ) -> IngestResult:
        """Publish; return once the bus acknowledged every message."""
        now = self.clock_us()
        self.bus.publish([*messages, *(rejection_message(r, now) for r in rejections)])
        return IngestResult(
            received=len(messages) + len(rejections),
            stored=len(messages),
            duplicates=0,
            quarantined=len(rejections),
        )


class BusWorker:
    """Consumes the bus and stores what it fetches, then acks; one thread."""

    def __init__(
        self,
        commit: Callable[[Sequence[Message], Sequence[Rejection]], IngestResult],
        bus: Bus,
        name: str | None = None,
        batch: int = 5_000,
        linger: float = LINGER,
    ) -> None:
        self.commit = commit
        self.bus = bus
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.batch = batch
        self.linger = linger
        self.stored = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cohortsync-bus", daemon=True)

    def start(self) -> None:
        """Join the consumer group and start consuming."""
        self._thread.start()

    def stop(self) -> None:
        """Finish the batch in hand, leave the group."""
        self._stop.set()
        self._thread.join(timeout=30)

    def _gather(self, consumer: Consumer) -> list[BusMessage]:
        """One fetch, then what else arrives within the linger, up to the batch size."""
        deliveries = consumer.fetch(self.batch, timeout=0.5)
        deadline = time.monotonic() + self.linger
        while deliveries and len(deliveries) < self.batch:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            deliveries.extend(consumer.fetch(self.batch - len(deliveries), timeout=left))
        return deliveries

    def _run(self) -> None:
        with self.bus.consumer(GROUP, self.name) as consumer:
            while not self._stop.is_set():
                try:
                    deliveries = self._gather(consumer)
                except Exception:  # the bus is unreachable for now: try again shortly
                    log.exception("fetching from the bus failed; retrying")
                    self._stop.wait(1.0)
                    continue
                if not deliveries:
                    continue
                ids = [d.id for d in deliveries]
                try:
                    messages, rejections = split([d.message for d in deliveries])
                    result = self.commit(messages, rejections)
                except Exception:  # given back: the same batch comes first on the next fetch
                    log.exception("storing a batch from the bus failed; retrying it")
                    consumer.nack(ids)
                    self._stop.wait(1.0)
                    continue
                consumer.ack(ids)
                self.stored += result.stored
