"""Gauges read from the store when Prometheus scrapes: records waiting in the outbox and dead
letters, per destination (`Engine.delivery_backlog`: two grouped counts in one snapshot)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cohortsync.engine import DeliveryBacklog
from cohortsync.identity.log_scrub import scrubbed_logger

log = scrubbed_logger("cohortsync.server")

PENDING = "cohortsync_outbox_pending_records"
DEAD = "cohortsync_dead_letter_records"


class OutboxCollector(Collector):
    """Outbox depth and dead letters per destination, counted in the store at scrape time."""

    def __init__(self, count: Callable[[], DeliveryBacklog], destinations: Sequence[str]) -> None:
        self.count = count
        self.destinations = tuple(destinations)

    def describe(self) -> Iterable[Metric]:
        """The metrics' names, without reading the store (at registration)."""
        return list(_families(DeliveryBacklog({}, {}), ()))

    def collect(self) -> Iterable[Metric]:
        """Both gauges; none when the store cannot be read (the other metrics still are)."""
        try:
            backlog = self.count()
        except Exception as exc:
            log.warning("metrics: the outbox could not be counted: %s: %s", type(exc).__name__, exc)
            return []
        return list(_families(backlog, self.destinations))


def _families(backlog: DeliveryBacklog, destinations: Sequence[str]) -> Iterable[Metric]:
    waiting = GaugeMetricFamily(
        PENDING,
        "Records (changes, conversions) in the outbox waiting to be sent or retried.",
        labels=["destination"],
    )
    letters = GaugeMetricFamily(
        DEAD,
        "Dead letters not queued again (`sync --retry-dead`): records given up on.",
        labels=["destination"],
    )
    for family, counts in ((waiting, backlog.pending), (letters, backlog.dead)):
        for destination in sorted({*destinations, *counts}):
            family.add_metric([destination], counts.get(destination, 0))
        yield family
