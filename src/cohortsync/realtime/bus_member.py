"""A worker's membership of the bus's consumer group: its name, and what it runs while a member.

A worker consumes the bus (`roles.BusWorker`) with real-time evaluation, scheduled refreshes
and delivery beside it (`service.ServeWorkers`); the two start and stop together.
"""

from __future__ import annotations

import hashlib
import os
import socket

from cohortsync.realtime.bus_roles import BusWorker
from cohortsync.realtime.serve_workers import ServeWorkers
from cohortsync.store.locations import is_postgres_url


def member_name(store_location: str) -> str:
    """A DuckDB store has one writer, so its worker is named after the store: a restarted
    worker takes its partitions back at once instead of waiting out the dead one's leases.
    A Postgres store has several workers, each named after its host and process."""
    if is_postgres_url(store_location):
        return f"worker-{socket.gethostname()}-{os.getpid()}"
    return "worker-" + hashlib.sha256(store_location.encode()).hexdigest()[:12]


class BusMember:
    """One worker in the consumer group: the bus consumer and the serve workers it feeds."""

    def __init__(self, consumer: BusWorker, workers: ServeWorkers) -> None:
        self.consumer = consumer
        self.workers = workers

    @property
    def name(self) -> str:
        """The worker's name in the consumer group."""
        return self.consumer.name

    def start(self) -> None:
        """Start evaluating and delivering, then join the group and consume."""
        self.workers.start()
        self.consumer.start()

    def stop(self) -> None:
        """Finish the batch in hand and leave the group, then stop the serve workers."""
        self.consumer.stop()
        self.workers.stop()
